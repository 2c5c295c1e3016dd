"""Under a flood of misses, the agent still answers them in order of arrival, applies
a rule change within 50 ms and takes in a peer's flow state within 50 ms (issue 16):
neither may wait behind the misses queued before them.

The agent runs in its own thread on real time, as in production; a second thread keeps
a backlog of misses queued in the fake datapath (frames to MACs never seen, each a new
bridge flood flow), bounded in count and in time.
"""

from __future__ import annotations

import gc
import socket
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial

import pytest
from agent_harness import Clock, Cloud, Host, Vm

from tessera.agent import gctuning
from tessera.agent.flowstate.entry import PROTO_TCP
from tessera.datapath.base import Match
from tessera.datapath.fake import FakeDatapath
from tessera.model import Chain, Port, Rule
from tessera.packet import ETH_TYPE_IPV4, Ethernet, IPv4, Udp
from tessera.packet.addr import ip_from_str
from tessera.simulation.flowstate import ConnKey, ConntrackEntry

BACKLOG = 1500  # misses kept queued while flooding
MIN_BACKLOG = 100  # misses waiting when a round starts: a real flood
FLOOD_LIMIT = 200_000  # frames at most
FLOOD_SECONDS = 20.0  # and seconds at most, whatever happens
ROUNDS = 5
BOUND = 0.050  # the bound on a rule change under load
FLOOD_MAC = 0x0600_0000_0000  # destinations nobody has: every frame is a new flow


class RealClock(Clock):
    """The agent's clocks on real time: its thread waits with real timeouts."""

    @property  # type: ignore[override]
    def now(self) -> float:
        return time.monotonic()

    @now.setter
    def now(self, _value: float) -> None:
        pass


