"""Parsing and building known frames (see packet_vectors.py)."""

from __future__ import annotations

import pytest
from packet_vectors import (
    ARP_REQUEST,
    DHCP_DISCOVER,
    ICMP_ECHO,
    IP_ROUTER_ALERT,
    TCP_SYN,
    VLAN_UDP,
    hexbytes,
)

from tessera.packet import (
    ETH_TYPE_ARP,
    ETH_TYPE_IPV4,
    Arp,
    Dhcp,
    Ethernet,
    Icmp,
    IPv4,
    PacketError,
    Tcp,
    Udp,
    arp,
    dhcp,
    icmp,
    ip_from_str,
    mac_from_str,
    tcp,
)


def test_arp_request_parses() -> None:
    frame = Ethernet.parse(ARP_REQUEST)
    assert frame.dst == 0xFFFF_FFFF_FFFF
    assert frame.src == mac_from_str("52:54:00:12:34:56")
    assert frame.ethertype == ETH_TYPE_ARP
    assert frame.payload == Arp(
        arp.REQUEST, 0x525400123456, ip_from_str("192.168.0.1"), 0, ip_from_str("192.168.0.2")
    )


def test_arp_request_builds_without_padding() -> None:
    assert Ethernet.parse(ARP_REQUEST).build() == ARP_REQUEST[:42]


def test_arp_for_other_protocols_is_refused() -> None:
    bad = bytearray(ARP_REQUEST)
    bad[16:18] = b"\x86\xdd"  # protocol type IPv6
    with pytest.raises(PacketError):
        Ethernet.parse(bytes(bad))


def test_icmp_echo_request() -> None:
    frame = Ethernet.parse(ICMP_ECHO)
    ip = frame.payload
    assert isinstance(ip, IPv4)
    assert (ip.src, ip.dst, ip.ttl, ip.ident, ip.dont_fragment) == (
        0x0A000001,
        0x0A000002,
        64,
        0xABCD,
        True,
    )
    assert ip.checksum == 0x7B09
    assert ip.payload == Icmp(icmp.ECHO_REQUEST, 0, 0x1234, 1, b"abcdefgh")
    assert frame.build() == ICMP_ECHO


def test_tcp_syn_with_options() -> None:
    frame = Ethernet.parse(TCP_SYN)
    assert isinstance(frame.payload, IPv4)
    seg = frame.payload.payload
    assert isinstance(seg, Tcp)
    assert (seg.src_port, seg.dst_port, seg.seq, seg.flags, seg.window) == (
        43210,
        22,
        0x11223344,
        tcp.SYN,
        64240,
    )
    assert seg.options[:4] == b"\x02\x04\x05\xb4"
    assert len(seg.options) == 20 and seg.payload == b""
    assert seg.checksum == 0xDA53
    assert frame.build() == TCP_SYN


def test_vlan_tagged_udp() -> None:
    frame = Ethernet.parse(VLAN_UDP)
    assert (frame.vlan_id, frame.vlan_pcp, frame.ethertype) == (100, 5, ETH_TYPE_IPV4)
    assert isinstance(frame.payload, IPv4)
    assert frame.payload.payload == Udp(5353, 9999, b"hello")
    assert frame.build() == VLAN_UDP


def test_ethernet_padding_after_ip_total_length_is_ignored() -> None:
    padded = VLAN_UDP + bytes(20)
    assert Ethernet.parse(padded) == Ethernet.parse(VLAN_UDP)


def test_ipv4_options_and_unknown_protocol() -> None:
    frame = Ethernet.parse(IP_ROUTER_ALERT)
    ip = frame.payload
    assert isinstance(ip, IPv4)
    assert ip.options == b"\x94\x04\x00\x00"
    assert ip.proto == 2 and ip.payload == hexbytes("2200fa0200000000")
    assert frame.build() == IP_ROUTER_ALERT


def _fragments() -> tuple[bytes, bytes]:
    whole = Udp(4000, 5000, bytes(range(40))).build(0x0A000001, 0x0A000002)
    first = IPv4(0x0A000001, 0x0A000002, 17, whole[:24], ident=7, more_fragments=True)
    later = IPv4(0x0A000001, 0x0A000002, 17, whole[24:], ident=7, frag_offset=3)
    return first.build(), later.build()


def test_first_fragment_parses_l4_header_keeping_wire_checksum_and_length() -> None:
    first_bytes, _ = _fragments()
    first = IPv4.parse(first_bytes)
    assert first.more_fragments and first.frag_offset == 0
    assert isinstance(first.payload, Udp)
    assert (first.payload.src_port, first.payload.dst_port, first.payload.length) == (
        4000,
        5000,
        48,
    )
    # Rebuilding keeps the datagram's checksum and length rather than this fragment's.
    assert first.build() == first_bytes


