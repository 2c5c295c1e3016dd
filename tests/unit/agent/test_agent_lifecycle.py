"""Flows over time: idle expiry from datapath counters, repair of what the datapath lost,
and a restart that adopts installed flows instead of flushing them."""

from __future__ import annotations

import pytest
from agent_harness import Cloud, Host, Vm

from tessera.agent.cache import TopologyCache
from tessera.agent.flowtable import IDLE_TIMEOUTS
from tessera.agent.lifecycle import ADOPT_TIMEOUT
from tessera.datapath.base import Flow, Match, Output, packet_key
from tessera.datapath.fake import FakeDatapath
from tessera.model import Chain, Port, Rule
from tessera.simulation.result import ExpiryClass


def _pair(cloud: Cloud) -> tuple[Host, Vm, Vm]:
    h = cloud.host("h1", "198.18.0.1")
    br = cloud.bridge()
    vm1 = cloud.vm(h, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(h, br, "tap2", "02:00:00:00:00:02", "10.0.0.2")
    cloud.settle()
    cloud.send(vm2, vm2.arp_request(vm1.ip))
    cloud.send(vm1, vm1.arp_request(vm2.ip))
    cloud.send(vm1, vm1.frame(vm2))
    return h, vm1, vm2


def _flow_of(h: Host, vm: Vm, frame: bytes) -> Match | None:
    d = h.agent.flows.lookup(packet_key(h.number(vm.port_id), frame))
    return d.match if d is not None else None


def test_every_installable_expiry_class_has_an_idle_timeout() -> None:
    # UNCACHED results are never installed; every other class must have a timeout, or
    # a flow of it would fail at its first sweep.
    assert set(IDLE_TIMEOUTS) == set(ExpiryClass) - {ExpiryClass.UNCACHED}
    assert IDLE_TIMEOUTS[ExpiryClass.TUNNEL] > IDLE_TIMEOUTS[ExpiryClass.NORMAL]
    assert IDLE_TIMEOUTS[ExpiryClass.ERROR] < IDLE_TIMEOUTS[ExpiryClass.STATEFUL]


def test_idle_flows_expire_and_busy_ones_stay(cloud: Cloud) -> None:
    h, vm1, vm2 = _pair(cloud)
    cloud.send(vm2, vm2.frame(vm1))
    busy, idle = _flow_of(h, vm1, vm1.frame(vm2)), _flow_of(h, vm2, vm2.frame(vm1))
    assert busy is not None and idle is not None
    timeout = IDLE_TIMEOUTS[ExpiryClass.NORMAL]
    for _ in range(int(timeout / 10) + 2):
        cloud.clock.advance(10)
        h.dp.receive(h.number(vm1.port_id), vm1.frame(vm2))  # hits the flow in the "kernel"
        cloud.tick(0)
    flows = h.flows()
    assert busy in flows and idle not in flows
    assert idle not in h.dp.dump()
    assert h.agent.metrics.expired._value.get() >= 1


def test_a_flow_the_datapath_lost_is_installed_again(cloud: Cloud) -> None:
    h, vm1, vm2 = _pair(cloud)
    match = _flow_of(h, vm1, vm1.frame(vm2))
    assert match is not None
    h.dp.delete(match)
    h.dp.install(Flow(Match.of(in_port=9), (Output(1),)))  # nobody wants this one
    cloud.tick(3)
    assert match in h.dp.dump()
    assert Match.of(in_port=9) not in h.dp.dump()


def test_a_restarted_agent_keeps_valid_flows_and_removes_stale_ones(cloud: Cloud) -> None:
    h, vm1, vm2 = _pair(cloud)
    keep = _flow_of(h, vm1, vm1.frame(vm2))
    cloud.send(vm2, vm2.frame(vm1))
    stale = _flow_of(h, vm2, vm2.frame(vm1))
    assert keep is not None and stale is not None
    dp: FakeDatapath = h.dp
    cloud.stop(h)  # the kernel keeps its flows: nothing is flushed
    assert {keep, stale} <= set(dp.dump())

    # While no agent runs, vm2's traffic gets forbidden.
    chain = cloud.topo.create(Chain(name="deny"))
    cloud.topo.create(Rule(chain_id=chain.id, type="drop"))
    port = cloud.topo.get(Port, vm2.port_id)
    cloud.topo.update(Port, vm2.port_id, {**port.model_dump(), "inbound_filter_id": chain.id})

    installs = dp.installs
    h2 = cloud.start_agent("h1", h.host_id, h.underlay, dp)
    vm1.host = vm2.host = h2
    # Forwarding never stopped: the valid flow still works before adoption finished.
    assert h2.number(vm1.port_id) == keep.in_port  # the same local port numbers
    for _ in range(10):
        cloud.tick(0.25)
    assert h2.agent.adopter.done
    assert keep in dp.dump() and keep in h2.flows()
    assert dp.installs == installs  # kept as it was: not re-installed, counters intact
    assert stale not in dp.dump()
    cloud.send(vm1, vm1.frame(vm2))
    assert len(cloud.received(vm2)) == 1
    cloud.send(vm2, vm2.frame(vm1))
    assert cloud.received(vm1) == []


def test_adopted_flows_are_judged_only_once_the_bindings_are_known(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, vm1, vm2 = _pair(cloud)
    dp = h.dp
    cloud.stop(h)
    dp.install(Flow(Match.of(in_port=77), (Output(1),)))  # a port no binding explains
    known = {"yes": False}
    monkeypatch.setattr(TopologyCache, "ports_ready", lambda self: known["yes"])
    h2 = cloud.start_agent("h1", h.host_id, h.underlay, dp)
    cloud.tick(ADOPT_TIMEOUT + 1)
    # The NSDB has not told the agent its bindings: nothing is judged, all forwards.
    assert not h2.agent.adopter.done
    assert Match.of(in_port=77) in dp.dump()
    known["yes"] = True
    cloud.tick(0.5)
    assert h2.agent.adopter.done
    assert Match.of(in_port=77) not in dp.dump()
    assert _flow_of(h2, vm1, vm1.frame(vm2)) is not None  # the valid one was adopted


def test_adoption_learns_again_what_the_flows_taught(cloud: Cloud) -> None:
    h, vm1, _vm2 = _pair(cloud)
    dp = h.dp
    cloud.stop(h)  # its session ends: its learned MACs leave the NSDB
    h2 = cloud.start_agent("h1", h.host_id, h.underlay, dp)
    for _ in range(5):
        cloud.tick(0.25)
    bridge_macs = h2.agent.cache.view().macs
    known = {mac for table in bridge_macs.values() for (_vlan, mac) in table}
    assert vm1.mac in known


def test_a_port_unbound_while_no_agent_ran_is_detached_after_restart(cloud: Cloud) -> None:
    h, vm1, vm2 = _pair(cloud)
    dp = h.dp
    cloud.stop(h)
    cloud.topo.unbind(h.host_id, vm2.port_id)
    assert len(dp.ports()) == 2
    h2 = cloud.start_agent("h1", h.host_id, h.underlay, dp)
    for _ in range(5):
        cloud.tick(0.25)
    assert [b.ifname for b in dp.ports().values()] == ["tap1"]
    assert h2.agent.ports.number_of(vm1.port_id) is not None
