"""A router routes between subnets, answers ARP and ping, and sends MidoNet's ICMP errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sim_topo import NOW, Topo, arp_rep, arp_req, ip, mac, parse, ping, tcp

from tessera.model import Bridge, Port, Router
from tessera.packet import Arp, Icmp, IPv4, icmp, mac_from_str
from tessera.simulation import (
    ArpLearned,
    ArpWait,
    ExpiryClass,
    Output,
    Verdict,
    arp_tag,
)
from tessera.simulation.arp import ARP_LIFETIME

GW1 = mac_from_str("02:aa:00:00:00:01")
GW2 = mac_from_str("02:aa:00:00:00:02")


@dataclass
class TwoSubnets:
    """vm1 (10.0.1.5) - left bridge - router - right bridge - vm2 (10.0.2.5)."""

    t: Topo
    left: Bridge
    right: Bridge
    router: Router
    vm1: Port
    vm2: Port
    rp1: Port
    rp2: Port
    link_left: Port
    link_right: Port


def two_subnets() -> TwoSubnets:
    t = Topo()
    left, right, r = t.bridge("left"), t.bridge("right"), t.router("r")
    vm1, link_left = t.bridge_port(left), t.bridge_port(left)
    vm2, link_right = t.bridge_port(right), t.bridge_port(right)
    rp1 = t.router_port(r, "10.0.1.1/24", "02:aa:00:00:00:01")
    rp2 = t.router_port(r, "10.0.2.1/24", "02:aa:00:00:00:02")
    t.link(link_left, rp1)
    t.link(link_right, rp2)
    t.route(r, "10.0.1.0/24", rp1)
    t.route(r, "10.0.2.0/24", rp2)
    t.learn_mac(left, mac(1), vm1)
    t.learn_mac(right, mac(2), vm2)
    return TwoSubnets(t, left, right, r, vm1, vm2, rp1, rp2, link_left, link_right)


def test_two_subnets_through_a_router_rewrite_macs_and_decrement_ttl() -> None:
    n = two_subnets()
    n.t.learn_arp(n.router, "10.0.2.5", mac(2))
    res = n.t.send(n.vm1, tcp(mac(1), GW1, "10.0.1.5", "10.0.2.5", ttl=64))
    assert res.verdict is Verdict.FORWARD
    assert res.outputs == (Output(n.vm2.id, eth_src=GW2, eth_dst=mac(2), ttl_dec=1),)
    assert {n.left.id, n.router.id, n.right.id, n.rp1.id, n.rp2.id} <= res.tags
    assert arp_tag(n.router.id, ip("10.0.2.5")) in res.tags
    assert res.expiry is ExpiryClass.NORMAL


def test_frame_not_sent_to_the_router_port_mac_is_dropped() -> None:
    n = two_subnets()
    n.t.learn_mac(n.left, mac(3), n.link_left)  # odd but possible: a MAC behind the link
    res = n.t.send(n.vm1, tcp(mac(1), mac(3), "10.0.1.5", "10.0.2.5"))
    assert res.verdict is Verdict.DROP
    assert "not addressed to the router" in (res.drop_reason or "")


def test_a_down_router_drops() -> None:
    n = two_subnets()
    n.t.set(n.router, admin_state_up=False)
    res = n.t.send(n.vm1, tcp(mac(1), GW1, "10.0.1.5", "10.0.2.5"))
    assert res.verdict is Verdict.DROP and n.router.id in res.tags
    # ... answering administratively prohibited, as MidoNet does (see test_sim_l3_fidelity).
    assert [e.kind for e in res.emitted] == ["icmp_error"]


# -- ARP ------------------------------------------------------------------------------


def test_router_answers_arp_for_its_port_address_and_learns_the_asker() -> None:
    t = Topo()
    r = t.router()
    uplink = t.router_port(r, "192.0.2.1/24", "02:aa:00:00:00:09")  # exterior router port
    res = t.send(uplink, arp_req(mac(1), "192.0.2.50", "192.0.2.1"))
    assert res.verdict is Verdict.CONSUMED
    (reply,) = res.emitted
    frame = parse(reply.frame)
    assert reply.port_id == uplink.id and isinstance(frame.payload, Arp)
    assert frame.payload.sender_mac == mac_from_str("02:aa:00:00:00:09")
    assert frame.dst == mac(1)
    assert res.state_updates == (ArpLearned(r.id, ip("192.0.2.50"), mac(1), NOW + ARP_LIFETIME),)


def test_router_learns_from_a_reply_addressed_to_it() -> None:
    t = Topo()
    r = t.router()
    uplink = t.router_port(r, "192.0.2.1/24", "02:aa:00:00:00:09")
    me = mac_from_str("02:aa:00:00:00:09")
    res = t.send(uplink, arp_rep(mac(1), "192.0.2.50", me, "192.0.2.1"))
    assert res.verdict is Verdict.CONSUMED
    assert res.state_updates == (ArpLearned(r.id, ip("192.0.2.50"), mac(1), NOW + ARP_LIFETIME),)


def test_router_ignores_arp_from_outside_the_port_network() -> None:
    t = Topo()
    r = t.router()
    uplink = t.router_port(r, "192.0.2.1/24")
    res = t.send(uplink, arp_req(mac(1), "198.51.100.7", "192.0.2.1"))
    assert res.verdict is Verdict.DROP
    assert res.state_updates == ()


def test_first_packet_to_an_unresolved_next_hop_is_held_not_dropped() -> None:
    n = two_subnets()
    res = n.t.send(n.vm1, tcp(mac(1), GW1, "10.0.1.5", "10.0.2.9"))
    assert res.verdict is Verdict.HOLD
    assert res.waits == (ArpWait(n.router.id, ip("10.0.2.9"), n.rp2.id),)
    assert res.expiry is ExpiryClass.UNCACHED
    # The ARP request went out on the right subnet, from the router port.
    (request,) = res.emitted
    assert request.kind == "arp_request" and request.port_id == n.vm2.id
    arp = parse(request.frame).payload
    assert isinstance(arp, Arp)
    assert (arp.sender_ip, arp.target_ip, arp.sender_mac) == (ip("10.0.2.1"), ip("10.0.2.9"), GW2)
    assert arp_tag(n.router.id, ip("10.0.2.9")) in res.tags


def test_held_packet_goes_through_once_the_entry_arrives() -> None:
    n = two_subnets()
    frame = tcp(mac(1), GW1, "10.0.1.5", "10.0.2.9")
    assert n.t.send(n.vm1, frame).verdict is Verdict.HOLD
    n.t.learn_arp(n.router, "10.0.2.9", mac(9))
    res = n.t.send(n.vm1, frame)
    assert res.outputs and res.outputs[0].eth_dst == mac(9)


def test_expired_arp_entry_is_resolved_again() -> None:
    n = two_subnets()
    n.t.learn_arp(n.router, "10.0.2.5", mac(2), expiry=NOW - 1)
    res = n.t.send(n.vm1, tcp(mac(1), GW1, "10.0.1.5", "10.0.2.5"))
    assert res.verdict is Verdict.HOLD


def test_next_hop_known_to_the_bridge_is_resolved_within_the_same_simulation() -> None:
    n = two_subnets()
    n.t.dhcp_subnet(
        n.right, "10.0.2.0/24", hosts=[{"mac_addr": "02:00:00:00:00:02", "ip_addr": "10.0.2.5"}]
    )
    res = n.t.send(n.vm1, tcp(mac(1), GW1, "10.0.1.5", "10.0.2.5"))
    assert res.verdict is Verdict.FORWARD
    assert res.outputs == (Output(n.vm2.id, eth_src=GW2, eth_dst=mac(2), ttl_dec=1),)
    assert ArpLearned(n.router.id, ip("10.0.2.5"), mac(2), NOW + ARP_LIFETIME) in res.state_updates
    assert res.emitted == (), "the bridge answered: nothing left the virtual network"


def test_arp_that_never_answers_gives_host_unreachable() -> None:
    n = two_subnets()
    frame = ping(mac(1), GW1, "10.0.1.5", "10.0.2.9")
    res = n.t.send(n.vm1, frame, arp_failed=[(n.router.id, ip("10.0.2.9"))])
    assert res.verdict is Verdict.DROP
    error = _icmp_of(res.emitted[0].frame)
    assert (error.type, error.code) == (icmp.DEST_UNREACHABLE, icmp.HOST_UNREACHABLE)


# -- ICMP -----------------------------------------------------------------------------


def _icmp_of(frame: bytes) -> Icmp:
    packet = parse(frame).payload
    assert isinstance(packet, IPv4) and isinstance(packet.payload, Icmp)
    return packet.payload


def test_router_answers_ping_to_its_addresses() -> None:
    n = two_subnets()
    for target in ("10.0.1.1", "10.0.2.1"):
        res = n.t.send(n.vm1, ping(mac(1), GW1, "10.0.1.5", target))
        assert res.verdict is Verdict.CONSUMED
        (reply,) = res.emitted
        assert reply.port_id == n.vm1.id and reply.kind == "icmp_echo_reply"
        frame = parse(reply.frame)
        ip_packet = frame.payload
        assert isinstance(ip_packet, IPv4)
        assert (ip_packet.src, ip_packet.dst) == (ip(target), ip("10.0.1.5"))
        assert (frame.src, frame.dst) == (GW1, mac(1))
        assert _icmp_of(reply.frame).type == icmp.ECHO_REPLY


def test_other_traffic_to_the_router_itself_is_dropped() -> None:
    n = two_subnets()
    res = n.t.send(n.vm1, tcp(mac(1), GW1, "10.0.1.5", "10.0.1.1", dport=22))
    assert res.verdict is Verdict.DROP and res.emitted == ()


def test_ttl_exceeded() -> None:
    n = two_subnets()
    n.t.learn_arp(n.router, "10.0.2.5", mac(2))
    res = n.t.send(n.vm1, tcp(mac(1), GW1, "10.0.1.5", "10.0.2.5", ttl=1))
    assert res.verdict is Verdict.DROP and res.drop_reason == "TTL exceeded"
    assert res.expiry is ExpiryClass.ERROR
    (error,) = res.emitted
    assert error.port_id == n.vm1.id and error.kind == "icmp_error"
    message = _icmp_of(error.frame)
    assert (message.type, message.code) == (icmp.TIME_EXCEEDED, icmp.TTL_EXCEEDED)
    packet = parse(error.frame).payload
    assert isinstance(packet, IPv4) and packet.src == ip("10.0.1.1")
    assert packet.dst == ip("10.0.1.5")


def test_ttl_two_passes_one_router() -> None:
    n = two_subnets()
    n.t.learn_arp(n.router, "10.0.2.5", mac(2))
    res = n.t.send(n.vm1, tcp(mac(1), GW1, "10.0.1.5", "10.0.2.5", ttl=2))
    assert res.verdict is Verdict.FORWARD


def test_no_icmp_error_about_an_icmp_error() -> None:
    n = two_subnets()
    frame = ping(mac(1), GW1, "10.0.1.5", "10.0.2.5", ttl=1, icmp_type=icmp.DEST_UNREACHABLE)
    res = n.t.send(n.vm1, frame)
    assert res.verdict is Verdict.DROP
    assert res.emitted == ()


def test_no_route_gives_net_unreachable() -> None:
    n = two_subnets()
    res = n.t.send(n.vm1, tcp(mac(1), GW1, "10.0.1.5", "172.16.0.1"))
    assert res.verdict is Verdict.DROP and "no route" in (res.drop_reason or "")
    message = _icmp_of(res.emitted[0].frame)
    assert (message.type, message.code) == (icmp.DEST_UNREACHABLE, icmp.NET_UNREACHABLE)


def test_blackhole_route_drops_silently() -> None:
    n = two_subnets()
    route = n.t.route(n.router, "172.16.0.0/16", type="BlackHole")
    res = n.t.send(n.vm1, tcp(mac(1), GW1, "10.0.1.5", "172.16.0.1"))
    assert res.verdict is Verdict.DROP and res.emitted == ()
    assert route.id in res.tags


def test_reject_route_answers_icmp_unreachable() -> None:
    n = two_subnets()
    n.t.route(n.router, "172.16.0.0/16", type="Reject")
    res = n.t.send(n.vm1, tcp(mac(1), GW1, "10.0.1.5", "172.16.0.1"))
    assert res.verdict is Verdict.DROP
    message = _icmp_of(res.emitted[0].frame)
    assert (message.type, message.code) == (icmp.DEST_UNREACHABLE, icmp.ADMIN_PROHIBITED)


# -- route selection --------------------------------------------------------------------


def routed_to(n: TwoSubnets, dst: str, src: str = "10.0.1.5") -> str:
    """The router port the packet leaves by (next hops are all ARP-resolved to mac(2))."""
    for addr in ("10.0.2.5", "10.0.2.6", "10.0.2.7", dst):
        n.t.learn_arp(n.router, addr, mac(2))
    res = n.t.send(n.vm1, tcp(mac(1), GW1, src, dst))
    assert res.verdict is Verdict.FORWARD, res.drop_reason
    (hop,) = [u for u in res.tags if u.startswith("arp:")]
    return hop.rsplit(":", 1)[1]


def test_longest_destination_prefix_wins() -> None:
    n = two_subnets()
    n.t.route(n.router, "192.168.0.0/16", n.rp2, gw="10.0.2.5")
    n.t.route(n.router, "192.168.1.0/24", n.rp2, gw="10.0.2.6")
    n.t.route(n.router, "0.0.0.0/0", n.rp2, gw="10.0.2.7")
    assert routed_to(n, "192.168.1.9") == "10.0.2.6"
    assert routed_to(n, "192.168.2.9") == "10.0.2.5"
    assert routed_to(n, "8.8.8.8") == "10.0.2.7"


def test_source_prefix_then_weight_break_ties() -> None:
    n = two_subnets()
    n.t.route(n.router, "192.168.0.0/16", n.rp2, gw="10.0.2.5", weight=10)
    n.t.route(n.router, "192.168.0.0/16", n.rp2, gw="10.0.2.6", weight=5)
    n.t.route(n.router, "192.168.0.0/16", n.rp2, gw="10.0.2.7", src="10.0.1.128/25")
    assert routed_to(n, "192.168.3.3", src="10.0.1.5") == "10.0.2.6", "lowest weight"
    assert routed_to(n, "192.168.3.3", src="10.0.1.200") == "10.0.2.7", "source prefix"


def test_route_with_unmatched_source_falls_back_to_a_shorter_destination() -> None:
    n = two_subnets()
    n.t.route(n.router, "192.168.1.0/24", n.rp2, gw="10.0.2.5", src="10.9.0.0/16")
    n.t.route(n.router, "192.168.0.0/16", n.rp2, gw="10.0.2.6")
    assert routed_to(n, "192.168.1.1") == "10.0.2.6"


def test_router_to_router_link_uses_the_peer_mac_without_arp() -> None:
    t = Topo()
    r1, r2 = t.router("r1"), t.router("r2")
    ext = t.router_port(r1, "192.0.2.1/24", "02:aa:00:00:00:10")
    a = t.router_port(r1, "10.255.0.1/30", "02:aa:00:00:00:11")
    b = t.router_port(r2, "10.255.0.2/30", "02:aa:00:00:00:12")
    out = t.router_port(r2, "10.9.0.1/24", "02:aa:00:00:00:13")
    t.link(a, b)
    t.route(r1, "10.9.0.0/24", a, gw="10.255.0.2")
    t.route(r2, "10.9.0.0/24", out)
    t.learn_arp(r2, "10.9.0.5", mac(5))
    frame = tcp(mac(1), mac_from_str("02:aa:00:00:00:10"), "192.0.2.50", "10.9.0.5", ttl=10)
    res = t.send(ext, frame)
    assert res.outputs == (
        Output(out.id, eth_src=mac_from_str("02:aa:00:00:00:13"), eth_dst=mac(5), ttl_dec=2),
    )


@pytest.mark.parametrize("ttl", [1, 2])
def test_ttl_exceeded_at_the_second_router_goes_back_through_the_first(ttl: int) -> None:
    t = Topo()
    r1, r2 = t.router("r1"), t.router("r2")
    ext = t.router_port(r1, "192.0.2.1/24", "02:aa:00:00:00:10")
    a = t.router_port(r1, "10.255.0.1/30", "02:aa:00:00:00:11")
    b = t.router_port(r2, "10.255.0.2/30", "02:aa:00:00:00:12")
    out = t.router_port(r2, "10.9.0.1/24", "02:aa:00:00:00:13")
    t.link(a, b)
    t.route(r1, "10.9.0.0/24", a, gw="10.255.0.2")
    t.route(r1, "192.0.2.0/24", ext)
    t.route(r2, "10.9.0.0/24", out)
    t.route(r2, "0.0.0.0/0", b, gw="10.255.0.1")
    t.learn_arp(r1, "192.0.2.50", mac(1))
    frame = tcp(mac(1), mac_from_str("02:aa:00:00:00:10"), "192.0.2.50", "10.9.0.5", ttl=ttl)
    res = t.send(ext, frame)
    assert res.verdict is Verdict.DROP
    (error,) = res.emitted
    assert error.port_id == ext.id
    packet = parse(error.frame).payload
    assert isinstance(packet, IPv4)
    # Sent by whichever router saw TTL 1, routed back to the sender.
    assert packet.src == (ip("192.0.2.1") if ttl == 1 else ip("10.255.0.2"))
    assert packet.dst == ip("192.0.2.50")


def test_nothing_is_sent_out_of_a_down_router_port_not_even_arp() -> None:
    n = two_subnets()
    n.t.set(n.rp2, admin_state_up=False)
    res = n.t.send(n.vm1, tcp(mac(1), GW1, "10.0.1.5", "10.0.2.9"))
    assert res.verdict is Verdict.DROP
    # Only the refusal, back out of the ingress port: no ARP request out of rp2.
    (error,) = res.emitted
    assert error.port_id == n.vm1.id and error.kind == "icmp_error"
    message = _icmp_of(error.frame)
    assert (message.type, message.code) == (icmp.DEST_UNREACHABLE, icmp.ADMIN_PROHIBITED)
    assert n.rp2.id in res.tags
