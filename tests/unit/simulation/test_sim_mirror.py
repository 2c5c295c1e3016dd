"""Mirrors: where on the path a port's or device's mirrors copy the packet, what the copy
is (the packet as it is there), and that the original's fate never changes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sim_topo import BROADCAST, Topo, arp_req, mac, ping, tcp, udp

from tessera.cli.trace import render_text
from tessera.model import Bridge, Port, Router
from tessera.packet.match import Field
from tessera.simulation import ExpiryClass, NotYetLoaded, Output, Verdict
from tessera.simulation.result import MirrorCopy

RP_MAC = "02:aa:00:00:00:01"
RP2_MAC = "02:aa:00:00:00:02"


@dataclass
class Net:
    """vm1, vm2 and a capture port on bridge b1 (10.0.0.0/24); vm3 on b2 (10.0.1.0/24)
    behind router r; MACs of vm1/vm2 learned, vm3's address resolved."""

    t: Topo
    b1: Bridge
    b2: Bridge
    r: Router
    vm1: Port
    vm2: Port
    cap: Port
    vm3: Port
    rp1: Port
    rp2: Port
    link1: Port


@pytest.fixture
def net() -> Net:
    t = Topo()
    b1, b2, r = t.bridge("b1"), t.bridge("b2"), t.router("r")
    vm1, vm2, cap = t.bridge_port(b1), t.bridge_port(b1), t.bridge_port(b1)
    vm3 = t.bridge_port(b2)
    link1, link2 = t.bridge_port(b1), t.bridge_port(b2)
    rp1 = t.router_port(r, "10.0.0.1/24", RP_MAC)
    rp2 = t.router_port(r, "10.0.1.1/24", RP2_MAC)
    t.link(link1, rp1)
    t.link(link2, rp2)
    t.route(r, "10.0.0.0/24", t.get(rp1))
    t.route(r, "10.0.1.0/24", t.get(rp2))
    t.learn_mac(b1, mac(1), vm1)
    t.learn_mac(b1, mac(2), vm2)
    t.learn_mac(b2, mac(3), vm3)
    t.learn_arp(r, "10.0.1.3", mac(3))
    return Net(t, b1, b2, r, vm1, vm2, cap, vm3, t.get(rp1), t.get(rp2), t.get(link1))


def _icmp(n: Net) -> bytes:
    return ping(mac(1), mac(2), "10.0.0.10", "10.0.0.20")


def _tcp(n: Net) -> bytes:
    return tcp(mac(1), mac(2), "10.0.0.10", "10.0.0.20", 40000, 5201)


def test_a_port_inbound_mirror_copies_without_changing_the_original(net: Net) -> None:
    t = net.t
    mirror = t.mirror(net.cap, name="cap")
    without = t.send(net.vm1, _icmp(net))
    t.set(net.vm1, inbound_mirror_ids=[mirror.id])
    res = t.send(net.vm1, _icmp(net))
    assert res.verdict is Verdict.FORWARD
    assert res.outputs == without.outputs == (Output(net.vm2.id),)
    assert res.mirrored == (MirrorCopy(mirror.id, Output(net.cap.id)),)
    assert {mirror.id, net.cap.id, net.vm1.id} <= res.tags
    assert res.expiry is without.expiry
    assert int(res.match.mask) == int(without.match.mask), "no condition, nothing read"
    assert res.to_dict()["mirrored"] == [{"mirror_id": mirror.id, "port_id": net.cap.id}]


def test_conditions_choose_what_is_copied_and_join_the_mask(net: Net) -> None:
    t = net.t
    mirror = t.mirror(net.cap, {"nw_proto": 6, "tp_dst": {"start": 5201, "end": 5201}})
    t.set(net.vm1, inbound_mirror_ids=[mirror.id])
    copied = t.send(net.vm1, _tcp(net))
    assert [c.output.port_id for c in copied.mirrored] == [net.cap.id]
    assert int(copied.match.mask) & int(Field.IP_PROTO | Field.TP_DST)
    other_port = t.send(net.vm1, tcp(mac(1), mac(2), "10.0.0.10", "10.0.0.20", 40000, 80))
    assert other_port.mirrored == () and other_port.outputs == copied.outputs
    icmp = t.send(net.vm1, _icmp(net))
    assert icmp.mirrored == ()
    assert int(icmp.match.mask) & int(Field.IP_PROTO), "the ICMP flow must not serve TCP"
    assert mirror.id in icmp.tags, "adding a condition must invalidate the flow that missed"


