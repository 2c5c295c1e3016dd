"""Fragments: a router filter dropping a first fragment answers "fragmentation needed"
(MidoNet's RouterBase.dropIn), the fragment kind is in the mask of every flow it decided,
and NAT treats fragments as documented in `simulation.stateful` (static: every fragment
translated; dynamic: every fragment dropped)."""

from __future__ import annotations

from typing import Any

import pytest
from sim_topo import Topo, eth, fragment, ip, mac, parse, ping, tcp

from tessera.model import Chain, Port
from tessera.packet import PROTO_ICMP, Field, Icmp, IPv4, icmp, mac_from_str
from tessera.simulation import Verdict
from tessera.simulation.icmp import FRAG_NEEDED_MTU

GW_IN = mac_from_str("02:aa:00:00:00:01")
GW_OUT = mac_from_str("02:aa:00:00:00:02")
EXT = mac(9)


class Edge:
    """VM 10.0.0.5 (mac 5) on a bridge behind router r (10.0.0.1/24, MAC GW_IN); r's
    uplink 203.0.113.1/24 (GW_OUT) is exterior, with the external host 203.0.113.9 behind
    it. r's inbound filter is `pre`, its outbound filter `post`."""

    def __init__(self) -> None:
        t = self.t = Topo()
        br = t.bridge()
        self.vm: Port = t.bridge_port(br)
        link = t.bridge_port(br)
        r = t.router()
        rp = t.router_port(r, "10.0.0.1/24", "02:aa:00:00:00:01")
        self.uplink: Port = t.router_port(r, "203.0.113.1/24", "02:aa:00:00:00:02")
        t.link(link, rp)
        t.route(r, "10.0.0.0/24", t.get(rp))
        t.route(r, "203.0.113.0/24", self.uplink)
        t.learn_mac(br, mac(5), self.vm)
        t.learn_arp(r, "203.0.113.9", EXT)
        t.learn_arp(r, "10.0.0.5", mac(5))
        self.pre: Chain = t.chain("pre")
        self.post: Chain = t.chain("post")
        t.set(r, inbound_filter_id=self.pre.id, outbound_filter_id=self.post.id)

    def out(self, frame: bytes) -> Any:
        """A packet from the VM towards the uplink."""
        return self.t.send(self.t.get(self.vm), frame)

    def into(self, frame: bytes) -> Any:
        """A packet from the external host, entering by the uplink."""
        return self.t.send(self.t.get(self.uplink), frame)


def first(src_ip: str = "10.0.0.5", dst_ip: str = "203.0.113.9", dst: int = GW_IN) -> bytes:
    return fragment(mac(5), dst, src_ip, dst_ip, later=False)


def later(src_ip: str = "10.0.0.5", dst_ip: str = "203.0.113.9", dst: int = GW_IN) -> bytes:
    return fragment(mac(5), dst, src_ip, dst_ip, later=True)


def ping_fragment(src: int, dst: int, src_ip: str, dst_ip: str, *, is_later: bool) -> bytes:
    """A fragment of a big echo request (id 7): the first carries the ICMP header."""
    if is_later:
        packet = IPv4(ip(src_ip), ip(dst_ip), PROTO_ICMP, b"\x00" * 24, frag_offset=185)
    else:
        message = Icmp(icmp.ECHO_REQUEST, 0, 7, 1, b"x" * 32)
        packet = IPv4(ip(src_ip), ip(dst_ip), PROTO_ICMP, message, more_fragments=True)
    return eth(src, dst, packet)


def frag_needed_of(result: Any) -> tuple[IPv4, Icmp, int]:
    """(IP packet, ICMP message, destination MAC) of the one error the result emitted."""
    (error,) = result.emitted
    assert error.kind == "icmp_error"
    frame = parse(error.frame)
    packet = frame.payload
    assert isinstance(packet, IPv4) and isinstance(packet.payload, Icmp)
    return packet, packet.payload, frame.dst


def test_a_first_fragment_dropped_by_the_inbound_filter_is_answered_frag_needed() -> None:
    e = Edge()
    e.t.rule(e.pre, "drop", nw_proto=6, fragment_policy="header")
    res = e.out(first())
    assert res.verdict is Verdict.DROP
    packet, message, dst_mac = frag_needed_of(res)
    assert (message.type, message.code) == (icmp.DEST_UNREACHABLE, icmp.FRAGMENTATION_NEEDED)
    assert message.next_hop_mtu == FRAG_NEEDED_MTU
    # From the ingress port's address and MAC, back to the sender.
    assert (packet.src, packet.dst) == (ip("10.0.0.1"), ip("10.0.0.5"))
    assert dst_mac == mac(5) and parse(res.emitted[0].frame).src == GW_IN
    assert res.emitted[0].port_id == e.vm.id
    # The quote is the fragment as sent: the sender matches the error to its datagram.
    quoted = message.payload
    assert quoted[:20] == parse(first()).payload.build()[:20]  # type: ignore[union-attr]
    text = str(res.trace)
    assert "ICMP fragmentation needed (next-hop MTU 576) from port" in text
    assert "a first fragment was dropped" in text


