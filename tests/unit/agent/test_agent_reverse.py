"""`reply_frame`: the guessed reply of a conversation's first packet."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tessera.agent.reverse import REPLY_TTL, reply_frame
from tessera.packet import ETH_TYPE_IPV4, Ethernet, Icmp, IPv4, Tcp, Udp
from tessera.packet.ethernet import ETH_TYPE_ARP
from tessera.packet.match import FlowMatch

macs = st.integers(0, 2**48 - 1)
ips = st.integers(0, 2**32 - 1)
ports = st.integers(0, 65535)
ttls = st.integers(1, 255)


def _frame(
    src_mac: int, dst_mac: int, src: int, dst: int, l4: object, proto: int, ttl: int
) -> bytes:
    return Ethernet(dst_mac, src_mac, ETH_TYPE_IPV4, IPv4(src, dst, proto, l4, ttl=ttl)).build()  # type: ignore[arg-type]


def _swapped(request: bytes, reply: bytes) -> None:
    a, b = FlowMatch.from_frame("p", request), FlowMatch.from_frame("p", reply)
    assert (b.eth_src, b.eth_dst, b.ip_src, b.ip_dst) == (a.eth_dst, a.eth_src, a.ip_dst, a.ip_src)
    assert (b.eth_type, b.ip_proto, b.ip_tos, b.ip_frag) == (a.eth_type, a.ip_proto, a.ip_tos, 0)
    assert b.ip_ttl == REPLY_TTL


@given(macs, macs, ips, ips, ports, ports, ttls, st.binary(max_size=64))
def test_udp_reply_swaps_addresses_and_ports(
    sm: int, dm: int, s: int, d: int, sp: int, dp: int, ttl: int, data: bytes
) -> None:
    request = _frame(sm, dm, s, d, Udp(sp, dp, data), 17, ttl)
    reply = reply_frame(request)
    assert reply is not None
    _swapped(request, reply)
    m = FlowMatch.from_frame("p", reply)
    assert (m.tp_src, m.tp_dst) == (dp, sp)
    # Replying to the reply gives the request back (with the guessed TTL).
    again = reply_frame(reply)
    assert again is not None
    assert FlowMatch.from_frame("p", again) == FlowMatch.from_frame(
        "p", _frame(sm, dm, s, d, Udp(sp, dp, data), 17, REPLY_TTL)
    )


@given(macs, macs, ips, ips, ports, ports, ttls)
def test_a_syn_gets_a_syn_ack_and_nothing_else_of_tcp_opens(
    sm: int, dm: int, s: int, d: int, sp: int, dp: int, ttl: int
) -> None:
    syn = _frame(sm, dm, s, d, Tcp(sp, dp, flags=0x02), 6, ttl)
    reply = reply_frame(syn)
    assert reply is not None
    _swapped(syn, reply)
    tcp = Ethernet.parse(reply).payload.payload  # type: ignore[union-attr]
    assert isinstance(tcp, Tcp) and tcp.flags == 0x12
    assert (tcp.src_port, tcp.dst_port) == (dp, sp)
    for flags in (0x12, 0x10, 0x11, 0x04, 0x03, 0x18):
        assert reply_frame(_frame(sm, dm, s, d, Tcp(sp, dp, flags=flags), 6, ttl)) is None


@given(macs, macs, ips, ips, st.integers(0, 65535), st.integers(0, 65535), ttls)
def test_an_echo_request_gets_an_echo_reply(
    sm: int, dm: int, s: int, d: int, ident: int, seq: int, ttl: int
) -> None:
    request = _frame(sm, dm, s, d, Icmp(8, 0, ident, seq, b"abc"), 1, ttl)
    reply = reply_frame(request)
    assert reply is not None
    _swapped(request, reply)
    m = FlowMatch.from_frame("p", reply)
    assert (m.tp_src, m.tp_dst) == (0, 0)
    for icmp_type, code in ((0, 0), (3, 1), (11, 0), (8, 1)):
        assert (
            reply_frame(_frame(sm, dm, s, d, Icmp(icmp_type, code, ident, seq, b""), 1, ttl))
            is None
        )


def test_fragments_tags_arp_and_other_protocols_open_nothing() -> None:
    udp = Udp(1, 2, b"x")
    frag = Ethernet(2, 1, ETH_TYPE_IPV4, IPv4(1, 2, 17, udp, more_fragments=True)).build()
    later = Ethernet(2, 1, ETH_TYPE_IPV4, IPv4(1, 2, 17, b"xxxxxxxx", frag_offset=8)).build()
    tagged = Ethernet(2, 1, ETH_TYPE_IPV4, IPv4(1, 2, 17, udp), vlan_id=5).build()
    arp = Ethernet(2, 1, ETH_TYPE_ARP, b"\0" * 28).build()
    gre = Ethernet(2, 1, ETH_TYPE_IPV4, IPv4(1, 2, 47, b"\0" * 8)).build()
    for frame in (frag, later, tagged, arp, gre):
        assert reply_frame(frame) is None


@given(st.binary(max_size=80))
def test_any_bytes_give_a_frame_or_none(data: bytes) -> None:
    reply = reply_frame(data)
    assert reply is None or len(reply) == len(data)


@given(st.binary(min_size=20, max_size=60))
def test_truncated_openers_give_none_or_a_same_length_frame(tail: bytes) -> None:
    head = _frame(1, 2, 3, 4, Udp(1, 2, b""), 17, 64)[:34]
    for proto in (1, 6, 17):
        frame = head[:23] + bytes([proto]) + head[24:] + tail
        reply = reply_frame(frame)
        assert reply is None or len(reply) == len(frame)