def test_any_condition_copies(net: Net) -> None:
    t = net.t
    mirror = t.mirror(net.cap, {"nw_proto": 6}, {"nw_proto": 1})
    t.set(net.vm1, inbound_mirror_ids=[mirror.id])
    assert t.send(net.vm1, _icmp(net)).mirrored
    assert t.send(net.vm1, _tcp(net)).mirrored
    assert not t.send(net.vm1, udp(mac(1), mac(2), "10.0.0.10", "10.0.0.20")).mirrored


def test_inbound_mirrors_see_the_packet_before_the_port_filter(net: Net) -> None:
    t = net.t
    chain = t.chain("deny")
    t.rule(chain, "drop")
    mirror = t.mirror(net.cap)
    t.set(net.vm1, inbound_mirror_ids=[mirror.id], inbound_filter_id=chain.id)
    res = t.send(net.vm1, _icmp(net))
    assert res.verdict is Verdict.DROP, "the copy does not make the packet a forward"
    assert res.outputs == ()
    assert res.expiry is ExpiryClass.ERROR
    assert res.mirrored == (MirrorCopy(mirror.id, Output(net.cap.id)),)


def test_outbound_mirrors_see_the_packet_after_the_port_filter(net: Net) -> None:
    t = net.t
    chain = t.chain("deny tcp")
    t.rule(chain, "drop", nw_proto=6)
    mirror = t.mirror(net.cap)
    t.set(net.vm2, outbound_mirror_ids=[mirror.id], outbound_filter_id=chain.id)
    assert t.send(net.vm1, _tcp(net)).mirrored == ()
    passed = t.send(net.vm1, _icmp(net))
    assert passed.outputs == (Output(net.vm2.id),)
    assert passed.mirrored == (MirrorCopy(mirror.id, Output(net.cap.id)),)


def test_conditions_see_the_ports_a_filter_at_that_point_sees(net: Net) -> None:
    t = net.t
    to_vm2 = t.mirror(net.cap, {"out_ports": [net.vm2.id], "in_ports": [net.vm1.id]})
    t.set(net.vm2, outbound_mirror_ids=[to_vm2.id])
    assert t.send(net.vm1, _icmp(net)).mirrored
    # From the router's side the packet enters b1 by the router link, not by vm1.
    from_router = ping(mac(3), 0x02AA_0000_0002, "10.0.1.3", "10.0.0.20")
    t.learn_arp(net.r, "10.0.0.20", mac(2))
    res = t.send(net.vm3, from_router)
    assert res.outputs and res.outputs[0].port_id == net.vm2.id
    assert res.mirrored == ()


def test_copies_carry_the_rewrites_made_so_far(net: Net) -> None:
    t = net.t
    before = t.mirror(net.cap, name="router in")
    after = t.mirror(net.cap, name="router out")
    at_vm3 = t.mirror(net.cap, name="vm3 out")
    t.set(net.r, inbound_mirror_ids=[before.id], outbound_mirror_ids=[after.id])
    t.set(net.vm3, outbound_mirror_ids=[at_vm3.id])
    res = t.send(net.vm1, ping(mac(1), 0x02AA_0000_0001, "10.0.0.10", "10.0.1.3"))
    assert res.verdict is Verdict.FORWARD
    routed = Output(net.vm3.id, eth_src=0x02AA_0000_0002, eth_dst=mac(3), ttl_dec=1)
    assert res.outputs == (routed,)
    by_mirror = {c.mirror_id: c.output for c in res.mirrored}
    assert by_mirror[before.id] == Output(net.cap.id)
    assert by_mirror[after.id] == Output(
        net.cap.id, eth_src=0x02AA_0000_0002, eth_dst=mac(3), ttl_dec=1
    )
    assert by_mirror[at_vm3.id] == by_mirror[after.id]
    assert [c.mirror_id for c in res.mirrored] == [before.id, after.id, at_vm3.id]


