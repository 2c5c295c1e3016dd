"""ICMP errors about tracked and translated connections: RELATED to the connection for
`match_return_flow`, translated back (outer address and the quoted packet, every
checksum valid) through dynamic SNAT, stateful DNAT and static NAT, never cached."""

from __future__ import annotations

from typing import Any

from sim_topo import ip, mac, tcp, udp
from test_sim_nat import EXT, GW_IN, GW_OUT, PUBLIC, Edge

from tessera.cli.trace import render_text
from tessera.packet import PROTO_UDP
from tessera.packet.builders import icmp_error_for
from tessera.packet.checksum import internet_checksum
from tessera.packet.ethernet import Ethernet
from tessera.packet.icmp import Icmp
from tessera.packet.ipv4 import IPv4
from tessera.packet.udp import Udp
from tessera.simulation import ExpiryClass, Verdict
from tessera.simulation.result import SimulationResult

DNAT_IP = "203.0.113.10"


def _udp_ip(src: str, dst: str, sport: int, dport: int, ttl: int = 64) -> IPv4:
    return IPv4(ip(src), ip(dst), PROTO_UDP, Udp(sport, dport, b"x"), ttl=ttl)


def _error(src_mac: int, dst_mac: int, about: IPv4, sender: str, code: int = 3) -> bytes:
    """A destination unreachable from `sender` about the packet `about`, as a host sends
    it (to the packet's source)."""
    error = icmp_error_for(about.build(), 3, code, ip(sender))
    assert error is not None
    return Ethernet(dst_mac, src_mac, 0x0800, error).build()


def _emitted(res: SimulationResult, port_id: str) -> tuple[Ethernet, IPv4, Icmp, bytes]:
    """The one translated error the result sends, with both checksums checked."""
    assert res.verdict is Verdict.CONSUMED and res.expiry is ExpiryClass.UNCACHED
    assert not res.cacheable and res.outputs == () and res.flow_state == ()
    (pkt,) = res.emitted
    assert pkt.port_id == port_id and pkt.kind == "icmp_error"
    eth = Ethernet.parse(pkt.frame)
    assert isinstance(eth.payload, IPv4)
    outer = eth.payload
    raw_ip = pkt.frame[14:]
    assert internet_checksum(raw_ip[:20]) == 0, "outer IP checksum"
    assert isinstance(outer.payload, Icmp)
    assert internet_checksum(raw_ip[20:]) == 0, "ICMP checksum"
    quote = outer.payload.payload
    assert internet_checksum(quote[:20]) == 0, "quoted IP checksum"
    return eth, outer, outer.payload, quote


def _dnat(e: Edge) -> None:
    e.t.rule(
        e.pre, "dnat", in_ports=[e.uplink.id], nw_dst_address=DNAT_IP,
        nat_targets=[{"address_from": "10.0.0.5", "address_to": "10.0.0.5",
                      "port_from": 8080, "port_to": 8080}],
    )  # fmt: skip
    e.t.rule(e.post, "rev_dnat", out_ports=[e.uplink.id])


def test_port_unreachable_about_a_snat_connection_reaches_the_vm_translated_back() -> None:
    e = Edge()
    e.snat(PUBLIC)
    sent = _udp_ip("10.0.0.5", "203.0.113.9", 40000, 53)
    res = e.out(e.vm, Ethernet(GW_IN, mac(5), 0x0800, sent).build())
    (out,) = res.outputs
    assert (out.nw_src, out.tp_src) == (ip("203.0.113.1"), 1024)
    e.t.install(res)
    # What the external host received (the router took one off the TTL) and answers.
    received = _udp_ip("203.0.113.1", "203.0.113.9", 1024, 53, ttl=63)
    back = e.out(e.uplink, _error(EXT, GW_OUT, received, "203.0.113.9"))
    eth, outer, message, quote = _emitted(back, e.vm.id)
    assert (eth.src, eth.dst) == (GW_IN, mac(5))
    assert (outer.src, outer.dst, outer.ttl) == (ip("203.0.113.9"), ip("10.0.0.5"), 63)
    assert (message.type, message.code) == (3, 3)
    # Byte for byte the start of the packet the VM sent (but the TTL the quote had),
    # its UDP checksum included: the kernel finds the VM's socket by it.
    assert quote == _udp_ip("10.0.0.5", "203.0.113.9", 40000, 53, ttl=63).build()[:28]
    text = render_text(back.to_dict())
    assert "rev_snat: ICMP error related to" in text
    assert "quoted source -> 10.0.0.5:40000" in text


