"""The stateful bench's measurements: paired connection rates, paired throughput,
first-packet latency with and without state, and the flow-state push on its own.

Rates and throughput are measured in back-to-back pairs (baseline then tessera, the
next round the other way round) and the ratio is the median of the per-pair ratios, so
that the load other users put on the shared machine hits both sides of a pair alike.
"""

from __future__ import annotations

import ipaddress
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from common import Lab, Netns, Throughput, iperf3, median
from st_tcp import Connects, SourcePorts, connects

from tessera.agent.flowstate.entry import default_timeout
from tessera.agent.flowstate.transport import FlowStateSender
from tessera.agent.flowstate.wire import Update
from tessera.agent.metrics import AgentMetrics
from tessera.simulation.flowstate import NatBinding, NatEntry, NatKey

Log = Callable[[str], None]


@dataclass
class Side:
    """One path of a comparison: where the client runs and whom it connects to."""

    name: str
    client: Netns
    ports: SourcePorts | None
    dst: str


@dataclass
class Paired:
    base: list[float] = field(default_factory=list)
    tessera: list[float] = field(default_factory=list)
    failed: list[int] = field(default_factory=lambda: [0, 0])
    times: list[list[float]] = field(default_factory=lambda: [[], []])  # connect times, s

    @property
    def ratio(self) -> float | None:
        pairs = [t / b for b, t in zip(self.base, self.tessera, strict=False) if b > 0]
        return median(pairs) if pairs else None


def connection_rates(
    base: Side | None,
    tess: Side,
    rounds: int,
    count: int,
    seconds: float,
    concurrency: int,
    log: Log,
    between: Callable[[], None] = lambda: None,
) -> Paired:
    """New connections per second on both paths, ``rounds`` alternating pairs (no
    baseline: tessera's rounds alone)."""
    out = Paired()
    for i in range(rounds):
        order = [(0, base), (1, tess)] if i % 2 == 0 else [(1, tess), (0, base)]
        got: dict[int, Connects] = {}
        for which, side in order:
            if side is None:
                continue
            assert side.ports is not None
            between()
            got[which] = connects(side.client, side.ports, side.dst, count, seconds, concurrency)
            out.failed[which] += got[which].failed
            out.times[which] += got[which].times
        if 0 in got:
            out.base.append(got[0].per_second)
        out.tessera.append(got[1].per_second)
        log(
            f"{tess.name} round {i + 1}/{rounds}: "
            + "; ".join(
                f"{s.name} {got[w].per_second:,.0f}/s ({got[w].ok} ok, {got[w].failed} failed)"
                for w, s in ((0, base), (1, tess))
                if s is not None
            )
        )
    return out


def throughputs(
    lab: Lab, server: Netns, base: Side, tess: Side, rounds: int, seconds: float, log: Log
) -> tuple[Paired, list[Throughput]]:
    """One iperf3 stream on both paths to the same server, ``rounds`` alternating pairs."""
    out = Paired()
    raw: list[Throughput] = []
    for i in range(rounds):
        order = [(0, base), (1, tess)] if i % 2 == 0 else [(1, tess), (0, base)]
        got: dict[int, Throughput] = {}
        for which, side in order:
            got[which] = iperf3(lab, side.client, server, side.dst, seconds)
        raw += [got[0], got[1]]
        out.base.append(got[0].gbps)
        out.tessera.append(got[1].gbps)
        log(
            f"throughput round {i + 1}/{rounds}: {base.name} {got[0].gbps:.2f} Gbit/s, "
            f"{tess.name} {got[1].gbps:.2f} Gbit/s"
        )
    return out, raw


def first_packets(
    base: Side, tess: Side, samples: int, log: Log, batch: int = 25
) -> tuple[list[float], list[float], int]:
    """Connect times (s) of new connections one at a time, 2 ms apart, on both paths in
    alternating batches: (baseline, tessera, failed)."""
    b: list[float] = []
    t: list[float] = []
    failed = 0
    done = 0
    while done < samples:
        n = min(batch, samples - done)
        for side, into in ((base, b), (tess, t)):
            assert side.ports is not None
            got = connects(side.client, side.ports, side.dst, n, 60.0, gap=0.002)
            into += got.times
            failed += got.failed
        done += n
        if done % 100 == 0 or done == samples:
            log(f"first packets: {done}/{samples} per path")
    return b, t, failed


def _snat_updates(i: int, device: str) -> list[Update]:
    """What a SNAT connection creates (its forward and reverse binding), as ``share``
    sends it."""
    ip = lambda a: int(ipaddress.IPv4Address(a))  # noqa: E731
    client, server, public = ip("10.0.0.10"), ip("203.0.113.9"), ip("203.0.113.150")
    sport, nport = 10000 + i % 50000, 1024 + i % 60000
    fwd = NatEntry(NatKey("fwd_snat", 6, client, sport, server, 8080, device),
                   NatBinding(public, nport))  # fmt: skip
    rev = NatEntry(NatKey("rev_snat", 6, server, 8080, public, nport, device),
                   NatBinding(client, sport))  # fmt: skip
    return [("add", e, default_timeout(e.key.proto)) for e in (fwd, rev)]


def push_timing(
    sender_ns: Netns, sender_ip: str, receiver_ns: Netns, receiver_ip: str, samples: int
) -> tuple[list[float], list[float], int]:
    """The agent's push code on its own: ``FlowStateSender.send`` of one SNAT
    connection's entries from h1's underlay address to a socket of the bench's on h2
    (not the agent's: no bogus state lands in it). (send times, send-to-received times,
    lost), in seconds; what the first packet waits for is the send time, since it is
    reinjected as soon as the datagram is queued."""
    recv: socket.socket = receiver_ns.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        recv.bind((receiver_ip, 0))
        recv.settimeout(1.0)
        port = recv.getsockname()[1]
        sender = sender_ns.call(
            lambda: FlowStateSender(str(uuid.uuid4()), AgentMetrics(), address=sender_ip, port=port)
        )
        device = str(uuid.uuid4())
        sent: list[float] = []
        delivered: list[float] = []
        lost = 0
        try:
            for i in range(samples):
                updates = _snat_updates(i, device)
                t0 = time.perf_counter()
                sender.send([receiver_ip], updates)
                t1 = time.perf_counter()
                try:
                    recv.recv(65535)
                    delivered.append(time.perf_counter() - t0)
                except TimeoutError:
                    lost += 1
                sent.append(t1 - t0)
                time.sleep(0.002)
        finally:
            sender.close()
    finally:
        recv.close()
    return sent, delivered, lost
