"""The stateful rows of the datapath bench: new TCP connections through a conntrack
firewall, on one agent and across two (issue 16).

On the agent bed's bridge, VM A's port gets a firewall: what A starts is tracked as it
enters (``match_forward_flow``), and towards A only replies pass (``match_return_flow``,
else drop). Every new connection from A was a miss for its SYN and, unless its reply
flow was predicted with the forward one, another for its SYN-ACK; with connection
tracking in the datapath (``ct_state`` in the flow key, ``CtCommit``) only the first
connection is, and the next ones run on its flows. Across hosts (A on h1 -> C on h2)
the replies enter on h2: the tunnel asks h2's datapath to commit each connection as it
arrives (``OutputTunnel.commit``), where the agent used to key the flow on the
connection and push its state to h2 (a miss per connection on h1).
Measured, per destination: connections per second (``st_tcp``'s client, one process per
core, many in flight, each a new 5-tuple) against the same client, same VMs, before the
firewall is put on A's port (the bridge's flows alone: no miss per connection), the
connect time one at a time (SYN -> SYN-ACK seen: the first packet's round trip, any miss
included) against the steady ping RTT of the same moment, and both agents' misses per
connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from common import Netns, Pinger, Row, percentile
from dp_testbed import IP_B, IP_C
from st_tcp import SourcePorts, client_name, connects, serve

if TYPE_CHECKING:
    from dp_agent import AgentBed

CONNTRACK_METRICS = (
    "new TCP connections/s through a conntrack firewall, one agent (A -> B on h1)",
    "TCP connect through a conntrack firewall (SYN -> SYN-ACK), p50",
    "TCP connect through a conntrack firewall (SYN -> SYN-ACK), p99",
    "new TCP connections/s through a conntrack firewall, two agents (A on h1 -> C on h2)",
    "TCP connect through a conntrack firewall across hosts (SYN -> SYN-ACK), p50",
    "TCP connect through a conntrack firewall across hosts (SYN -> SYN-ACK), p99",
)
CONCURRENCY = 32
# One client per core: a single one's own kernel work (socket, connect, close with its
# softirq) is its ceiling before the datapath's.
PROCESSES = 2


def na_conntrack_rows(why: str) -> list[Row]:
    return [Row("agent", m, "", None, None, "", note=why) for m in CONNTRACK_METRICS]


def firewall(ab: AgentBed) -> None:
    """A's port: connections it starts are tracked; towards it, replies only."""
    rules: dict[str, list[dict[str, object]]] = {
        "track": [{"type": "accept", "match_forward_flow": True}],
        "returns": [{"type": "accept", "match_return_flow": True}, {"type": "drop"}],
    }
    ids = {}
    for name, chain_rules in rules.items():
        chain = ab.http.post("/chains", {"name": f"{ab.lab.prefix}-{name}"})
        for pos, rule in enumerate(chain_rules, 1):
            ab.http.post(f"/chains/{chain['id']}/rules", {**rule, "position": pos})
        ids[name] = chain["id"]
    port = ab.http.get(f"/ports/{ab.port_ids['tap-a']}")
    port["inbound_filter_id"] = ids["track"]
    port["outbound_filter_id"] = ids["returns"]
    # Measured from when the agents apply it: connections in flight as the firewall
    # takes effect were started without it (not committed), and their replies are then
    # new connections towards A, dropped (a 1 s SYN retransmission in the first round).
    ab.http.put(f"/ports/{port['id']}?wait=true&wait_timeout=10", port)


def _three(names: tuple[str, ...]) -> tuple[str, str, str]:
    a, b, c = names
    return a, b, c


@dataclass
class Target:
    """One destination of the stateful rows: its VM, address and the rows' names."""

    ns: Netns
    ip: str
    metrics: tuple[str, str, str]
    ports: SourcePorts  # the client's, per destination: each connection a new 5-tuple
    baseline: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    failed: int = 0
    made: int = 0
    misses: int = 0