def test_port_unreachable_from_a_dnat_target_leaves_from_the_dnat_address() -> None:
    e = Edge()
    _dnat(e)
    arrived = _udp_ip("203.0.113.9", DNAT_IP, 33000, 80)
    res = e.out(e.uplink, Ethernet(GW_OUT, EXT, 0x0800, arrived).build())
    (out,) = res.outputs
    assert (out.port_id, out.nw_dst, out.tp_dst) == (e.vm.id, ip("10.0.0.5"), 8080)
    e.t.install(res)
    received = _udp_ip("203.0.113.9", "10.0.0.5", 33000, 8080, ttl=63)
    back = e.out(e.vm, _error(mac(5), GW_IN, received, "10.0.0.5"))
    eth, outer, _message, quote = _emitted(back, e.uplink.id)
    assert (eth.src, eth.dst) == (GW_OUT, EXT)
    assert (outer.src, outer.dst) == (ip(DNAT_IP), ip("203.0.113.9"))
    assert quote == _udp_ip("203.0.113.9", DNAT_IP, 33000, 80, ttl=63).build()[:28]


def test_an_error_from_a_router_on_the_way_keeps_its_own_source() -> None:
    """Time exceeded from a hop beyond the NAT: only the quote (and the destination,
    the SNAT address) are translated; the hop's own address stays."""
    e = Edge()
    e.snat(PUBLIC)
    sent = _udp_ip("10.0.0.5", "203.0.113.9", 40000, 53)
    e.t.install(e.out(e.vm, Ethernet(GW_IN, mac(5), 0x0800, sent).build()))
    received = _udp_ip("203.0.113.1", "203.0.113.9", 1024, 53, ttl=1)
    error = icmp_error_for(received.build(), 11, 0, ip("203.0.113.77"))
    assert error is not None
    back = e.out(e.uplink, Ethernet(GW_OUT, EXT, 0x0800, error).build())
    _eth, outer, message, quote = _emitted(back, e.vm.id)
    assert (outer.src, outer.dst) == (ip("203.0.113.77"), ip("10.0.0.5"))
    assert message.type == 11
    assert quote == _udp_ip("10.0.0.5", "203.0.113.9", 40000, 53, ttl=1).build()[:28]


def test_errors_through_a_floating_ip_are_translated_both_ways() -> None:
    e = Edge()
    fip = [{"address_from": DNAT_IP, "address_to": DNAT_IP}]
    fixed = [{"address_from": "10.0.0.5", "address_to": "10.0.0.5"}]
    e.t.rule(e.pre, "dnat", in_ports=[e.uplink.id], nw_dst_address=DNAT_IP, nw_dst_length=32,
             nat_targets=fixed)  # fmt: skip
    e.t.rule(e.post, "snat", out_ports=[e.uplink.id], nw_src_address="10.0.0.5",
             nw_src_length=32, nat_targets=fip)  # fmt: skip
    # In: about what the VM sent from its floating IP.
    received = _udp_ip(DNAT_IP, "203.0.113.9", 40000, 53, ttl=63)
    back = e.out(e.uplink, _error(EXT, GW_OUT, received, "203.0.113.9"))
    _eth, outer, _message, quote = _emitted(back, e.vm.id)
    assert outer.dst == ip("10.0.0.5")
    assert quote == _udp_ip("10.0.0.5", "203.0.113.9", 40000, 53, ttl=63).build()[:28]
    # Out: about what reached the VM through its floating IP.
    got = _udp_ip("203.0.113.9", "10.0.0.5", 33000, 9999, ttl=63)
    out = e.out(e.vm, _error(mac(5), GW_IN, got, "10.0.0.5"))
    _eth, outer, _message, quote = _emitted(out, e.uplink.id)
    assert outer.src == ip(DNAT_IP)
    assert quote == _udp_ip("203.0.113.9", DNAT_IP, 33000, 9999, ttl=63).build()[:28]
    # Anything else through the static rules is still one cached flow per protocol.
    plain = e.out(e.vm, tcp(mac(5), GW_IN, "10.0.0.5", "203.0.113.9", 22, 33000))
    assert plain.cacheable and plain.outputs[0].nw_src == ip(DNAT_IP)


