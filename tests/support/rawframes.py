"""Frames packed by hand with `struct`, independent of tessera.packet.

For tests whose oracle must not share the code under test: the eBPF program's parser
and rewrites are checked against bytes that tessera.packet did not produce. Everything
else builds frames with `support.frames`.
"""

from __future__ import annotations

import ipaddress
import struct

from tessera.datapath.ebpf.layout import parse_mac

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100


def mac(s: str) -> bytes:
    return parse_mac(s)


def ip4(s: str) -> bytes:
    return ipaddress.IPv4Address(s).packed


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def eth(dst: str, src: str, eth_type: int, payload: bytes, vlan: int | None = None) -> bytes:
    tag = struct.pack("!HH", ETH_P_8021Q, vlan) if vlan is not None else b""
    return mac(dst) + mac(src) + tag + struct.pack("!H", eth_type) + payload


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    ttl: int = 64,
    tos: int = 0,
    frag_off: int = 0,
    ident: int = 0x1234,
) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        tos,
        20 + len(payload),
        ident,
        frag_off,
        ttl,
        proto,
        0,
        ip4(src),
        ip4(dst),
    )
    c = csum(hdr)
    return hdr[:10] + struct.pack("!H", c) + hdr[12:] + payload


def udp(sport: int, dport: int, payload: bytes = b"hello") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp_echo(ident: int = 1, seq: int = 1, payload: bytes = b"ping" * 8, type_: int = 8) -> bytes:
    hdr = struct.pack("!BBHHH", type_, 0, 0, ident, seq) + payload
    return hdr[:2] + struct.pack("!H", csum(hdr)) + hdr[4:]


def arp(op: int, sha: str, spa: str, tha: str, tpa: str) -> bytes:
    return struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, op) + mac(sha) + ip4(spa) + mac(tha) + ip4(tpa)


def ip_header_ok(frame: bytes, l3_off: int = 14) -> bool:
    ihl = (frame[l3_off] & 0x0F) * 4
    return csum(frame[l3_off : l3_off + ihl]) == 0


def untag(frame: bytes) -> tuple[int | None, bytes]:
    """(VID, frame without its outer tag) or (None, frame)."""
    if struct.unpack_from("!H", frame, 12)[0] == ETH_P_8021Q:
        return struct.unpack_from("!H", frame, 14)[0] & 0xFFF, frame[:12] + frame[16:]
    return None, frame