@pytest.mark.parametrize("kind", ["later", "unfragmented"])
def test_only_a_first_fragment_is_answered(kind: str) -> None:
    e = Edge()
    e.t.rule(e.pre, "drop", nw_proto=6)
    frame = later() if kind == "later" else tcp(mac(5), GW_IN, "10.0.0.5", "203.0.113.9")
    res = e.out(frame)
    assert res.verdict is Verdict.DROP and res.emitted == ()
    # The drop flow is keyed on the fragment kind: a first fragment is not covered by it
    # and gets its own simulation (and its answer).
    assert Field.IP_FRAG in res.match.mask


def test_a_rejected_first_fragment_gets_admin_prohibited_not_frag_needed() -> None:
    e = Edge()
    e.t.rule(e.pre, "reject", nw_proto=6)
    _packet, message, _dst = frag_needed_of(e.out(first()))
    assert (message.type, message.code) == (icmp.DEST_UNREACHABLE, icmp.ADMIN_PROHIBITED)


def test_the_outbound_filter_answers_from_the_ingress_port() -> None:
    e = Edge()
    e.t.rule(e.post, "drop", fragment_policy="header")
    packet, message, _dst = frag_needed_of(e.out(first()))
    assert message.code == icmp.FRAGMENTATION_NEEDED
    assert packet.src == ip("10.0.0.1")  # where the fragment came in, not the uplink


def test_a_port_filter_drop_is_silent() -> None:
    """Only the router's own filters answer (as in MidoNet): a bridge port has no address."""
    e = Edge()
    chain = e.t.chain("vm")
    e.t.rule(chain, "drop", fragment_policy="header")
    e.t.set(e.vm, inbound_filter_id=chain.id)
    res = e.out(first())
    assert res.verdict is Verdict.DROP and res.emitted == ()


# -- NAT ---------------------------------------------------------------------------------

POOL = [{"address_from": "203.0.113.1", "address_to": "203.0.113.1", "port_from": 1024,
         "port_to": 1087}]  # fmt: skip
FIP = [{"address_from": "203.0.113.10", "address_to": "203.0.113.10"}]
VM = [{"address_from": "10.0.0.5", "address_to": "10.0.0.5"}]


@pytest.mark.parametrize("is_later", [False, True])
def test_dynamic_snat_drops_every_fragment_and_answers_the_first(is_later: bool) -> None:
    e = Edge()
    e.t.rule(e.post, "snat", out_ports=[e.uplink.id], nat_targets=POOL)
    res = e.out(ping_fragment(mac(5), GW_IN, "10.0.0.5", "203.0.113.9", is_later=is_later))
    assert res.verdict is Verdict.DROP
    assert "fragmented datagram cannot be translated" in (res.drop_reason or "")
    assert res.flow_state == ()  # no binding for a datagram that cannot cross
    if is_later:
        assert res.emitted == ()
    else:
        _packet, message, _dst = frag_needed_of(res)
        assert message.code == icmp.FRAGMENTATION_NEEDED
    # The same rule still translates an unfragmented ping.
    whole = e.out(ping(mac(5), GW_IN, "10.0.0.5", "203.0.113.9"))
    assert whole.verdict is Verdict.FORWARD and whole.outputs[0].nw_src == ip("203.0.113.1")


def test_dynamic_dnat_drops_a_first_fragment_in_the_inbound_filter() -> None:
    e = Edge()
    backend = [{"address_from": "10.0.0.5", "address_to": "10.0.0.5", "port_from": 80,
                "port_to": 80}]  # fmt: skip
    e.t.rule(e.pre, "dnat", in_ports=[e.uplink.id], nat_targets=backend)
    res = e.into(fragment(EXT, GW_OUT, "203.0.113.9", "203.0.113.1", later=False))
    assert res.verdict is Verdict.DROP and res.flow_state == ()
    packet, message, _dst = frag_needed_of(res)
    assert message.code == icmp.FRAGMENTATION_NEEDED
    assert (packet.src, packet.dst) == (ip("203.0.113.1"), ip("203.0.113.9"))


@pytest.mark.parametrize("is_later", [False, True])
def test_a_floating_ip_translates_every_fragment_both_ways(is_later: bool) -> None:
    e = Edge()
    e.t.rule(e.pre, "dnat", in_ports=[e.uplink.id], nw_dst_address="203.0.113.10",
             nat_targets=VM)  # fmt: skip
    e.t.rule(e.post, "snat", out_ports=[e.uplink.id], nw_src_address="10.0.0.5",
             nat_targets=FIP)  # fmt: skip
    inbound = e.into(ping_fragment(EXT, GW_OUT, "203.0.113.9", "203.0.113.10", is_later=is_later))
    assert inbound.verdict is Verdict.FORWARD
    (out,) = inbound.outputs
    assert out.port_id == e.vm.id and out.nw_dst == ip("10.0.0.5")
    reply = e.out(ping_fragment(mac(5), GW_IN, "10.0.0.5", "203.0.113.9", is_later=is_later))
    assert reply.verdict is Verdict.FORWARD
    (back,) = reply.outputs
    assert back.port_id == e.uplink.id and back.nw_src == ip("203.0.113.10")
    assert inbound.flow_state == () and reply.flow_state == ()  # static: no state
