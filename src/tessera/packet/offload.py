"""Finishing checksums that the sender left to a NIC which does not exist.

A veth peer transmits TCP/UDP with CHECKSUM_PARTIAL: the field holds only the
pseudo-header sum and AF_PACKET reports TP_STATUS_CSUMNOTREADY. The kernel path fixes
that itself, but a frame the agent forwards from userspace must be completed first, or
ping works while every TCP connection silently fails.
"""

from __future__ import annotations

import struct

from tessera.packet.checksum import internet_checksum, pseudo_header
from tessera.packet.errors import PacketError

_ETH_TYPE_IPV4 = 0x0800
_ETH_TYPE_VLAN = 0x8100
_IP = struct.Struct("!BxHxxHxBxxII")
# proto -> offset of the checksum field inside the L4 header, and minimum header length.
_CSUM_FIELD = {6: (16, 20), 17: (6, 8), 1: (2, 8)}


def complete_l4_checksum(frame: bytes) -> bytes:
    """`frame` with a correct TCP, UDP or ICMP checksum over its IPv4 payload.

    Frames that are not IPv4, carry another protocol or are fragments (whose checksum
    covers a datagram we do not have) come back unchanged; a malformed IPv4 header or a
    truncated L4 header raises PacketError.
    """
    n = len(frame)
    if n < 14:
        raise PacketError(f"Ethernet frame of {n} bytes is shorter than its header")
    ip_start = 14
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    if ethertype == _ETH_TYPE_VLAN:
        if n < 18:
            raise PacketError("802.1Q tag is truncated")
        (ethertype,) = struct.unpack_from("!H", frame, 16)
        ip_start = 18
    if ethertype != _ETH_TYPE_IPV4:
        return frame
    if n < ip_start + 20:
        raise PacketError("IPv4 header is truncated")
    vihl, total, frag, proto, src, dst = _IP.unpack_from(frame, ip_start)
    hlen = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or hlen < 20 or total < hlen or ip_start + total > n:
        raise PacketError("IPv4 header is malformed or the packet is truncated")
    if frag & 0x3FFF or proto not in _CSUM_FIELD:
        return frame
    field_at, min_len = _CSUM_FIELD[proto]
    l4_start = ip_start + hlen
    end = ip_start + total
    if end - l4_start < min_len:
        raise PacketError(f"L4 header of protocol {proto} is truncated")
    segment = bytearray(frame[l4_start:end])
    segment[field_at : field_at + 2] = b"\x00\x00"
    if proto == 1:
        csum = internet_checksum(bytes(segment))
    else:
        csum = internet_checksum(pseudo_header(src, dst, proto, len(segment)) + segment)
        if proto == 17 and csum == 0:
            csum = 0xFFFF
    at = l4_start + field_at
    return frame[:at] + csum.to_bytes(2, "big") + frame[at + 2 :]
