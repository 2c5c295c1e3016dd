"""Packets the simulation emits: ARP, echo replies and ICMP errors."""

from __future__ import annotations

import pytest

from tessera.packet import (
    BROADCAST_MAC,
    ETH_TYPE_ARP,
    ETH_TYPE_IPV4,
    Arp,
    Ethernet,
    Icmp,
    IPv4,
    Tcp,
    Udp,
    arp,
    arp_reply,
    arp_request,
    icmp,
    icmp_echo_reply_for,
    icmp_error_for,
    ip_from_str,
)

VM_MAC, VM_IP = 0x020000000001, ip_from_str("10.0.0.5")
ROUTER_MAC, ROUTER_IP = 0x0200000000FE, ip_from_str("10.0.0.1")


def test_arp_request_is_broadcast_who_has() -> None:
    frame = arp_request(ROUTER_MAC, ROUTER_IP, VM_IP, vlan_id=3)
    assert (frame.dst, frame.src, frame.ethertype, frame.vlan_id) == (
        BROADCAST_MAC,
        ROUTER_MAC,
        ETH_TYPE_ARP,
        3,
    )
    assert frame.payload == Arp(arp.REQUEST, ROUTER_MAC, ROUTER_IP, 0, VM_IP)
    assert Ethernet.parse(frame.build()) == frame


def test_arp_reply_answers_the_asker() -> None:
    frame = arp_reply(ROUTER_MAC, ROUTER_IP, VM_MAC, VM_IP)
    assert (frame.dst, frame.src) == (VM_MAC, ROUTER_MAC)
    assert frame.payload == Arp(arp.REPLY, ROUTER_MAC, ROUTER_IP, VM_MAC, VM_IP)
    assert Ethernet.parse(frame.build()) == frame


def _ping(**ip_fields: object) -> Ethernet:
    request = Icmp(icmp.ECHO_REQUEST, 0, 77, 3, b"payload")
    ip = IPv4(VM_IP, ROUTER_IP, 1, request, **ip_fields)  # type: ignore[arg-type]
    return Ethernet(ROUTER_MAC, VM_MAC, ETH_TYPE_IPV4, ip, vlan_id=9)


def test_echo_reply_swaps_addresses_and_echoes_data() -> None:
    reply = icmp_echo_reply_for(_ping(ttl=3).build())
    assert reply is not None
    assert (reply.dst, reply.src, reply.vlan_id) == (VM_MAC, ROUTER_MAC, 9)
    ip = reply.payload
    assert isinstance(ip, IPv4)
    assert (ip.src, ip.dst, ip.ttl) == (ROUTER_IP, VM_IP, 64)
    assert ip.payload == Icmp(icmp.ECHO_REPLY, 0, 77, 3, b"payload")
    assert Ethernet.parse(reply.build()) == reply


def test_echo_reply_only_for_echo_requests() -> None:
    assert icmp_echo_reply_for(arp_request(VM_MAC, VM_IP, ROUTER_IP)) is None
    udp = Ethernet(1, 2, ETH_TYPE_IPV4, IPv4(1, 2, 17, Udp(1, 2)))
    assert icmp_echo_reply_for(udp) is None
    reply_to_reply = icmp_echo_reply_for(_ping())
    assert reply_to_reply is not None
    assert icmp_echo_reply_for(reply_to_reply) is None


def _tcp_packet(**fields: object) -> IPv4:
    base: dict[str, object] = {"src": VM_IP, "dst": ip_from_str("192.0.2.9"), "proto": 6}
    base["payload"] = Tcp(40000, 443, seq=5, payload=b"x" * 100)
    base.update(fields)
    return IPv4(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("icmp_type", "code"),
    [(icmp.DEST_UNREACHABLE, icmp.NET_UNREACHABLE), (icmp.DEST_UNREACHABLE, icmp.HOST_UNREACHABLE),
     (icmp.DEST_UNREACHABLE, icmp.ADMIN_PROHIBITED), (icmp.TIME_EXCEEDED, icmp.TTL_EXCEEDED)],
)  # fmt: skip
def test_icmp_error_quotes_header_and_eight_bytes(icmp_type: int, code: int) -> None:
    original = _tcp_packet(options=b"\x01\x01\x01\x00")
    raw = original.build()
    error = icmp_error_for(raw, icmp_type, code, ROUTER_IP)
    assert error is not None
    assert (error.src, error.dst, error.proto) == (ROUTER_IP, VM_IP, 1)
    message = error.payload
    assert isinstance(message, Icmp)
    assert (message.type, message.code) == (icmp_type, code)
    assert message.payload == raw[: 24 + 8]
    assert IPv4.parse(error.build()) == error
    # Same answer from the parsed object.
    assert icmp_error_for(original, icmp_type, code, ROUTER_IP) == error


def test_fragmentation_needed_carries_the_mtu() -> None:
    error = icmp_error_for(
        _tcp_packet(dont_fragment=True),
        icmp.DEST_UNREACHABLE,
        icmp.FRAGMENTATION_NEEDED,
        ROUTER_IP,
        mtu=1400,
    )
    assert error is not None and isinstance(error.payload, Icmp)
    assert error.payload.next_hop_mtu == 1400


def test_short_original_is_quoted_whole() -> None:
    original = IPv4(VM_IP, ROUTER_IP, 17, Udp(1, 2)).build()  # 28 bytes: header + 8
    error = icmp_error_for(original + b"\x00" * 10, 3, 3, ROUTER_IP)  # trailing padding
    assert error is not None and isinstance(error.payload, Icmp)
    assert error.payload.payload == original


@pytest.mark.parametrize(
    "original",
    [
        IPv4(VM_IP, ROUTER_IP, 1, Icmp(icmp.DEST_UNREACHABLE, 1, 0, 0, b"q" * 28)),
        IPv4(VM_IP, ROUTER_IP, 1, Icmp(icmp.TIME_EXCEEDED, 0, 0, 0, b"q" * 28)),
        _tcp_packet(payload=b"y" * 16, frag_offset=10),
        _tcp_packet(src=0),
        _tcp_packet(src=0xFFFFFFFF),
        _tcp_packet(src=ip_from_str("224.0.0.5")),
        _tcp_packet(src=ip_from_str("127.0.0.1")),
        _tcp_packet(dst=0xFFFFFFFF),
        _tcp_packet(dst=ip_from_str("239.1.1.1")),
    ],
)
def test_no_icmp_error_where_rfc1122_forbids_one(original: IPv4) -> None:
    assert icmp_error_for(original, icmp.DEST_UNREACHABLE, icmp.HOST_UNREACHABLE, ROUTER_IP) is None


def test_icmp_error_about_a_ping_is_allowed() -> None:
    ping = _ping().payload
    assert isinstance(ping, IPv4)
    assert icmp_error_for(ping, icmp.TIME_EXCEEDED, 0, ROUTER_IP) is not None
