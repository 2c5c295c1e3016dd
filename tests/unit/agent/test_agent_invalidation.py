"""Flow invalidation by tags: exactly the affected flows, and the same result as a
full recompute after any sequence of changes (OVN's CHECK_NO_CHANGE_AFTER_RECOMPUTE)."""

from __future__ import annotations

from typing import Any

import pytest
from agent_harness import Cloud, Host, Vm

from tessera.datapath.base import Output, OutputTunnel, action_to_json
from tessera.model import Chain, Port, Route, Rule
from tessera.packet.addr import ip_from_str, mac_from_str


def _set_filter(cloud: Cloud, port_id: str, field: str, chain_id: str | None) -> None:
    port = cloud.topo.get(Port, port_id)
    cloud.topo.update(Port, port_id, {**port.model_dump(), field: chain_id})


def _one_bridge(cloud: Cloud) -> tuple[Host, Vm, Vm, Vm]:
    h = cloud.host("h1", "198.18.0.1")
    br = cloud.bridge()
    vms = [cloud.vm(h, br, f"tap{i}", f"02:00:00:00:00:0{i}", f"10.0.0.{i}") for i in (1, 2, 3)]
    cloud.settle()
    for vm in vms:  # everyone learned
        cloud.send(vm, vm.arp_request(ip_from_str("10.0.0.99")))
    return h, vms[0], vms[1], vms[2]


def test_a_drop_rule_on_a_port_filter_stops_its_flows_and_only_those(cloud: Cloud) -> None:
    h, vm1, vm2, vm3 = _one_bridge(cloud)
    cloud.send(vm1, vm1.frame(vm2))
    cloud.send(vm3, vm3.frame(vm2))
    cloud.send(vm1, vm1.frame(vm3))
    before = {d.match: d for d in h.agent.flows.snapshot()}
    chain = cloud.topo.create(Chain(name="no-vm1"))
    cloud.topo.create(Rule(chain_id=chain.id, type="drop"))
    _set_filter(cloud, vm1.port_id, "inbound_filter_id", chain.id)
    cloud.settle()
    after = {d.match: d for d in h.agent.flows.snapshot()}
    gone = set(before) - set(after)
    # Exactly the flows that crossed vm1's port (in or out) went; the rest were not
    # touched (same objects, never re-installed).
    assert gone == {m for m, d in before.items() if vm1.port_id in d.tags}
    assert any(m.in_port == h.number(vm1.port_id) for m in gone)
    assert all(after[m] is before[m] for m in after)
    assert set(h.dp.dump()) == set(after)
    cloud.send(vm1, vm1.frame(vm2))
    assert cloud.received(vm2) == []
    cloud.send(vm3, vm3.frame(vm2))
    assert len(cloud.received(vm2)) == 1
    _set_filter(cloud, vm1.port_id, "inbound_filter_id", None)
    cloud.settle()
    cloud.send(vm1, vm1.frame(vm2))
    assert len(cloud.received(vm2)) == 1


def test_a_rule_added_to_a_chain_in_use_takes_effect(cloud: Cloud) -> None:
    _h, vm1, vm2, _vm3 = _one_bridge(cloud)
    chain = cloud.topo.create(Chain(name="filter"))
    _set_filter(cloud, vm2.port_id, "outbound_filter_id", chain.id)
    cloud.settle()
    cloud.send(vm1, vm1.frame(vm2))
    assert len(cloud.received(vm2)) == 1
    rule = cloud.topo.create(Rule(chain_id=chain.id, type="drop", nw_proto=17))
    cloud.settle()
    cloud.send(vm1, vm1.frame(vm2))
    assert cloud.received(vm2) == []
    cloud.topo.delete(Rule, rule.id)
    cloud.settle()
    cloud.send(vm1, vm1.frame(vm2))
    assert len(cloud.received(vm2)) == 1


