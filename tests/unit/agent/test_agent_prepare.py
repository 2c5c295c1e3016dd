"""The snapshot is compiled when the topology settles, not by the first miss after a change:
a compile costs a miss hundreds of microseconds, a quiet agent has the time."""

from __future__ import annotations

from agent_harness import Cloud

from tessera.agent.agent import SETTLE
from tessera.agent.simulate import SnapshotSimulator
from tessera.model import Bridge, Chain, Rule


def test_a_change_is_compiled_once_settled_and_the_next_miss_does_not_compile(
    cloud: Cloud,
) -> None:
    h = cloud.host("h1", "198.18.0.1")
    br = cloud.bridge()
    vm1 = cloud.vm(h, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(h, br, "tap2", "02:00:00:00:00:02", "10.0.0.2")
    cloud.settle()
    sim = h.agent.simulator
    assert isinstance(sim, SnapshotSimulator)
    cloud.send(vm1, vm1.frame(vm2))
    assert len(cloud.received(vm2)) == 1

    chain = cloud.topo.create(Chain(name="acl"))
    cloud.topo.create(Rule(chain_id=chain.id, type="accept", nw_proto=17))
    cloud.topo.update(Bridge, br.id, {"name": br.name, "inbound_filter_id": chain.id})
    cloud.settle()  # the events are applied; the topology has not been quiet long enough
    compiles = sim.compiles
    h.agent.run_once(0)
    assert sim.compiles == compiles
    cloud.tick(SETTLE * 2)  # quiet for longer than SETTLE: compiled without any packet
    assert sim.compiles == compiles + 1
    cloud.send(vm1, vm1.frame(vm2, sport=7))
    assert len(cloud.received(vm2)) == 1
    assert sim.compiles == compiles + 1  # the miss used the prepared snapshot


def test_an_idle_agent_with_nothing_changed_does_not_compile(cloud: Cloud) -> None:
    h = cloud.host("h1", "198.18.0.1")
    br = cloud.bridge()
    cloud.vm(h, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    cloud.settle()
    cloud.tick(SETTLE * 2)
    sim = h.agent.simulator
    assert isinstance(sim, SnapshotSimulator)
    compiles = sim.compiles
    for _ in range(5):
        cloud.tick(1.0)
    assert sim.compiles == compiles