class GcPauses:
    """The cyclic collector's pauses while the test runs, for the failure message: a
    full collection of this (pytest's) heap stalls every thread."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0

    def __call__(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._started)

    def longest_ms(self) -> str:
        return f"longest GC pause {max(self.pauses, default=0.0) * 1000:.1f} ms"


@pytest.fixture
def gc_pauses() -> Iterator[GcPauses]:
    """The collector tuned as the agent process tunes it (`gctuning`): pytest's heap,
    far larger than an agent's, is frozen out of collections as the agent's own
    start-up objects are."""
    thresholds = gctuning.tune()
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(pauses)
        gctuning.restore(thresholds)


@pytest.fixture
def cloud(gc_pauses: GcPauses) -> Iterator[Cloud]:
    c = Cloud(clock=RealClock())
    try:
        yield c
    finally:
        c.close()


def _flood_frame(src: Vm, seq: int) -> bytes:
    udp = Udp(1000, 2000, seq.to_bytes(4, "big"))
    packet = IPv4(src.ip, ip_from_str("10.0.0.200"), 17, udp)
    return Ethernet(FLOOD_MAC + seq, src.mac, ETH_TYPE_IPV4, packet).build()


class Flood(threading.Thread):
    def __init__(self, cloud: Cloud, vm: Vm) -> None:
        super().__init__(name="miss-flood", daemon=True)
        self.dp = vm.host.dp
        self.port = vm.host.number(vm.port_id)
        self.vm = vm
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        deadline = time.monotonic() + FLOOD_SECONDS
        while not self.stop.is_set() and self.sent < FLOOD_LIMIT:
            if time.monotonic() > deadline:
                return
            room = BACKLOG - self.dp.pending_misses()
            if room <= 0:
                time.sleep(0.0005)
                continue
            # In bursts: this thread gets the GIL for a switch interval at a time, among
            # the agent's, the test's and the flow-state receiver's; one frame per turn
            # let the backlog drain under the agent round after round.
            for _ in range(min(room, 64)):
                self.dp.receive(self.port, _flood_frame(self.vm, self.sent))
                self.sent += 1


def _wait(cond: Callable[[], object], timeout: float, what: str, every: float = 0.0002) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def _refilled(dp: FakeDatapath) -> int:
    """Each round starts with the flood's backlog queued (a round without misses ahead
    proves nothing), and the agent may drain it between two of the flood thread's
    turns (a fast CPU drained it to 0 before some rounds, 3 runs in 10): wait for it;
    how many were queued. Read again a moment later the queue may look empty while the
    agent holds them: it takes up to `MAX_MISSES_PER_WAKE` at once."""
    seen: list[int] = []

    def queued() -> bool:
        seen[:] = [dp.pending_misses()]
        return seen[0] >= MIN_BACKLOG

    _wait(queued, 10, "the flood's backlog to refill")
    return seen[0]


def _installed_flows(h: Host, in_port: int) -> list[Match]:
    """The flows from `in_port` once the agent installed at least one (waits)."""
    found: list[Match] = []

    def ready() -> bool:
        found[:] = [d.match for d in h.agent.flows.snapshot() if d.match.in_port == in_port]
        return bool(found) and all(h.dp.stats(m) is not None for m in found)

    _wait(ready, 15, f"a flow from port {in_port}", every=0.005)
    return found


def _all_gone(dp: FakeDatapath, flows: list[Match]) -> bool:
    return all(dp.stats(m) is None for m in flows)


def _set_filter(cloud: Cloud, port_id: str, chain_id: str | None) -> None:
    port = cloud.topo.get(Port, port_id)
    cloud.topo.update(Port, port_id, {**port.model_dump(), "inbound_filter_id": chain_id})


def _check_rounds(
    flood: Flood, backlogs: list[int], latencies: list[float], gc_pauses: GcPauses
) -> None:
    """The flood stopped; it was a real one (misses were waiting when each round
    started); and every round took effect within the bound."""
    assert not flood.is_alive()
    assert min(backlogs) >= MIN_BACKLOG, backlogs
    assert max(latencies) < BOUND, (
        [f"{x * 1000:.1f} ms" for x in latencies],
        gc_pauses.longest_ms(),
    )


def test_a_rule_change_takes_effect_within_50_ms_during_a_miss_flood(
    cloud: Cloud, gc_pauses: GcPauses
) -> None:
    h = cloud.host("h1", "198.18.0.1")
    br = cloud.bridge()
    vm1, vm2, vm3 = (
        cloud.vm(h, br, f"tap{i}", f"02:00:00:00:00:0{i}", f"10.0.0.{i}") for i in (1, 2, 3)
    )
    cloud.settle()
    for vm in (vm1, vm2, vm3):
        cloud.send(vm, vm.arp_request(ip_from_str("10.0.0.99")))
    chain = cloud.topo.create(Chain(name="no-vm3"))
    cloud.topo.create(Rule(chain_id=chain.id, type="drop"))
    n2, n3 = h.number(vm2.port_id), h.number(vm3.port_id)
    dp = h.dp
    dp.take_sent()

    h.agent.run_in_thread()  # from here on the agent runs by itself, on real time
    flood = Flood(cloud, vm1)
    flood.start()
    latencies: list[float] = []
    backlogs: list[int] = []
    try:
        _refilled(dp)
        for r in range(ROUNDS):
            # vm3 -> vm2 gets a flow (forwarding without the filter, dropping with it),
            # queued behind the flood like any miss.
            dp.receive(n3, vm3.frame(vm2, sport=3000 + r))
            installed = _installed_flows(h, n3)
            backlogs.append(_refilled(dp))
            started = time.monotonic()
            _set_filter(cloud, vm3.port_id, None if r % 2 else chain.id)
            _wait(partial(_all_gone, dp, installed), 5, "the change to take effect")
            latencies.append(time.monotonic() - started)
    finally:
        flood.stop.set()
        flood.join(timeout=5)
    _check_rounds(flood, backlogs, latencies, gc_pauses)

    # Answered in order of arrival: the flood's frames reached vm2 in the order sent.
    _wait(lambda: dp.pending_misses() == 0, 30, "the backlog to drain")
    seqs = [
        int.from_bytes(s.frame[-4:], "big")
        for s in dp.take_sent()
        if s.port == n2 and s.frame[:6] != vm2.mac.to_bytes(6, "big")
    ]
    assert len(seqs) >= BACKLOG, len(seqs)
    assert seqs == sorted(seqs)


def _has(host: Host, key: ConnKey) -> bool:
    return host.agent.flowstate.table.lookup(key) is not None


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_peer_s_flow_state_is_taken_in_within_50_ms_during_a_miss_flood(
    cloud: Cloud, gc_pauses: GcPauses
) -> None:
    """Real UDP between two agents on loopback addresses: h2 pushes connection state to
    h1 while h1 is flooded; each entry must be in h1's table within 50 ms."""
    port = _free_udp_port()
    h1 = cloud.host("h1", "127.0.0.71", flowstate_port=port)
    h2 = cloud.host("h2", "127.0.0.72", flowstate_port=port)
    br = cloud.bridge()
    vm1 = cloud.vm(h1, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    cloud.vm(h1, br, "tap2", "02:00:00:00:00:02", "10.0.0.2")
    cloud.settle()
    dp = h1.dp
    h1.agent.run_in_thread()
    # One entry before the flood: the first message's one-time costs (the sockets'
    # first use, the decoder's first run) are not what the bound is about.
    warm = ConnKey(PROTO_TCP, 0x0A00_0001, 0xCB00_710A, 39999, 80, br.id)
    assert h2.agent.flowstate.share([h1.underlay], [ConntrackEntry(warm)]) == 1
    _wait(partial(_has, h1, warm), 5, "the first state to arrive")
    flood = Flood(cloud, vm1)
    flood.start()
    latencies: list[float] = []
    backlogs: list[int] = []
    try:
        _refilled(dp)
        for r in range(ROUNDS):
            key = ConnKey(PROTO_TCP, 0x0A00_0001, 0xCB00_710A, 40000 + r, 80, br.id)
            backlogs.append(_refilled(dp))
            started = time.monotonic()
            assert h2.agent.flowstate.share([h1.underlay], [ConntrackEntry(key)]) == 1
            _wait(partial(_has, h1, key), 5, "the state to arrive")
            latencies.append(time.monotonic() - started)
    finally:
        flood.stop.set()
        flood.join(timeout=5)
    _check_rounds(flood, backlogs, latencies, gc_pauses)
