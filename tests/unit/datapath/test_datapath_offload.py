"""Segmentation of GSO frames, checksum completion and VXLAN framing (no kernel)."""

from __future__ import annotations

import struct

from support.frames import tcp, udp
from tessera.datapath.segment import prepare
from tessera.datapath.vxlan import decap, encap
from tessera.packet import Ethernet, IPv4, Tcp, Udp
from tessera.packet.offload import complete_l4_checksum


def _partial(frame: bytes) -> bytes:
    """The frame as a veth hands it over: L4 checksum field not final."""
    ip_off = 14
    ihl = (frame[ip_off] & 0x0F) * 4
    proto = frame[ip_off + 9]
    at = ip_off + ihl + (16 if proto == 6 else 6)
    return frame[:at] + b"\x12\x34" + frame[at + 2 :]


def test_a_partial_checksum_is_completed() -> None:
    good = tcp(b"payload")
    assert prepare(_partial(good), True, 1500) == [good]
    good_udp = udp(payload=b"abc")
    assert prepare(_partial(good_udp), True, 1500) == [good_udp]


def test_a_frame_with_its_checksum_done_is_left_alone() -> None:
    frame = tcp(b"abc")
    assert prepare(frame, False, 1500) == [frame]


def test_a_gso_frame_is_cut_into_valid_mss_segments() -> None:
    payload = bytes(range(256)) * 40  # 10240 bytes
    big = _partial(tcp(payload, seq=5000, flags=0x18 | 0x01))  # PSH|ACK|FIN
    pieces = prepare(big, True, 1500)
    assert len(pieces) == 8  # ceil(10240 / 1460)
    data = b""
    seq = 5000
    for i, piece in enumerate(pieces):
        eth = Ethernet.parse(piece)
        ip = eth.payload
        assert isinstance(ip, IPv4) and isinstance(ip.payload, Tcp)
        assert len(piece) - 14 <= 1500
        segment = ip.payload
        assert segment.seq == seq
        last = i == len(pieces) - 1
        assert bool(segment.flags & 0x01) == last and bool(segment.flags & 0x08) == last
        # build() recomputes both checksums: equal bytes mean they were right.
        assert piece == eth.build()
        seq += len(segment.payload)
        data += segment.payload
    assert data == payload


def test_vxlan_framing_round_trips_and_refuses_garbage() -> None:
    frame = udp()
    assert decap(encap(4242, frame)) == (4242, frame)
    assert decap(struct.pack("!II", 0, 1 << 8) + frame) is None  # I flag missing
    assert decap(b"short") is None


def test_complete_checksum_agrees_with_the_packet_builder() -> None:
    frame = Ethernet(1, 2, 0x0800, IPv4(3, 4, 17, Udp(5, 6, b"hello"))).build()
    assert complete_l4_checksum(_partial(frame)) == frame
