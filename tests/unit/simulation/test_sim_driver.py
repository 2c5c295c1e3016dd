"""The driver: loop protection, partial snapshots, results, traces, and the NSDB loader."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import pytest
from sim_topo import BROADCAST, NOW, Topo, mac, tcp

from tessera.api.snapshot import load_snapshot
from tessera.cli.trace import render_text
from tessera.model import Bridge, Chain, Port, PortRange, Route, Router, Rule
from tessera.nsdb import tables
from tessera.nsdb.connect import open_nsdb
from tessera.nsdb.store.topology import TopologyStore
from tessera.packet import FlowMatch
from tessera.simulation import (
    MAX_HOPS,
    ExpiryClass,
    NotYetLoaded,
    Output,
    Snapshot,
    Verdict,
    simulate,
    simulate_frame,
)
from tessera.simulation.trace import PacketDescription, trace_packet


def test_two_bridges_linked_in_a_cycle_drop_a_flood_as_a_loop() -> None:
    t = Topo()
    b1, b2 = t.bridge("b1"), t.bridge("b2")
    vm = t.bridge_port(b1)
    t.bridge_port(b2)
    for _ in range(2):
        t.link(t.bridge_port(b1), t.bridge_port(b2))
    res = t.send(vm, tcp(mac(1), BROADCAST, "10.0.0.1", "10.0.0.255"))
    assert res.verdict is Verdict.DROP
    assert "loop" in (res.drop_reason or "")
    assert res.expiry is ExpiryClass.ERROR
    assert {b1.id, b2.id} <= res.tags, "fixing either bridge must invalidate the drop"
    assert res.outputs == () and res.state_updates == ()


def test_a_long_chain_of_bridges_stops_at_the_hop_limit() -> None:
    def chain_of(n: int) -> tuple[Topo, Port]:
        t = Topo()
        bridges = [t.bridge(f"b{i}") for i in range(n)]
        first = t.bridge_port(bridges[0])
        for left, right in itertools.pairwise(bridges):
            t.link(t.bridge_port(left), t.bridge_port(right))
        t.bridge_port(bridges[-1])
        return t, first

    t, first = chain_of(MAX_HOPS)
    assert t.send(first, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2")).verdict is Verdict.FORWARD
    t, first = chain_of(MAX_HOPS + 1)
    res = t.send(first, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2"))
    assert res.verdict is Verdict.DROP and "loop" in (res.drop_reason or "")


@pytest.fixture
def small() -> Iterator[tuple[Topo, Port, Port, Port]]:
    t = Topo()
    br, r = t.bridge(), t.router()
    vm, link = t.bridge_port(br), t.bridge_port(br)
    rp = t.router_port(r, "10.0.0.1/24")
    t.link(link, rp)
    yield t, vm, link, rp


def test_a_missing_peer_port_is_reported_not_guessed(small: tuple[Topo, Port, Port, Port]) -> None:
    t, vm, _link, rp = small
    del t.objects[rp.id]
    with pytest.raises(NotYetLoaded) as info:
        t.send(vm, tcp(mac(1), mac(2), "10.0.0.5", "10.0.0.9"))
    assert (info.value.kind, info.value.id) == ("port", rp.id)


def test_missing_chain_rule_and_group_are_reported(small: tuple[Topo, Port, Port, Port]) -> None:
    t, vm, _link, _rp = small
    chain = t.chain()
    t.set(vm, inbound_filter_id=chain.id)
    rule = t.rule(chain, "drop", port_group="4a000000-0000-0000-0000-0000000fffff")
    frame = tcp(mac(1), mac(2), "10.0.0.5", "10.0.0.9")
    with pytest.raises(NotYetLoaded) as info:
        t.send(vm, frame)
    assert info.value.kind == "port_group"
    del t.objects[rule.id]
    with pytest.raises(NotYetLoaded) as info:
        t.send(vm, frame)
    assert (info.value.kind, info.value.id) == ("rule", rule.id)
    del t.objects[chain.id]
    with pytest.raises(NotYetLoaded) as info:
        t.send(vm, frame)
    assert (info.value.kind, info.value.id) == ("chain", chain.id)


def test_missing_device_is_reported(small: tuple[Topo, Port, Port, Port]) -> None:
    t, vm, _link, _rp = small
    del t.objects[vm.device_id]
    with pytest.raises(NotYetLoaded) as info:
        t.send(vm, tcp(mac(1), mac(2), "10.0.0.5", "10.0.0.9"))
    assert (info.value.kind, info.value.id) == ("bridge", vm.device_id)


def test_with_state_swaps_learned_tables_without_recompiling() -> None:
    t = Topo()
    br = t.bridge()
    a, b, _c = (t.bridge_port(br) for _ in range(3))
    snap = t.snapshot()
    learned = snap.with_state(mac_tables={br.id: {(0, mac(2)): b.id}})
    assert learned.bridges is snap.bridges and learned.chains is snap.chains
    frame = tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2")
    assert len(simulate_frame(snap, a.id, frame, NOW).outputs) == 2
    assert simulate_frame(learned, a.id, frame, NOW).outputs == (Output(b.id),)


def test_trace_is_optional_and_does_not_change_the_decision() -> None:
    t = Topo()
    br = t.bridge()
    a, _b = t.bridge_port(br), t.bridge_port(br)
    chain = t.chain()
    t.rule(chain, "accept", nw_proto=6)
    t.set(a, inbound_filter_id=chain.id)
    frame = tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2")
    snap = t.snapshot()
    quiet = simulate(snap, FlowMatch.from_frame(a.id, frame), frame, NOW)
    traced = simulate(snap, FlowMatch.from_frame(a.id, frame), frame, NOW, trace=True)
    assert quiet.trace is None and traced.trace is not None
    assert quiet.outputs == traced.outputs and quiet.tags == traced.tags
    assert quiet.match.mask == traced.match.mask


# -- the NSDB loader and the trace API ----------------------------------------------------


@pytest.fixture
def stored() -> Iterator[tuple[TopologyStore, dict[str, str]]]:
    """Two subnets and a router, written through the real topology store."""
    nsdb = open_nsdb("memory")
    store = TopologyStore(nsdb)
    left, right = store.create(Bridge(name="left")), store.create(Bridge(name="right"))
    router = store.create(Router(name="r"))
    vm1 = store.create(Port(device_id=left.id, type="Bridge"))
    vm2 = store.create(Port(device_id=right.id, type="Bridge"))
    ll = store.create(Port(device_id=left.id, type="Bridge"))
    lr = store.create(Port(device_id=right.id, type="Bridge"))
    rp1 = store.create(
        Port(device_id=router.id, type="Router", port_address="10.0.1.1",
             network_address="10.0.1.0", network_length=24)
    )  # fmt: skip
    rp2 = store.create(
        Port(device_id=router.id, type="Router", port_address="10.0.2.1",
             network_address="10.0.2.0", network_length=24)
    )  # fmt: skip
    store.link(ll.id, rp1.id)
    store.link(lr.id, rp2.id)
    store.create(
        Route(router_id=router.id, dst_network_addr="10.0.2.0", dst_network_length=24,
              next_hop_port=rp2.id)
    )  # fmt: skip
    chain = store.create(Chain(name="no-ssh"))
    store.create(Rule(chain_id=chain.id, type="drop", tp_dst=PortRange(start=22, end=22)))
    store.update(Port, vm1.id, {"inbound_filter_id": chain.id})
    store.learn_mac(
        right.id, tables.MacEntry(vlan_id=0, mac_addr="02:00:00:00:00:02", port_id=vm2.id)
    )
    store.put_arp(
        router.id,
        tables.ArpEntry(ip_addr="10.0.2.5", mac_addr="02:00:00:00:00:02", expiry=NOW + 60),
    )
    gw = store.get(Port, rp1.id).port_mac
    assert gw is not None
    yield store, {"vm1": vm1.id, "vm2": vm2.id, "gw": gw, "chain": chain.id, "router": router.id}
    nsdb.close()


def test_load_snapshot_reads_topology_and_learned_state(
    stored: tuple[TopologyStore, dict[str, str]],
) -> None:
    store, ids = stored
    snap = load_snapshot(store.nsdb)
    assert isinstance(snap, Snapshot)
    description = {
        "port_id": ids["vm1"],
        "src_mac": "02:00:00:00:00:01",
        "dst_mac": ids["gw"],
        "src_ip": "10.0.1.5",
        "dst_ip": "10.0.2.5",
        "protocol": "tcp",
        "dst_port": 80,
    }
    answer = trace_packet(snap, description, NOW)
    assert answer["verdict"] == "forward"
    assert [o["port_id"] for o in answer["outputs"]] == [ids["vm2"]]
    assert answer["outputs"][0]["ttl_dec"] == 1
    json.dumps(answer)  # JSON-ready all the way down
    text = render_text(answer)
    assert "router r" in text and "output to port" in text

    ssh = trace_packet(snap, {**description, "dst_port": 22}, NOW)
    assert ssh["verdict"] == "drop"
    assert ids["chain"] in json.dumps(ssh["trace"])
    assert "dropped by a rule" in render_text(ssh)


def test_trace_of_an_unknown_port_or_a_bad_description_fails_clearly(
    stored: tuple[TopologyStore, dict[str, str]],
) -> None:
    store, ids = stored
    snap = load_snapshot(store.nsdb)
    with pytest.raises(NotYetLoaded):
        trace_packet(snap, {"port_id": "4a000000-0000-0000-0000-0000000fffff",
                            "src_mac": "02:00:00:00:00:01"}, NOW)  # fmt: skip
    with pytest.raises(ValueError, match="dst_port"):
        bad = {"port_id": ids["vm1"], "src_mac": "02:00:00:00:00:01", "src_ip": "10.0.1.5",
               "dst_ip": "10.0.2.5", "protocol": "tcp"}  # fmt: skip
        trace_packet(snap, bad, NOW)


@pytest.mark.parametrize("kind", [
    {"protocol": "arp"},
    {"protocol": "udp", "dst_port": 53},
    {"protocol": "icmp", "icmp_type": 8},
    {"protocol": 47},
    {"protocol": "tcp", "dst_port": 80, "fragment": "later"},
    {"protocol": "tcp", "dst_port": 80, "fragment": "first", "vlan_id": 5},
])  # fmt: skip
def test_every_description_builds_a_frame_the_parser_accepts(kind: dict[str, object]) -> None:
    desc = PacketDescription.model_validate(
        {"port_id": "4a000000-0000-0000-0000-000000000001", "src_mac": "02:00:00:00:00:01",
         "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", **kind}
    )  # fmt: skip
    FlowMatch.from_frame(desc.port_id, desc.frame())


def test_bare_ethernet_description() -> None:
    desc = PacketDescription(
        port_id="4a000000-0000-0000-0000-000000000001", src_mac="02:00:00:00:00:01", eth_type=0x88CC
    )
    assert FlowMatch.from_frame(desc.port_id, desc.frame()).original()["eth_type"] == 0x88CC


def test_a_rebuild_reuses_unchanged_chains_and_recompiles_changed_ones() -> None:
    t = Topo()
    br = t.bridge()
    a, b = t.bridge_port(br), t.bridge_port(br)
    keep, change = t.chain("keep"), t.chain("change")
    t.rule(keep, "accept", nw_proto=6)
    rule = t.rule(change, "drop", nw_proto=17)
    group = t.port_group(a)
    t.rule(keep, "drop", port_group=group.id)
    first = t.snapshot()
    t.set(rule, nw_proto=6)
    second = Snapshot.from_objects(t.objects, previous=first)
    assert second.chains[keep.id] is first.chains[keep.id]
    assert second.chains[change.id] is not first.chains[change.id]
    t.set(group, port_ids=[a.id, b.id])
    third = Snapshot.from_objects(t.objects, previous=second)
    assert third.chains[keep.id] is not second.chains[keep.id], "its group changed"
    assert third.chains[change.id] is second.chains[change.id]
