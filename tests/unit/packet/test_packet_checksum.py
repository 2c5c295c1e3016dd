"""Checksums against a plain word-by-word implementation of RFC 1071."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.packet import (
    ETH_TYPE_IPV4,
    Ethernet,
    Icmp,
    IPv4,
    PacketError,
    Tcp,
    Udp,
    complete_l4_checksum,
    internet_checksum,
    l4_checksum,
)


def reference_checksum(data: bytes) -> int:
    """RFC 1071 §4.1, transcribed: sum 16-bit words, fold carries, complement."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def reference_l4(src: int, dst: int, proto: int, segment: bytes) -> int:
    return reference_checksum(struct.pack("!IIBBH", src, dst, 0, proto, len(segment)) + segment)


def test_rfc1071_example() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (one's complement).
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == ~0xDDF2 & 0xFFFF


def test_all_zero_and_all_ones() -> None:
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(bytes(10)) == 0xFFFF
    assert internet_checksum(b"\xff\xff") == 0
    assert internet_checksum(b"\xff\xff\xff\xff") == 0


@given(st.binary(max_size=1600))
def test_internet_checksum_matches_reference(data: bytes) -> None:
    assert internet_checksum(data) == reference_checksum(data)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=300))
def test_l4_checksum_matches_reference(src: int, dst: int, segment: bytes) -> None:
    assert l4_checksum(src, dst, 6, segment) == reference_l4(src, dst, 6, segment)


@given(st.binary(max_size=100), st.integers(0, 2**32 - 1))
def test_built_headers_verify(payload: bytes, src: int) -> None:
    dst = 0x0A000002
    for l4 in (Tcp(1, 2, payload=payload), Udp(3, 4, payload), Icmp(8, 0, 1, 2, payload)):
        proto = {Tcp: 6, Udp: 17, Icmp: 1}[type(l4)]
        raw = IPv4(src, dst, proto, l4).build()
        assert reference_checksum(raw[:20]) == 0
        if proto == 1:
            assert reference_checksum(raw[20:]) == 0
        else:
            assert reference_l4(src, dst, proto, raw[20:]) == 0


def test_udp_never_sends_a_zero_checksum() -> None:
    # Find a payload whose checksum computes to 0: UDP must send 0xFFFF instead.
    src, dst = 0x0A000001, 0x0A000002
    header = struct.pack("!HHHH", 1, 2, 10, 0)
    partial = reference_l4(src, dst, 17, header + b"\x00\x00")
    payload = partial.to_bytes(2, "big")  # makes the one's-complement sum 0xFFFF
    assert reference_l4(src, dst, 17, header + payload) == 0
    raw = Udp(1, 2, payload).build(src, dst)
    assert raw[6:8] == b"\xff\xff"


def _frame(l4: Tcp | Udp | Icmp, proto: int, vlan: int | None = None) -> bytes:
    ip = IPv4(0xC0A80001, 0xC0A80002, proto, l4)
    return Ethernet(2, 1, ETH_TYPE_IPV4, ip, vlan).build()


@pytest.mark.parametrize("vlan", [None, 7])
@pytest.mark.parametrize(
    ("l4", "proto", "field"),
    [(Tcp(1000, 80, payload=b"GET /"), 6, 16), (Udp(53, 53, b"q" * 33), 17, 6),
     (Icmp(8, 0, 1, 1, b"ping"), 1, 2)],
)  # fmt: skip
def test_complete_l4_checksum_fixes_partial_checksums(
    l4: Tcp | Udp | Icmp, proto: int, field: int, vlan: int | None
) -> None:
    good = _frame(l4, proto, vlan)
    at = (18 if vlan else 14) + 20 + field
    # What a veth hands over with CHECKSUM_PARTIAL: the pseudo-header sum, not complemented.
    partial = good[:at] + b"\x12\x34" + good[at + 2 :]
    assert complete_l4_checksum(partial) == good
    assert complete_l4_checksum(good) == good


def test_complete_l4_checksum_leaves_other_frames_alone() -> None:
    arp_like = Ethernet(2, 1, 0x0806, b"x" * 28).build()
    assert complete_l4_checksum(arp_like) == arp_like
    fragment = Ethernet(2, 1, ETH_TYPE_IPV4, IPv4(1, 2, 6, b"abcd", frag_offset=5)).build()
    assert complete_l4_checksum(fragment) == fragment


def test_complete_l4_checksum_keeps_ethernet_padding() -> None:
    good = _frame(Udp(1, 2, b"a"), 17)
    padded = good + bytes(60 - len(good))
    assert complete_l4_checksum(padded) == padded


@pytest.mark.parametrize("cut", [10, 16, 30, 36])
def test_complete_l4_checksum_refuses_truncated_frames(cut: int) -> None:
    frame = _frame(Tcp(1000, 80), 6)
    with pytest.raises(PacketError):
        complete_l4_checksum(frame[:cut])
