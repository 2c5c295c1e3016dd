"""Nothing on the miss path is swallowed: failures and cost limits are logged and counted.

Issue 13: a DHCP subnet whose option 121 route had host bits made every DISCOVER raise
in the simulation, and the agent dropped the packet without a word. Now each failure
counts in `tessera_agent_simulation_errors_total` and is logged with the port and the
exception — once a minute per port and exception type, however many packets fail — and
the agent goes on with the next packet. Simulations stopped by a cost limit count in
`tessera_agent_simulation_limits_total`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import pytest
from agent_harness import Cloud, Host, Vm

from tessera.model import Chain, Port, Rule
from tessera.packet.addr import ip_from_str
from tessera.packet.errors import PacketError
from tessera.packet.match import FlowMatch
from tessera.simulation.context import MAX_CHAIN_DEPTH
from tessera.simulation.result import SimulationResult

UPCALL = "tessera.agent.upcall"


class Failing:
    """Wraps the agent's simulator: packets entering `ports` raise `error`."""

    def __init__(self, inner: object, ports: set[str], error: Exception) -> None:
        self.inner = inner
        self.ports = ports
        self.error = error

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
        if in_port_id in self.ports:
            raise self.error
        return self.inner.simulate(frame, in_port_id, now, arp_failed, match)  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def three(cloud: Cloud) -> Iterator[tuple[Host, Vm, Vm, Vm]]:
    h = cloud.host("h1", "198.18.0.1")
    br = cloud.bridge()
    vms = [cloud.vm(h, br, f"tap{i}", f"02:00:00:00:00:0{i}", f"10.0.0.{i}") for i in (1, 2, 3)]
    cloud.settle()
    for vm in vms:  # everyone learned
        cloud.send(vm, vm.arp_request(ip_from_str("10.0.0.99")))
    yield h, vms[0], vms[1], vms[2]


def errors(h: Host, name: str) -> float:
    value = h.agent.metrics.registry.get_sample_value(
        "tessera_agent_simulation_errors_total", {"error": name}
    )
    return value or 0.0


def warnings_about(caplog: pytest.LogCaptureFixture, port_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == UPCALL and r.levelno == logging.WARNING and port_id in r.getMessage()
    ]


def test_a_failing_simulation_is_counted_always_logged_once_and_the_agent_goes_on(
    cloud: Cloud, three: tuple[Host, Vm, Vm, Vm], caplog: pytest.LogCaptureFixture
) -> None:
    h, vm1, vm2, vm3 = three
    failure = PacketError("option 121 route 172.16.0.1/12 has host bits")
    h.agent.upcall.sim = Failing(h.agent.simulator, {vm1.port_id}, failure)
    caplog.set_level(logging.WARNING, logger=UPCALL)
    for _ in range(5):
        cloud.send(vm1, vm1.frame(vm2))
        assert cloud.received(vm2) == []
    assert errors(h, "PacketError") == 5, "every failure counts"
    (line,) = warnings_about(caplog, vm1.port_id)
    assert "PacketError" in line and "host bits" in line
    # The traceback goes with the one line that is logged.
    (record,) = [r for r in caplog.records if r.name == UPCALL]
    assert record.exc_info is not None and record.exc_info[1] is failure

    # The agent goes on: other ports' packets are forwarded as usual.
    cloud.send(vm3, vm3.frame(vm2))
    assert len(cloud.received(vm2)) == 1

    # A minute later the next failure is logged again, with what was held back.
    cloud.tick(61)
    cloud.send(vm1, vm1.frame(vm2))
    lines = warnings_about(caplog, vm1.port_id)
    assert len(lines) == 2 and "4 more" in lines[1]
    assert errors(h, "PacketError") == 6


def test_each_port_and_exception_type_gets_its_own_line(
    cloud: Cloud, three: tuple[Host, Vm, Vm, Vm], caplog: pytest.LogCaptureFixture
) -> None:
    h, vm1, vm2, vm3 = three
    failing = Failing(h.agent.simulator, {vm1.port_id, vm3.port_id}, RuntimeError("bug"))
    h.agent.upcall.sim = failing
    caplog.set_level(logging.WARNING, logger=UPCALL)
    for _ in range(3):
        cloud.send(vm1, vm1.frame(vm2))
        cloud.send(vm3, vm3.frame(vm2))
    failing.error = KeyError("another bug")
    cloud.send(vm1, vm1.frame(vm2))
    assert len(warnings_about(caplog, vm1.port_id)) == 2  # RuntimeError, then KeyError
    assert len(warnings_about(caplog, vm3.port_id)) == 1
    assert errors(h, "RuntimeError") == 6 and errors(h, "KeyError") == 1


def test_a_miss_that_raises_outside_the_simulation_does_not_lose_the_batch(
    cloud: Cloud, three: tuple[Host, Vm, Vm, Vm], caplog: pytest.LogCaptureFixture
) -> None:
    h, vm1, vm2, vm3 = three
    lookup = h.agent.flows.lookup
    calls = 0

    def first_lookup_fails(key: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("flow table broken")
        return lookup(key)  # type: ignore[arg-type]

    h.agent.upcall.flows.lookup = first_lookup_fails  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger=UPCALL)
    for host in cloud.hosts:
        host.dp.take_sent()
    # Two misses in one batch: the first raises, the second is still handled.
    h.dp.receive(h.number(vm1.port_id), vm1.frame(vm2))
    h.dp.receive(h.number(vm3.port_id), vm3.frame(vm2))
    h.agent.run_once(0)
    cloud.settle()
    assert [f for f in cloud.received(vm2)] == [vm3.frame(vm2)]
    assert errors(h, "RuntimeError") == 1
    (line,) = warnings_about(caplog, vm1.port_id)
    assert "flow table broken" in line


def test_a_simulation_stopped_by_a_limit_is_counted_and_its_drop_cached(
    cloud: Cloud, three: tuple[Host, Vm, Vm, Vm], caplog: pytest.LogCaptureFixture
) -> None:
    h, vm1, vm2, _vm3 = three
    chains = [cloud.topo.create(Chain(name=f"x{i}")) for i in range(MAX_CHAIN_DEPTH + 1)]
    for upper, lower in itertools.pairwise(chains):
        cloud.topo.create(Rule(chain_id=upper.id, type="jump", jump_chain_id=lower.id))
    port = cloud.topo.get(Port, vm1.port_id)
    cloud.topo.update(Port, vm1.port_id, {**port.model_dump(), "inbound_filter_id": chains[0].id})
    cloud.settle()
    caplog.set_level(logging.WARNING, logger=UPCALL)
    simulations = h.agent.metrics.simulations._value.get()
    for _ in range(3):
        cloud.send(vm1, vm1.frame(vm2))
        assert cloud.received(vm2) == []
    limits = h.agent.metrics.registry.get_sample_value(
        "tessera_agent_simulation_limits_total", {"limit": "chain_depth"}
    )
    # One simulation: its drop flow (short-lived, as for every drop) served the others.
    assert limits == 1
    assert h.agent.metrics.simulations._value.get() == simulations + 1
    (line,) = warnings_about(caplog, vm1.port_id)
    assert "chain_depth" in line and f"more than {MAX_CHAIN_DEPTH} levels" in line
