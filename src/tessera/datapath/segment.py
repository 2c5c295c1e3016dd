"""TCP segmentation and checksum completion for frames forwarded from userspace.

A VM's veth hands the host GSO "super-frames" (up to 64 KiB of TCP payload in one
buffer) with a checksum the NIC was supposed to finish. The kernel splits and sums them
at transmit time; a frame written from userspace through AF_PACKET gets neither, so the
userspace datapath does both before sending, exactly as a NIC's TSO would: same headers,
consecutive sequence numbers, FIN/PSH only on the last segment, CWR only on the first,
consecutive IP ids.
"""

from __future__ import annotations

import struct

from tessera.datapath.frames import ipv4_offset
from tessera.packet.checksum import internet_checksum, pseudo_header
from tessera.packet.offload import complete_l4_checksum

_PROTO_TCP = 6
_FIN, _PSH, _CWR = 0x01, 0x08, 0x80


def prepare(frame: bytes, csum_not_ready: bool, mtu: int) -> list[bytes]:
    """The wire frames to send for `frame` on a link of `mtu` (IP bytes per packet).

    An oversized TCP frame is segmented (each segment with a full checksum); otherwise a
    frame whose checksum is left to the NIC gets it completed. An oversized frame of
    another protocol comes back unchanged: the send will fail and the packet is lost, as
    on a real link of that MTU.
    """
    off = ipv4_offset(frame)
    if off is not None:
        (total,) = struct.unpack_from("!H", frame, off + 2)
        if total > mtu and frame[off + 9] == _PROTO_TCP:
            return segment_tcp(frame, off, mtu)
    if csum_not_ready:
        return [complete_l4_checksum(frame)]
    return [frame]


def segment_tcp(frame: bytes, ip_off: int, mtu: int) -> list[bytes]:
    ihl = (frame[ip_off] & 0x0F) * 4
    (total,) = struct.unpack_from("!H", frame, ip_off + 2)
    (frag,) = struct.unpack_from("!H", frame, ip_off + 6)
    if frag & 0x3FFF:
        return [frame]  # a fragment: its checksum covers a datagram we do not have
    tcp_off = ip_off + ihl
    thl = (frame[tcp_off + 12] >> 4) * 4
    data_off = tcp_off + thl
    end = ip_off + total
    mss = mtu - ihl - thl
    if mss <= 0 or end > len(frame):
        return [frame]
    l2 = frame[:ip_off]
    ip_hdr = bytearray(frame[ip_off:tcp_off])
    tcp_hdr = bytearray(frame[tcp_off:data_off])
    (ident,) = struct.unpack_from("!H", ip_hdr, 4)
    (seq,) = struct.unpack_from("!I", tcp_hdr, 4)
    flags = tcp_hdr[13]
    src, dst = frame[ip_off + 12 : ip_off + 16], frame[ip_off + 16 : ip_off + 20]
    src_ip, dst_ip = int.from_bytes(src, "big"), int.from_bytes(dst, "big")
    out: list[bytes] = []
    pos = data_off
    i = 0
    while pos < end or i == 0:
        chunk = frame[pos : min(pos + mss, end)]
        last = pos + mss >= end
        ip = bytearray(ip_hdr)
        struct.pack_into("!H", ip, 2, ihl + thl + len(chunk))
        struct.pack_into("!H", ip, 4, (ident + i) & 0xFFFF)
        struct.pack_into("!H", ip, 10, 0)
        struct.pack_into("!H", ip, 10, internet_checksum(bytes(ip)))
        tcp = bytearray(tcp_hdr)
        struct.pack_into("!I", tcp, 4, (seq + pos - data_off) & 0xFFFFFFFF)
        f = flags
        if not last:
            f &= ~(_FIN | _PSH)
        if i:
            f &= ~_CWR
        tcp[13] = f
        struct.pack_into("!H", tcp, 16, 0)
        segment = bytes(tcp) + chunk
        csum = internet_checksum(pseudo_header(src_ip, dst_ip, _PROTO_TCP, len(segment)) + segment)
        struct.pack_into("!H", tcp, 16, csum)
        out.append(l2 + bytes(ip) + bytes(tcp) + chunk)
        pos += mss
        i += 1
    return out