def _firewalled(e: Edge) -> Any:
    asks, returns = e.t.chain("from vm"), e.t.chain("to vm")
    e.t.rule(asks, "accept", match_forward_flow=True)
    e.t.rule(returns, "accept", match_return_flow=True)
    e.t.rule(returns, "drop")
    return e.t.set(e.vm, inbound_filter_id=asks.id, outbound_filter_id=returns.id)


def test_a_conntrack_firewall_lets_a_related_error_in_and_drops_an_unrelated_one() -> None:
    e = Edge()
    vm = _firewalled(e)
    sent = _udp_ip("10.0.0.5", "10.0.0.6", 40000, 53)
    res = e.out(vm, Ethernet(mac(6), mac(5), 0x0800, sent).build())
    assert res.verdict is Verdict.FORWARD
    e.t.install(res)
    related = e.out(e.vm2, _error(mac(6), mac(5), sent, "10.0.0.6"))
    assert related.verdict is Verdict.FORWARD and not related.cacheable
    (out,) = related.outputs
    assert out.port_id == e.vm.id and out.nw_src is None  # no NAT: an ordinary output
    assert related.flow_state == ()  # an error creates no state
    text = render_text(related.to_dict())
    assert "ICMP error related to udp 10.0.0.5:40000 > 10.0.0.6:53" in text
    # About a connection nobody tracks: a new inbound packet, dropped, and not cached
    # either (the next error, about a tracked connection, must not meet that drop).
    other = _udp_ip("10.0.0.5", "10.0.0.6", 40001, 53)
    unrelated = e.out(e.vm2, _error(mac(6), mac(5), other, "10.0.0.6"))
    assert unrelated.verdict is Verdict.DROP and not unrelated.cacheable
    assert "ICMP error about udp 10.0.0.5:40001 > 10.0.0.6:53" in render_text(unrelated.to_dict())
    # An error the VM sends about its peer's packet goes out (and creates nothing).
    reply = _udp_ip("10.0.0.6", "10.0.0.5", 53, 40000)
    out_err = e.out(vm, _error(mac(5), mac(6), reply, "10.0.0.5"))
    assert out_err.verdict is Verdict.FORWARD and out_err.flow_state == ()


def test_the_firewall_and_snat_together_let_the_translated_error_in() -> None:
    e = Edge()
    e.snat(PUBLIC)
    vm = _firewalled(e)
    sent = _udp_ip("10.0.0.5", "203.0.113.9", 40000, 53)
    e.t.install(e.out(vm, Ethernet(GW_IN, mac(5), 0x0800, sent).build()))
    received = _udp_ip("203.0.113.1", "203.0.113.9", 1024, 53, ttl=63)
    back = e.out(e.uplink, _error(EXT, GW_OUT, received, "203.0.113.9"))
    _emitted(back, e.vm.id)