def test_a_vm_moved_to_another_host_keeps_working(cloud: Cloud) -> None:
    a = cloud.host("a", "198.18.0.1")
    b = cloud.host("b", "198.18.0.2")
    br = cloud.bridge()
    vm1 = cloud.vm(a, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(a, br, "tap2", "02:00:00:00:00:02", "10.0.0.2")
    cloud.settle()
    cloud.send(vm2, vm2.arp_request(vm1.ip))
    cloud.send(vm1, vm1.frame(vm2))
    assert len(cloud.received(vm2)) == 1
    cloud.topo.unbind(a.host_id, vm2.port_id)
    cloud.topo.bind(b.host_id, vm2.port_id, "tap9")
    cloud.settle()
    vm2.host = b
    cloud.send(vm1, vm1.frame(vm2))
    assert len(cloud.received(vm2)) == 1
    assert [s.vni for s in a.dp.sent if s.vni is not None]
    cloud.send(vm2, vm2.frame(vm1))
    assert len(cloud.received(vm1)) == 1


@pytest.mark.parametrize("gone", ["unbound", "deleted"])
def test_a_mac_back_behind_a_new_port_on_another_host_is_reached(cloud: Cloud, gone: str) -> None:
    """vm2's port is unbound or deleted (its MAC entry with it, though host b's session
    wrote it); a VM with vm2's MAC on a new port of host c must get vm1's unicast: the
    flow that sent it to the old port is invalidated and the frame floods until c
    learns where the MAC is now."""
    a, b, c = (cloud.host(n, f"198.18.0.{k}") for k, n in enumerate("abc", start=1))
    br = cloud.bridge()
    vm1 = cloud.vm(a, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(b, br, "tap2", "02:00:00:00:00:02", "10.0.0.2")
    cloud.settle()
    cloud.send(vm2, vm2.arp_request(vm1.ip))  # b learns vm2's MAC on its port
    cloud.send(vm1, vm1.frame(vm2))
    assert len(cloud.received(vm2)) == 1
    if gone == "unbound":
        cloud.topo.unbind(b.host_id, vm2.port_id)
    else:
        cloud.topo.delete(Port, vm2.port_id)
    cloud.settle()
    again = cloud.vm(c, br, "tap3", "02:00:00:00:00:02", "10.0.0.2")
    cloud.settle()
    cloud.send(vm1, vm1.frame(again))
    assert len(cloud.received(again)) == 1
    cloud.send(again, again.frame(vm1))  # c learns the MAC where it is now
    learned = {e.mac_addr: e.port_id for e in cloud.topo.mac_table(br.id)}
    assert learned["02:00:00:00:00:02"] == again.port_id
    cloud.send(vm1, vm1.frame(again))
    assert len(cloud.received(again)) == 1


# -- incremental == recompute ---------------------------------------------------------


def _normal(host: Host) -> set[tuple[Any, ...]]:
    """The host's flows with local port numbers replaced by port ids (two agents may
    number ports differently)."""
    port_of = host.agent.ports.port_of
    out = set()
    for d in host.agent.flows.snapshot():
        fields = dict(d.match.fields())
        fields["in_port"] = port_of(int(fields["in_port"]))
        actions = tuple(
            ("output", port_of(a.port)) if isinstance(a, Output)
            else tuple(sorted(action_to_json(a).items()))
            for a in d.flow.actions
        )  # fmt: skip
        out.add((tuple(sorted(fields.items())), actions, d.tags, d.expiry))
    return out


def _replay(cloud: Cloud, traffic: list[tuple[Vm, bytes]]) -> None:
    for _ in range(3):  # to a fixpoint: a learned MAC may invalidate an earlier flood
        for vm, frame in traffic:
            cloud.send(vm, frame)


def test_incremental_invalidation_equals_a_recompute_from_scratch(cloud: Cloud) -> None:
    a = cloud.host("a", "198.18.0.1")
    b = cloud.host("b", "198.18.0.2")
    left, right = cloud.bridge("left"), cloud.bridge("right")
    rt = cloud.router()
    rp1 = cloud.router_port(rt, "10.0.1.1/24", "02:7e:00:00:00:01")
    rp2 = cloud.router_port(rt, "10.0.2.1/24", "02:7e:00:00:00:02")
    for rp, br in ((rp1, left), (rp2, right)):
        cloud.topo.link(rp.id, cloud.bridge_port(br).id)
    routes = {}
    for rp, net in ((rp1, "10.0.1.0"), (rp2, "10.0.2.0")):
        routes[net] = cloud.topo.create(
            Route(router_id=rt.id, dst_network_addr=net, dst_network_length=24, next_hop_port=rp.id)
        )
    vm1 = cloud.vm(a, left, "tap1", "02:00:00:00:01:01", "10.0.1.2")
    vm2 = cloud.vm(a, left, "tap2", "02:00:00:00:01:02", "10.0.1.3")
    vm3 = cloud.vm(b, right, "tap1", "02:00:00:00:02:03", "10.0.2.2")
    vm4 = cloud.vm(b, left, "tap2", "02:00:00:00:01:04", "10.0.1.4")
    cloud.settle()
    gw1, gw2 = mac_from_str("02:7e:00:00:00:01"), mac_from_str("02:7e:00:00:00:02")
    traffic = [
        (vm1, vm1.arp_request(vm2.ip)),
        (vm2, vm2.arp_request(vm1.ip)),
        (vm4, vm4.arp_request(vm1.ip)),
        (vm3, vm3.arp_reply(gw2, ip_from_str("10.0.2.1"))),
        (vm1, vm1.arp_reply(gw1, ip_from_str("10.0.1.1"))),
        (vm1, vm1.frame(vm2)),
        (vm2, vm2.frame(vm1)),
        (vm1, vm1.frame(vm4)),
        (vm4, vm4.frame(vm2)),
        (vm1, vm1.udp_to(gw1, vm3.ip)),
        (vm3, vm3.udp_to(gw2, vm1.ip)),
        (vm2, vm2.udp_to(gw1, vm3.ip, sport=5)),
    ]
    _replay(cloud, traffic)
    chain = cloud.topo.create(Chain(name="c"))
    changes = [
        lambda: _set_filter(cloud, vm2.port_id, "inbound_filter_id", chain.id),
        lambda: cloud.topo.create(Rule(chain_id=chain.id, type="drop", nw_proto=17)),
        lambda: _set_filter(cloud, vm3.port_id, "outbound_filter_id", chain.id),
        lambda: cloud.topo.update(
            Route, routes["10.0.2.0"].id,
            {**routes["10.0.2.0"].model_dump(), "type": "BlackHole", "next_hop_port": None},
        ),
        lambda: _set_filter(cloud, vm2.port_id, "inbound_filter_id", None),
        lambda: (cloud.topo.unbind(b.host_id, vm4.port_id),
                 cloud.topo.bind(a.host_id, vm4.port_id, "tap4")),
        lambda: cloud.topo.update(
            Route, routes["10.0.2.0"].id,
            {**routes["10.0.2.0"].model_dump(), "type": "Normal", "next_hop_port": rp2.id},
        ),
    ]  # fmt: skip
    for change in changes:
        change()
        cloud.settle()
        vm4.host = a if vm4.port_id in a.agent.ports.attached() else b
        _replay(cloud, traffic)
    incremental = {h.host_id: _normal(h) for h in (a, b)}
    assert all(incremental.values())  # both hosts forward something

    # Recompute: fresh agents (empty tables, new datapaths) fed the same traffic.
    for h in (a, b):
        cloud.stop(h)
    fresh = {}
    for h in (a, b):
        fresh[h.host_id] = cloud.host(h.name, h.underlay, host_id=h.host_id)
    for vm in (vm1, vm2, vm3, vm4):
        vm.host = next(f for f in fresh.values() if vm.port_id in f.agent.ports.attached())
    _replay(cloud, traffic)
    recomputed = {hid: _normal(h) for hid, h in fresh.items()}
    assert incremental == recomputed


def test_tunnel_zone_address_change_invalidates_flows_to_that_host(cloud: Cloud) -> None:
    a = cloud.host("a", "198.18.0.1")
    b = cloud.host("b", "198.18.0.2")
    br = cloud.bridge()
    vm1 = cloud.vm(a, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(b, br, "tap1", "02:00:00:00:00:02", "10.0.0.2")
    cloud.settle()
    cloud.send(vm2, vm2.arp_request(vm1.ip))
    cloud.send(vm1, vm1.frame(vm2))
    assert any(
        isinstance(x, OutputTunnel) for d in a.agent.flows.snapshot() for x in d.flow.actions
    )
    cloud.topo.remove_tunnel_zone_host(cloud.zone.id, b.host_id)
    from tessera.model import TunnelZoneHost

    cloud.topo.add_tunnel_zone_host(
        cloud.zone.id, TunnelZoneHost(host_id=b.host_id, ip_address="198.18.0.22")
    )
    cloud.settle()
    assert not any(
        isinstance(x, OutputTunnel) and x.remote_ip == ip_from_str("198.18.0.2")
        for d in a.agent.flows.snapshot() for x in d.flow.actions
    )  # fmt: skip
    cloud.send(vm1, vm1.frame(vm2))
    tunnel = [s for s in a.dp.sent if s.vni is not None]
    assert tunnel and tunnel[-1].remote_ip == ip_from_str("198.18.0.22")
