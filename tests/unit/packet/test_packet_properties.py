"""Property tests: round trips, and nothing but PacketError out of hostile bytes."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from support.packet_strategies import arps, dhcps, ethernets, ipv4s
from tessera.packet import (
    Arp,
    Dhcp,
    Ethernet,
    FlowMatch,
    IPv4,
    PacketError,
    Udp,
    complete_l4_checksum,
)

PARSERS: list[Callable[[bytes], object]] = [
    Ethernet.parse,
    IPv4.parse,
    lambda b: IPv4.parse_quoted(b),
    Arp.parse,
    Dhcp.parse,
    lambda b: FlowMatch.from_frame("p", b),
    complete_l4_checksum,
]


def only_packet_errors(data: bytes) -> None:
    for parse in PARSERS:
        try:
            parse(data)
        except PacketError:
            pass


@given(ethernets())
def test_ethernet_round_trip(frame: Ethernet) -> None:
    raw = frame.build()
    parsed = Ethernet.parse(raw)
    assert parsed == frame
    assert parsed.build() == raw


@given(ipv4s())
def test_ipv4_round_trip(packet: IPv4) -> None:
    assert IPv4.parse(packet.build()) == packet


@given(arps)
def test_arp_round_trip(message: Arp) -> None:
    assert Arp.parse(message.build()) == message


@given(dhcps)
def test_dhcp_round_trip(message: Dhcp) -> None:
    raw = message.build()
    assert len(raw) >= 300
    assert Dhcp.parse(raw) == message


@given(ethernets())
def test_flow_match_from_bytes_equals_from_parsed_packet(frame: Ethernet) -> None:
    raw = frame.build()
    assert FlowMatch.from_frame("p", raw) == FlowMatch.from_packet("p", Ethernet.parse(raw))


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_random_bytes_raise_only_packet_error(data: bytes) -> None:
    only_packet_errors(data)


@given(st.sampled_from([1, 6, 17]), st.booleans(), st.binary(max_size=80))
@settings(max_examples=300)
def test_random_l4_bodies_raise_only_packet_error(proto: int, first: bool, body: bytes) -> None:
    only_packet_errors(IPv4(1, 2, proto, body, more_fragments=first).build())


@given(st.binary(max_size=120), st.sampled_from([67, 68]))
@settings(max_examples=300)
def test_random_dhcp_options_raise_only_packet_error(options: bytes, port: int) -> None:
    fixed = Dhcp(op=1, xid=1, chaddr=2).build()[:240]
    body = fixed + options  # a valid BOOTP header followed by random options
    only_packet_errors(Ethernet(1, 2, 0x0800, IPv4(1, 2, 17, Udp(port, 67, body))).build())


@given(ethernets())
@settings(max_examples=40)
def test_every_truncation_raises_only_packet_error(frame: Ethernet) -> None:
    raw = frame.build()
    for end in range(len(raw)):
        only_packet_errors(raw[:end])
        only_packet_errors(raw[14:end])  # headers below Ethernet too


@given(ethernets(), st.data())
def test_corrupted_frames_raise_only_packet_error(frame: Ethernet, data: st.DataObject) -> None:
    raw = bytearray(frame.build())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    only_packet_errors(bytes(raw))
    only_packet_errors(bytes(raw[14:]))
    parsed = None
    try:
        parsed = Ethernet.parse(bytes(raw))
    except PacketError:
        pass
    if parsed is not None:
        # Whatever parses must give the same match either way.
        assert FlowMatch.from_frame("p", bytes(raw)) == FlowMatch.from_packet("p", parsed)