def test_later_fragment_keeps_payload_as_bytes() -> None:
    _, later_bytes = _fragments()
    later = IPv4.parse(later_bytes)
    assert later.frag_offset == 3 and not later.more_fragments
    assert later.payload == bytes(range(16, 40))
    assert later.build() == later_bytes


def test_first_fragment_too_short_for_tcp_header_stays_bytes() -> None:
    packet = IPv4(1, 2, 6, b"\x00\x50\x00\x51", more_fragments=True).build()
    assert IPv4.parse(packet).payload == b"\x00\x50\x00\x51"


def test_unfragmented_truncated_tcp_is_an_error() -> None:
    packet = IPv4(1, 2, 6, b"\x00\x50\x00\x51").build()
    with pytest.raises(PacketError):
        IPv4.parse(packet)


def test_icmp_destination_unreachable_quotes_the_original() -> None:
    original = IPv4.parse(TCP_SYN[14:])
    error = Icmp(icmp.DEST_UNREACHABLE, icmp.ADMIN_PROHIBITED, 0, 0, TCP_SYN[14 : 14 + 28])
    packet = IPv4(0xC0A80001, original.src, 1, error).build()
    parsed = IPv4.parse(packet)
    assert isinstance(parsed.payload, Icmp) and parsed.payload.is_error
    quoted, total = IPv4.parse_quoted(parsed.payload.payload)
    assert total == 60
    assert (quoted.src, quoted.dst, quoted.proto) == (original.src, original.dst, 6)
    assert quoted.payload == TCP_SYN[34:42]  # ports, sequence number
    assert quoted.build(total_length=total) == TCP_SYN[14:42]


def test_mismatched_payload_and_header_types_are_refused() -> None:
    with pytest.raises(PacketError):
        Ethernet(1, 2, ETH_TYPE_IPV4, Arp(1, 2, 3, 4, 5)).build()
    with pytest.raises(PacketError):
        IPv4(1, 2, 17, Tcp(1, 2)).build()
    with pytest.raises(PacketError):
        IPv4(1, 2, 6, Tcp(1, 2), frag_offset=1).build()
    with pytest.raises(PacketError):
        Udp(1000, 2000, Dhcp(op=1, xid=1, chaddr=1)).build(1, 2)


@pytest.mark.parametrize(
    "bad",
    [
        Ethernet(1 << 48, 0, 0x0800),
        Ethernet(0, 0, 0x0800, vlan_id=4096),
        Ethernet(0, 0, 0x0800, vlan_pcp=1),
        IPv4(1, 2, 3, ttl=256),
        IPv4(1, 2, 3, options=b"\x01"),
        IPv4(1, 2, 3, frag_offset=0x2000),
        Tcp(70000, 1),
        Tcp(1, 2, options=b"\x01\x01"),
        Icmp(256),
        Arp(1, -1, 0, 0, 0),
    ],
)
def test_unbuildable_headers_raise_packet_error(bad: object) -> None:
    with pytest.raises(PacketError):
        if isinstance(bad, Tcp):
            bad.build(1, 2)
        else:
            bad.build()  # type: ignore[attr-defined]


def test_dhcp_discover_as_sent_by_udhcpc() -> None:
    frame = Ethernet.parse(DHCP_DISCOVER)
    assert isinstance(frame.payload, IPv4)
    udp = frame.payload.payload
    assert isinstance(udp, Udp) and udp.checksum == 0xFA27
    msg = udp.payload
    assert isinstance(msg, Dhcp)
    assert msg.op == dhcp.BOOTREQUEST and msg.xid == 0x3903F326
    assert msg.chaddr == mac_from_str("02:42:ac:11:00:02")
    assert msg.message_type == dhcp.DISCOVER
    assert msg.param_request_list == (1, 3, 6, 12, 15, 28, 42)
    assert msg.hostname == "alpine"
    assert msg.option(dhcp.OPT_CLIENT_ID) == hexbytes("010242ac110002")
    assert msg.option(dhcp.OPT_MAX_MESSAGE_SIZE) == b"\x02\x40"
    assert msg.option(dhcp.OPT_VENDOR_CLASS) == b"udhcp 1.36.1"
    assert [code for code, _ in msg.options] == [61, 57, 60]
    # Our option order differs from udhcpc's, but the rebuilt frame means the same.
    rebuilt = frame.build()
    assert len(rebuilt) == len(DHCP_DISCOVER)
    assert Ethernet.parse(rebuilt) == frame
