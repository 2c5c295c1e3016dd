"""The upcall path with a scripted simulator: parking, collapsing, never blocking."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from agent_harness import Cloud, Host, Vm

from tessera.agent.upcall import MAX_PACKETS_PER_FLOW, NOT_YET_TIMEOUT
from tessera.agent.writer import StateWriter
from tessera.packet.match import FlowMatch
from tessera.simulation.errors import NotYetLoaded
from tessera.simulation.result import SimulationResult


class Gate:
    """Wraps the agent's simulator: while closed, every simulation misses an object."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.closed = True
        self.calls = 0

    def prepare(self) -> None:
        self.inner.prepare()  # type: ignore[attr-defined]

    def simulate(
        self,
        frame: bytes,
        in_port_id: str,
        now: float,
        arp_failed: frozenset[tuple[str, int]] = frozenset(),
        match: FlowMatch | None = None,
    ) -> SimulationResult:
        self.calls += 1
        if self.closed:
            raise NotYetLoaded("bridge", "00000000-0000-0000-0000-000000000001")
        return self.inner.simulate(frame, in_port_id, now, arp_failed, match)  # type: ignore[attr-defined]


@pytest.fixture
def gated(cloud: Cloud) -> Iterator[tuple[Host, Vm, Vm, Gate]]:
    h = cloud.host("h1", "198.18.0.1")
    br = cloud.bridge()
    vm1 = cloud.vm(h, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(h, br, "tap2", "02:00:00:00:00:02", "10.0.0.2")
    cloud.settle()
    gate = Gate(h.agent.simulator)
    h.agent.upcall.sim = gate
    yield h, vm1, vm2, gate


def test_duplicate_misses_of_a_pending_flow_are_collapsed(
    cloud: Cloud, gated: tuple[Host, Vm, Vm, Gate]
) -> None:
    h, vm1, vm2, gate = gated
    frame = vm1.frame(vm2)
    for _ in range(5):
        h.dp.receive(h.number(vm1.port_id), frame)
    cloud.settle()
    assert gate.calls == 1
    assert h.agent.metrics.collapsed._value.get() == 4
    (parked,) = h.agent.upcall.parked.values()
    assert len(parked.misses) == 5
    # The object "arrives": one simulation, all five packets delivered by the flow.
    gate.closed = False
    h.dp.take_sent()
    assert parked.waiting_for == {("bridges", "00000000-0000-0000-0000-000000000001")}
    h.agent.upcall.on_loaded(set(parked.waiting_for))
    delivered = [s for s in h.dp.sent if s.port == h.number(vm2.port_id)]
    assert gate.calls == 2 and len(delivered) == 5


def test_packets_of_a_flow_waiting_too_long_are_dropped_bounded(
    cloud: Cloud, gated: tuple[Host, Vm, Vm, Gate]
) -> None:
    h, vm1, vm2, _gate = gated
    for _ in range(MAX_PACKETS_PER_FLOW + 10):
        h.dp.receive(h.number(vm1.port_id), vm1.frame(vm2))
    cloud.settle()
    (parked,) = h.agent.upcall.parked.values()
    assert len(parked.misses) == MAX_PACKETS_PER_FLOW
    cloud.tick(NOT_YET_TIMEOUT + 0.5)
    assert not h.agent.upcall.parked
    assert [s for s in h.dp.sent if s.port == h.number(vm2.port_id)] == []


def test_misses_never_wait_for_nsdb_writes(cloud: Cloud) -> None:
    h = cloud.host("h1", "198.18.0.1")
    br = cloud.bridge()
    vms = [
        cloud.vm(h, br, f"tap{i}", f"02:00:00:00:00:{i:02x}", f"10.0.0.{i}") for i in range(1, 6)
    ]
    cloud.settle()
    cloud.backend.set_available(False)  # the NSDB is down: writes fail and are retried
    try:
        for vm in vms:
            h.dp.receive(h.number(vm.port_id), vm.arp_request(vms[0].ip))
        h.agent.run_once(0)
        # Every VM's ARP was flooded although no learned MAC could be written.
        assert h.agent.metrics.misses._value.get() == 5
        assert h.agent.writer is not None and h.agent.writer.pending() == 5
    finally:
        cloud.backend.set_available(True)
    cloud.settle()
    assert h.agent.writer.pending() == 0


def test_a_write_being_tried_still_counts_as_pending() -> None:
    """The writer thread takes a write off the queue to try it: until it is done (or
    queued again after a failure) `pending()` counts it (the outage test above read 4
    of 5 in CI when it looked just then), and `stop` waits for it."""
    started, release = threading.Event(), threading.Event()

    class SlowNsdb:
        def state_set(self, table: str, key: str, value: str, ephemeral: bool = True) -> None:
            started.set()
            release.wait(5)

    writer = StateWriter(SlowNsdb())  # type: ignore[arg-type]
    writer.start()
    try:
        writer.set("t", "k", "v")
        assert started.wait(5)
        assert writer.pending() == 1
    finally:
        release.set()
        writer.stop()
    assert writer.pending() == 0 and writer.written == 1
