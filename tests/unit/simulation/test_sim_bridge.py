"""A bridge learns, forwards, floods, answers ARP for what it knows, and respects VLANs."""

from __future__ import annotations

from sim_topo import BROADCAST, NOW, Topo, arp_req, ip, mac, parse, tcp

from tessera.model import Bridge, Port
from tessera.packet import Arp, Field, mac_from_str
from tessera.simulation import ArpLearned, ExpiryClass, MacLearned, Output, Verdict, mac_tag
from tessera.simulation.arp import ARP_LIFETIME


def three_port_bridge() -> tuple[Topo, Bridge, list[Port]]:
    t = Topo()
    br = t.bridge("br")
    ports = [t.bridge_port(br) for _ in range(3)]
    return t, br, ports


def test_unknown_destination_is_flooded_to_every_other_port() -> None:
    t, br, (a, b, c) = three_port_bridge()
    res = t.send(a, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2"))
    assert res.verdict is Verdict.FORWARD
    assert {o.port_id for o in res.outputs} == {b.id, c.id}
    assert all(o == Output(o.port_id) for o in res.outputs), "a bridge rewrites nothing"
    # Learning the destination later must invalidate this flood.
    assert mac_tag(br.id, 0, mac(2)) in res.tags
    assert res.expiry is ExpiryClass.NORMAL


def test_source_is_learned_as_a_state_update_not_applied() -> None:
    t, br, (a, _b, _c) = three_port_bridge()
    res = t.send(a, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2"))
    assert res.state_updates == (MacLearned(br.id, 0, mac(1), a.id),)
    assert t.snapshot().mac_table(br.id) == {}, "the simulation never writes state"
    assert mac_tag(br.id, 0, mac(1)) in res.tags


def test_known_destination_goes_to_its_port_only() -> None:
    t, br, (a, b, _c) = three_port_bridge()
    t.learn_mac(br, mac(2), b)
    t.learn_mac(br, mac(1), a)
    res = t.send(a, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2"))
    assert res.outputs == (Output(b.id),)
    assert res.state_updates == (), "nothing new to learn"
    assert {br.id, a.id, b.id, mac_tag(br.id, 0, mac(2))} <= res.tags


def test_mac_move_is_learned_on_the_new_port() -> None:
    t, br, (a, b, c) = three_port_bridge()
    t.learn_mac(br, mac(1), a)
    t.learn_mac(br, mac(2), b)
    res = t.send(c, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2"))
    assert res.state_updates == (MacLearned(br.id, 0, mac(1), c.id),)
    assert "MAC move" in str(res.trace.to_dict() if res.trace else "")
    assert res.outputs == (Output(b.id),)


def test_frame_to_a_mac_behind_its_own_ingress_port_is_dropped() -> None:
    t, br, (a, _b, _c) = three_port_bridge()
    t.learn_mac(br, mac(2), a)
    res = t.send(a, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2"))
    assert res.verdict is Verdict.DROP
    assert "behind the ingress port" in (res.drop_reason or "")


def test_broadcast_floods_and_is_never_learned_as_a_destination() -> None:
    t, br, (a, b, c) = three_port_bridge()
    t.learn_mac(br, mac(1), a)
    frame = tcp(mac(1), BROADCAST, "10.0.0.1", "10.255.255.255")
    res = t.send(a, frame)
    assert {o.port_id for o in res.outputs} == {b.id, c.id}
    assert mac_tag(br.id, 0, BROADCAST) not in res.tags


def test_multicast_source_is_not_learned() -> None:
    t, _br, (a, _b, _c) = three_port_bridge()
    res = t.send(a, tcp(0x01_00_5E_00_00_01, mac(2), "10.0.0.1", "10.0.0.2"))
    assert res.state_updates == ()


def test_a_down_bridge_drops_packets() -> None:
    t, br, (a, _b, _c) = three_port_bridge()
    t.set(br, admin_state_up=False)
    res = t.send(a, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2"))
    assert res.verdict is Verdict.DROP
    assert "down" in (res.drop_reason or "")
    assert br.id in res.tags
    assert res.expiry is ExpiryClass.ERROR


def test_a_down_ingress_port_drops_packets() -> None:
    t, _br, (a, _b, _c) = three_port_bridge()
    t.set(a, admin_state_up=False)
    res = t.send(a, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2"))
    assert res.verdict is Verdict.DROP
    assert a.id in res.tags
    assert res.state_updates == (), "nothing is learned from a down port"


def test_a_down_egress_port_gets_nothing_from_a_flood() -> None:
    t, _br, (a, b, c) = three_port_bridge()
    t.set(c, admin_state_up=False)
    res = t.send(a, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2"))
    assert res.outputs == (Output(b.id),)


def test_flood_reaches_interior_ports_and_crosses_linked_bridges() -> None:
    t = Topo()
    b1, b2 = t.bridge("b1"), t.bridge("b2")
    a = t.bridge_port(b1)
    link1, link2 = t.bridge_port(b1), t.bridge_port(b2)
    far = t.bridge_port(b2)
    t.link(link1, link2)
    res = t.send(a, tcp(mac(1), mac(9), "10.0.0.1", "10.0.0.9"))
    assert res.outputs == (Output(far.id),)
    # Both bridges learned where mac(1) is.
    assert MacLearned(b1.id, 0, mac(1), a.id) in res.state_updates
    assert MacLearned(b2.id, 0, mac(1), link2.id) in res.state_updates


def test_arp_for_a_linked_router_port_goes_to_the_router_only() -> None:
    """Not flooded, and answered by the router, which learns the asker."""
    t, br, (a, _b, _c) = three_port_bridge()
    rt = t.router()
    link = t.bridge_port(br)
    rp = t.router_port(rt, "10.0.0.1/24", "02:aa:00:00:00:01")
    t.link(link, rp)
    res = t.send(a, arp_req(mac(1), "10.0.0.5", "10.0.0.1"))
    assert res.verdict is Verdict.CONSUMED
    assert res.outputs == ()
    (reply,) = res.emitted
    assert reply.port_id == a.id and reply.kind == "arp_reply"
    frame = parse(reply.frame)
    assert isinstance(frame.payload, Arp)
    assert frame.payload.sender_mac == mac_from_str("02:aa:00:00:00:01")
    assert frame.payload.sender_ip == ip("10.0.0.1")
    assert frame.dst == mac(1) and frame.payload.target_ip == ip("10.0.0.5")
    assert rp.id in res.tags
    assert res.expiry is ExpiryClass.UNCACHED
    assert res.state_updates == (
        MacLearned(br.id, 0, mac(1), a.id),
        ArpLearned(rt.id, ip("10.0.0.5"), mac(1), NOW + ARP_LIFETIME),
    )


def test_a_down_bridge_port_drops_silently() -> None:
    """A bridge port has no address to answer from: no ICMP, unlike a router port."""
    t, br, (a, b, _c) = three_port_bridge()
    rt = t.router()
    link = t.bridge_port(br)
    t.link(link, t.router_port(rt, "10.0.0.1/24", "02:aa:00:00:00:01"))
    gw = mac_from_str("02:aa:00:00:00:01")
    t.set(a, admin_state_up=False)
    res = t.send(a, tcp(mac(1), gw, "10.0.0.5", "10.0.1.5"))
    assert res.verdict is Verdict.DROP and res.emitted == ()
    t.set(a, admin_state_up=True)
    t.set(link, admin_state_up=False)
    res = t.send(a, tcp(mac(1), gw, "10.0.0.5", "10.0.1.5"))
    assert res.verdict is Verdict.DROP and res.emitted == ()
    t.set(link, admin_state_up=True)
    t.set(br, admin_state_up=False)
    res = t.send(b, tcp(mac(2), gw, "10.0.0.6", "10.0.1.5"))
    assert res.verdict is Verdict.DROP and res.emitted == ()


def test_bridge_answers_arp_for_dhcp_hosts() -> None:
    t, br, (a, _b, _c) = three_port_bridge()
    t.dhcp_subnet(
        br, "10.0.0.0/24", hosts=[{"mac_addr": "02:00:00:00:00:07", "ip_addr": "10.0.0.7"}]
    )
    res = t.send(a, arp_req(mac(1), "10.0.0.5", "10.0.0.7"))
    assert res.verdict is Verdict.CONSUMED
    (reply,) = res.emitted
    arp = parse(reply.frame).payload
    assert isinstance(arp, Arp) and arp.sender_mac == mac(7)


def test_owner_probing_its_own_address_gets_no_answer_from_the_bridge() -> None:
    t, br, (a, b, c) = three_port_bridge()
    t.dhcp_subnet(
        br, "10.0.0.0/24", hosts=[{"mac_addr": "02:00:00:00:00:07", "ip_addr": "10.0.0.7"}]
    )
    res = t.send(a, arp_req(mac(7), "0.0.0.0", "10.0.0.7"))
    assert res.emitted == ()
    assert {o.port_id for o in res.outputs} == {b.id, c.id}


def test_arp_for_an_unknown_address_is_flooded_and_cacheable() -> None:
    t, _br, (a, b, c) = three_port_bridge()
    res = t.send(a, arp_req(mac(1), "10.0.0.5", "10.0.0.9"))
    assert {o.port_id for o in res.outputs} == {b.id, c.id}
    assert res.cacheable


def test_vlans_are_separate_segments() -> None:
    t = Topo()
    br = t.bridge()
    a10, b10 = t.bridge_port(br, vlan_id=10), t.bridge_port(br, vlan_id=10)
    t.bridge_port(br, vlan_id=20)
    untagged = t.bridge_port(br)
    res = t.send(a10, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2"))
    assert res.outputs == (Output(b10.id),)
    assert res.state_updates == (MacLearned(br.id, 10, mac(1), a10.id),)
    # A MAC learned in VLAN 10 is unknown in the untagged segment.
    t.learn_mac(br, mac(2), b10, vlan=10)
    res = t.send(untagged, tcp(mac(3), mac(2), "10.0.0.3", "10.0.0.2"))
    assert res.verdict is Verdict.DROP, "no other port in the untagged segment"


def test_mask_of_a_plain_forward_holds_only_what_the_bridge_read() -> None:
    t, br, (a, b, _c) = three_port_bridge()
    t.learn_mac(br, mac(1), a)
    t.learn_mac(br, mac(2), b)
    res = t.send(a, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2"))
    assert res.match.mask == Field.IN_PORT | Field.ETH_SRC | Field.ETH_DST | Field.ETH_TYPE