def _rounds(ab: AgentBed, t: Target, count: int, rounds: int, log: Callable[[str], None],
            what: str) -> list[float]:  # fmt: skip
    rates = []
    for i in range(rounds):
        got = connects(ab.bed.va, t.ports, t.ip, count, 10.0, CONCURRENCY, processes=PROCESSES)
        rates.append(got.per_second)
        t.failed += got.failed if what == "firewall" else 0
        t.made += got.ok + got.failed if what == "firewall" else 0
        slowest = max(got.times, default=0.0) * 1e3
        log(
            f"conntrack {t.ip}: {what} round {i + 1}/{rounds}: {got.per_second:,.0f} "
            f"connections/s, slowest connect {slowest:.1f} ms"
            + (f" (source ports slower than 0.5 s: {got.slow_ports})" if got.slow_ports else "")
        )
    return rates


def conntrack_rows(
    ab: AgentBed, count: int, samples: int, rounds: int, log: Callable[[str], None]
) -> list[Row]:
    """A -> B (one agent), then A -> C (across hosts: h1 commits nothing for h2's
    agent to see; the tunnel asks h2's datapath to commit each connection)."""
    bed = ab.bed
    targets = [
        Target(bed.vb, IP_B, _three(CONNTRACK_METRICS[:3]), SourcePorts(bed.va)),
        Target(bed.vc, IP_C, _three(CONNTRACK_METRICS[3:]), SourcePorts(bed.va)),
    ]
    for t in targets:
        serve(bed.lab, t.ns, t.ip, 3600)
    # Baseline: the same connections before the firewall, after a warm-up; rounds of at
    # most 5,000 (every connection takes a source port of its own, and the range has
    # room for about 50,000 per destination: the firewall's rounds need theirs).
    for t in targets:
        if connects(bed.va, t.ports, t.ip, 20, 10.0, 4).ok:
            t.baseline = _rounds(ab, t, min(count, 5000), rounds, log, "baseline")
    firewall(ab)
    rows: list[Row] = []
    for t in targets:
        # Warm-up: the firewall's chains compiled, the server answering (pings from A
        # are tracked too, so they reach the VM and back through the firewall).
        warm = connects(bed.va, t.ports, t.ip, 20, 10.0, 4)
        if warm.ok == 0:
            why = f"n/a: no connection through the firewall ({warm.failed} failed)"
            rows += [Row("agent", m, "", None, None, "", note=why) for m in t.metrics]
            continue
        before = sum(int(ab.status(h)["misses"]) for h in ab.hosts)
        t.rates = _rounds(ab, t, count, rounds, log, "firewall")
        t.misses = sum(int(ab.status(h)["misses"]) for h in ab.hosts) - before
        rows += _target_rows(ab, t, samples, rounds, count)
    return rows


def _target_rows(ab: AgentBed, t: Target, samples: int, rounds: int, count: int) -> list[Row]:
    bed = ab.bed
    pinger = Pinger(bed.va)
    first: list[float] = []
    steady: list[float] = []
    try:
        done = 0
        while done < samples:
            n = min(25, samples - done)
            got = connects(bed.va, t.ports, t.ip, n, 60.0, gap=0.002)
            first += got.times
            t.failed += got.failed
            for _ in range(5):
                rtt = pinger.ping(t.ip, timeout=1.0)
                if rtt is not None:
                    steady.append(rtt)
            done += n
    finally:
        pinger.close()
    f_ms = [x * 1e3 for x in first]
    s_ms = [x * 1e3 for x in steady]
    per_conn = t.misses / t.made if t.made else 0.0
    rows = [
        Row(
            "agent",
            t.metrics[0],
            "no firewall (same VMs, same client)",
            percentile(t.baseline, 50) if t.baseline else None,
            percentile(t.rates, 50) if t.rates else None,
            "/s",
            goal=">= 20,000/s",
            note=(
                f"median of {rounds} rounds of {count}, {CONCURRENCY} in flight "
                f"({client_name(PROCESSES)}); "
                f"{per_conn:.2f} misses per connection (both agents); {t.failed} failed"
            ),
        )
    ]
    for k, p in ((1, 50), (2, 99)):
        extra = percentile(f_ms, p) - percentile(s_ms, p) if f_ms and s_ms else float("nan")
        rows.append(
            Row(
                "agent",
                t.metrics[k] + f" (n={len(f_ms)})",
                "steady ping RTT",
                percentile(s_ms, p) if s_ms else None,
                percentile(f_ms, p) if f_ms else None,
                "ms",
                note=f"first-packet extra {extra:.3f} ms (both misses, or one when predicted)",
                samples={"connect_ms": f_ms, "steady_ms": s_ms} if p == 50 else {},
            )
        )
    return rows
