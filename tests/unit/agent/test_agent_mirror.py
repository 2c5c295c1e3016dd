"""Mirrors through real agents on fake datapaths: the copy reaches a port on another host
through the tunnel, the original is untouched, and a mirror change takes effect at once
(flow invalidation by tag)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from agent_harness import Cloud, Host, Vm

from tessera.datapath.base import Output, OutputTunnel
from tessera.model import Chain, Mirror, Port, Rule
from tessera.packet.addr import ip_from_str


@dataclass
class Scene:
    h1: Host
    h2: Host
    vm1: Vm
    vm2: Vm
    cap: Vm  # the capture VM: on h2, on a bridge of its own that h1 never loads


@pytest.fixture
def scene(cloud: Cloud) -> Scene:
    h1 = cloud.host("h1", "198.18.0.1")
    h2 = cloud.host("h2", "198.18.0.2")
    br, tap = cloud.bridge("tenant"), cloud.bridge("capture")
    vm1 = cloud.vm(h1, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(h1, br, "tap2", "02:00:00:00:00:02", "10.0.0.2")
    cap = cloud.vm(h2, tap, "tap1", "02:00:00:00:00:0c", "10.9.9.9")
    cloud.settle()
    for vm in (vm1, vm2):  # both MACs learned: unicast, no flood
        cloud.send(vm, vm.arp_request(ip_from_str("10.0.0.99")))
    return Scene(h1, h2, vm1, vm2, cap)


def _set(cloud: Cloud, port_id: str, **fields: object) -> None:
    port = cloud.topo.get(Port, port_id)
    cloud.topo.update(Port, port_id, {**port.model_dump(), **fields})
    cloud.settle()


def _mirror_vm1(cloud: Cloud, s: Scene, **fields: object) -> Mirror:
    mirror = cloud.topo.create(Mirror(to_port_id=s.cap.port_id, **fields))  # type: ignore[arg-type]
    _set(cloud, s.vm1.port_id, inbound_mirror_ids=[mirror.id])
    return mirror


def test_a_copy_reaches_the_capture_port_on_another_host(cloud: Cloud, scene: Scene) -> None:
    s = scene
    _mirror_vm1(cloud, s)
    frame = s.vm1.frame(s.vm2)
    for _ in range(2):  # the miss, then the installed flow
        cloud.send(s.vm1, frame)
        assert cloud.received(s.vm2) == [frame], "the original, once and unchanged"
        assert cloud.received(s.cap) == [frame]
    flows = [
        d for d in s.h1.agent.flows.snapshot() if d.match.in_port == s.h1.number(s.vm1.port_id)
    ]
    actions = [a for d in flows for a in d.flow.actions]
    assert Output(s.h1.number(s.vm2.port_id)) in actions
    assert any(
        isinstance(a, OutputTunnel) and a.remote_ip == ip_from_str("198.18.0.2") for a in actions
    )
    # The receiving host only delivered it: nothing was simulated there.
    assert not s.h2.agent.flows.snapshot() or all(
        d.match.in_port != s.h2.number(s.cap.port_id) for d in s.h2.agent.flows.snapshot()
    )


def test_removing_the_mirror_stops_the_copies_at_once(cloud: Cloud, scene: Scene) -> None:
    s = scene
    mirror = _mirror_vm1(cloud, s)
    frame = s.vm1.frame(s.vm2)
    cloud.send(s.vm1, frame)
    assert cloud.received(s.cap) == [frame]
    cloud.topo.delete(Mirror, mirror.id)
    cloud.settle()
    assert not any(
        isinstance(a, OutputTunnel) for d in s.h1.agent.flows.snapshot() for a in d.flow.actions
    ), "the copying flow is gone before any packet"
    cloud.send(s.vm1, frame)
    assert cloud.received(s.vm2) == [frame]
    assert cloud.received(s.cap) == []


def test_changing_the_ports_mirror_list_or_the_conditions_takes_effect(
    cloud: Cloud, scene: Scene
) -> None:
    s = scene
    mirror = _mirror_vm1(cloud, s)
    udp = s.vm1.frame(s.vm2)
    ping = s.vm1.ping_to(s.vm2.mac, s.vm2.ip)
    cloud.send(s.vm1, udp)
    assert cloud.received(s.cap) == [udp]
    cloud.topo.update(Mirror, mirror.id, {**mirror.model_dump(), "conditions": [{"nw_proto": 1}]})
    cloud.settle()
    cloud.send(s.vm1, udp)
    assert cloud.received(s.cap) == [] and cloud.received(s.vm2) == [udp]
    cloud.send(s.vm1, ping)
    assert cloud.received(s.cap) == [ping] and cloud.received(s.vm2) == [ping]
    _set(cloud, s.vm1.port_id, inbound_mirror_ids=[])
    cloud.send(s.vm1, ping)
    assert cloud.received(s.cap) == [] and cloud.received(s.vm2) == [ping]


def test_a_dropped_packet_is_still_copied(cloud: Cloud, scene: Scene) -> None:
    s = scene
    chain = cloud.topo.create(Chain(name="deny"))
    cloud.topo.create(Rule(chain_id=chain.id, type="drop"))
    _mirror_vm1(cloud, s)
    _set(cloud, s.vm1.port_id, inbound_filter_id=chain.id)
    frame = s.vm1.frame(s.vm2)
    for _ in range(2):
        cloud.send(s.vm1, frame)
        assert cloud.received(s.vm2) == []
        assert cloud.received(s.cap) == [frame]