def test_errors_quoting_nothing_known_are_left_alone() -> None:
    e = Edge()
    e.snat(PUBLIC)
    _dnat(e)
    # No binding: rev_snat does not apply; the error is for the router's own address.
    stray = _udp_ip("203.0.113.1", "203.0.113.9", 1999, 53)
    res = e.out(e.uplink, _error(EXT, GW_OUT, stray, "203.0.113.9"))
    assert res.emitted == () and res.verdict is not Verdict.FORWARD
    assert "no binding for rev_snat udp 203.0.113.9:53 > 203.0.113.1:1999" in render_text(
        res.to_dict()
    )
    # A quote cut short (no ports): nothing to look up, nothing raised.
    error = icmp_error_for(stray.build(), 3, 3, ip("203.0.113.9"))
    assert error is not None and isinstance(error.payload, Icmp)
    cut = IPv4(error.src, error.dst, 1, Icmp(3, 3, payload=error.payload.payload[:22]))
    res = e.out(e.uplink, Ethernet(GW_OUT, EXT, 0x0800, cut).build())
    assert res.emitted == ()


def test_trace_shows_the_translation_of_a_dnat_error() -> None:
    e = Edge()
    _dnat(e)
    arrived = _udp_ip("203.0.113.9", DNAT_IP, 33000, 80)
    e.t.install(e.out(e.uplink, Ethernet(GW_OUT, EXT, 0x0800, arrived).build()))
    received = _udp_ip("203.0.113.9", "10.0.0.5", 33000, 8080, ttl=63)
    res = e.out(e.vm, _error(mac(5), GW_IN, received, "10.0.0.5"))
    text = render_text(res.to_dict())
    assert "rev_dnat: ICMP error related to" in text
    assert f"quoted destination -> {DNAT_IP}:80, source -> {DNAT_IP}" in text


def test_a_tcp_connection_through_dnat_is_still_cached() -> None:
    """Only errors go to userspace: the connection's own packets keep their flows."""
    e = Edge()
    _dnat(e)
    res = e.out(e.uplink, tcp(EXT, GW_OUT, "203.0.113.9", DNAT_IP, 33000, 80))
    assert res.cacheable and res.expiry is ExpiryClass.STATEFUL
    e.t.install(res)
    back = e.out(e.vm, udp(mac(5), GW_IN, "10.0.0.5", "203.0.113.9", 8080, 33000))
    assert back.cacheable


def test_errors_about_replies_are_translated_by_the_forward_rules() -> None:
    """The other direction: an error about a reply travels like the connection's first
    packet and meets the forward rule, which finds the binding (and creates none)."""
    e = Edge()
    e.snat(PUBLIC)
    sent = _udp_ip("10.0.0.5", "203.0.113.9", 40000, 53)
    e.t.install(e.out(e.vm, Ethernet(GW_IN, mac(5), 0x0800, sent).build()))
    # The VM refuses the reply it got (translated back to it).
    reply = _udp_ip("203.0.113.9", "10.0.0.5", 53, 40000, ttl=63)
    out = e.out(e.vm, _error(mac(5), GW_IN, reply, "10.0.0.5"))
    _eth, outer, _message, quote = _emitted(out, e.uplink.id)
    assert (outer.src, outer.dst) == (ip("203.0.113.1"), ip("203.0.113.9"))
    assert quote == _udp_ip("203.0.113.9", "203.0.113.1", 53, 1024, ttl=63).build()[:28]

    d = Edge()
    _dnat(d)
    arrived = _udp_ip("203.0.113.9", DNAT_IP, 33000, 80)
    d.t.install(d.out(d.uplink, Ethernet(GW_OUT, EXT, 0x0800, arrived).build()))
    # The external host refuses the DNAT target's reply (it came from the DNAT address).
    got = _udp_ip(DNAT_IP, "203.0.113.9", 80, 33000, ttl=63)
    back = d.out(d.uplink, _error(EXT, GW_OUT, got, "203.0.113.9"))
    _eth, outer, _message, quote = _emitted(back, d.vm.id)
    assert (outer.src, outer.dst) == (ip("203.0.113.9"), ip("10.0.0.5"))
    assert quote == _udp_ip("10.0.0.5", "203.0.113.9", 8080, 33000, ttl=63).build()[:28]
    assert back.flow_state == ()