def test_a_bridge_mirrors_a_flood_once(net: Net) -> None:
    t = net.t
    mirror = t.mirror(net.cap)
    t.set(net.b1, outbound_mirror_ids=[mirror.id])
    res = t.send(net.vm1, tcp(mac(1), mac(9), "10.0.0.10", "10.0.0.99"))
    assert len(res.outputs) >= 2, "a flood"
    assert res.mirrored == (MirrorCopy(mirror.id, Output(net.cap.id)),)
    t.set(net.b1, outbound_mirror_ids=[], inbound_mirror_ids=[mirror.id])
    assert len(t.send(net.vm1, _tcp(net)).mirrored) == 1


def test_a_packet_the_router_answers_is_still_copied(net: Net) -> None:
    t = net.t
    mirror = t.mirror(net.cap)
    t.set(net.r, inbound_mirror_ids=[mirror.id])
    res = t.send(net.vm1, arp_req(mac(1), "10.0.0.10", "10.0.0.1"))
    assert res.verdict is Verdict.CONSUMED
    assert [c.output.port_id for c in res.mirrored] == [net.cap.id]
    assert res.emitted and res.emitted[0].kind == "arp_reply"


def test_two_mirrors_make_two_copies(net: Net) -> None:
    t = net.t
    a, b = t.mirror(net.cap), t.mirror(net.cap)
    t.set(net.vm1, inbound_mirror_ids=[a.id, b.id])
    res = t.send(net.vm1, _icmp(net))
    assert [c.mirror_id for c in res.mirrored] == [a.id, b.id]


def test_no_copy_to_a_port_that_is_down_or_linked(net: Net) -> None:
    t = net.t
    down = t.mirror(net.cap)
    linked = t.mirror(net.link1)
    t.set(net.cap, admin_state_up=False)
    t.set(net.vm1, inbound_mirror_ids=[down.id, linked.id])
    res = t.send(net.vm1, _icmp(net))
    assert res.mirrored == () and res.outputs == (Output(net.vm2.id),)
    assert {net.cap.id, net.link1.id} <= res.tags, "bringing the port up must re-decide"
    text = render_text(res.to_dict(), width=300)
    assert "is down, no copy" in text and "is interior" in text


def test_a_mirror_not_loaded_yet_is_asked_for(net: Net) -> None:
    t = net.t
    mirror = t.mirror(net.cap)
    t.set(net.vm1, inbound_mirror_ids=[mirror.id])
    del t.objects[mirror.id]
    with pytest.raises(NotYetLoaded) as info:
        t.send(net.vm1, _icmp(net))
    assert (info.value.kind, info.value.id) == ("mirror", mirror.id)


def test_the_trace_shows_the_copies(net: Net) -> None:
    t = net.t
    mirror = t.mirror(net.cap, {"nw_proto": 1}, name="icmp-tap")
    t.set(net.vm1, inbound_mirror_ids=[mirror.id])
    text = render_text(t.send(net.vm1, _icmp(net)).to_dict(), width=300)
    assert "port inbound mirror icmp-tap copies the packet to port" in text
    assert f"mirror copy to port {net.cap.id} (mirror {mirror.id})" in text


def test_a_broadcast_from_the_capture_side_is_not_mirrored_back(net: Net) -> None:
    t = net.t
    mirror = t.mirror(net.cap)
    t.set(net.vm1, inbound_mirror_ids=[mirror.id])
    res = t.send(net.cap, tcp(mac(7), BROADCAST, "10.0.0.7", "10.0.0.255"))
    assert res.mirrored == ()


def test_a_reply_the_network_generates_is_copied_where_it_passes(net: Net) -> None:
    t = net.t
    mirror = t.mirror(net.cap)
    t.set(net.vm1, outbound_mirror_ids=[mirror.id])
    res = t.send(net.vm1, ping(mac(1), 0x02AA_0000_0001, "10.0.0.10", "10.0.0.1"))
    assert res.verdict is Verdict.CONSUMED, "the router answers the ping"
    kinds = {(e.port_id, e.kind) for e in res.emitted}
    assert kinds == {(net.vm1.id, "icmp_echo_reply"), (net.cap.id, "mirror")}
    reply = next(e.frame for e in res.emitted if e.kind == "icmp_echo_reply")
    copy = next(e.frame for e in res.emitted if e.kind == "mirror")
    assert copy == reply, "the copy is the reply as it left vm1's port"
    assert res.mirrored == (), "sent once, from the agent, like the reply"
