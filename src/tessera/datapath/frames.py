"""Executing flow actions on frame bytes, for every datapath that does it in Python.

The fake, the userspace path and the eBPF backend's packet-out all apply actions here,
so a rewrite means the same bytes everywhere, and the same as the kernel program: MACs
overwritten in place, the TTL decremented with the IPv4 header checksum fixed, NAT
rewrites of addresses and ports with every checksum fixed incrementally by the kernel's
arithmetic (so the bytes agree even where two correct checksums could differ), outputs
taking the frame as rewritten so far, a TTL that any decrement would take to 0 handing
the packet as it arrived to the agent before anything is sent (it answers with ICMP time
exceeded), and a decrement or NAT rewrite of a frame that is not IPv4 dropping it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from tessera.datapath.base import (
    Action,
    CtCommit,
    DecTtl,
    Drop,
    NatAction,
    Output,
    OutputTunnel,
    SetEthDst,
    SetEthSrc,
    SetIpDst,
    SetIpSrc,
    SetTpDst,
    SetTpSrc,
    ToUserspace,
)
from tessera.packet.checksum import ones_complement_sum

_ETH_TYPE_IPV4 = 0x0800
_ETH_TYPE_VLAN = 0x8100
_H = struct.Struct("!H")


@dataclass
class Execution:
    """What running a flow's actions on one packet produced."""

    outputs: list[tuple[Output | OutputTunnel, bytes]] = field(default_factory=list)
    to_userspace: bool = False  # stop: the agent must see this packet
    dropped: bool = False
    commits: list[int] = field(default_factory=list)  # zones of the CtCommit actions run


def ipv4_offset(frame: bytes | bytearray) -> int | None:
    """Offset of the IPv4 header (after at most one 802.1Q tag), None if not IPv4."""
    if len(frame) < 14:
        return None
    (ethertype,) = _H.unpack_from(frame, 12)
    off = 14
    if ethertype == _ETH_TYPE_VLAN:
        if len(frame) < 18:
            return None
        (ethertype,) = _H.unpack_from(frame, 16)
        off = 18
    if ethertype != _ETH_TYPE_IPV4 or len(frame) < off + 20:
        return None
    return off


def tcp_flags(frame: bytes | bytearray) -> int:
    """The flags byte (FIN, SYN, RST, ...) of an IPv4 TCP segment, 0 for anything else:
    what the kernel program ORs into a flow's `FlowStats.tcp_flags`, under its
    conditions (a first or only fragment, the first 14 bytes of the TCP header within
    the IP total length and the frame)."""
    off = ipv4_offset(frame)
    if off is None or frame[off + 9] != _TCP:
        return 0
    ihl = (frame[off] & 0x0F) * 4
    (total,) = _H.unpack_from(frame, off + 2)
    (frag,) = _H.unpack_from(frame, off + 6)
    if frag & 0x1FFF or ihl < 20 or total - ihl < 14 or off + ihl + 14 > len(frame):
        return 0
    return frame[off + ihl + 13]


def csum_replace(csum: int, old: bytes, new: bytes) -> int:
    """`csum` (a checksum field) after the bytes it covers change from `old` to `new`:
    RFC 1624's ~(~HC + ~m + m'), with the kernel's arithmetic (csum_replace4 and
    inet_proto_csum_replace4), so that both give the same bytes."""
    flipped = bytes(b ^ 0xFF for b in old)
    return ~ones_complement_sum((~csum & 0xFFFF).to_bytes(2, "big") + flipped + new) & 0xFFFF


_TCP, _UDP, _ICMP = 6, 17, 1
#: protocol -> (offset of the checksum in the L4 header, the header's minimum length)
_L4_CSUM = {_TCP: (16, 20), _UDP: (6, 8), _ICMP: (2, 8)}
_ECHO_TYPES = (0, 8)  # ICMP echo reply, echo request


def _l4_header(frame: bytearray, off: int) -> tuple[int, int] | None:
    """(protocol, offset) of the transport header NAT may rewrite: TCP, UDP or ICMP in a
    first or only fragment, whole within the IP total length and the frame."""
    ihl = (frame[off] & 0x0F) * 4
    (total,) = _H.unpack_from(frame, off + 2)
    (frag,) = _H.unpack_from(frame, off + 6)
    proto = frame[off + 9]
    if frag & 0x1FFF or ihl < 20 or total < ihl or proto not in _L4_CSUM:
        return None
    l4 = off + ihl
    need = _L4_CSUM[proto][1]
    if total - ihl < need or l4 + need > len(frame):
        return None
    return proto, l4


def _fix_csum(frame: bytearray, csum_at: int, old: bytes, new: bytes, udp: bool) -> None:
    """Update the checksum at `csum_at` for covered bytes changing from `old` to `new`. A
    UDP checksum of 0 means none: it stays 0, and a result of 0 is sent as 0xFFFF (the
    kernel's BPF_F_MARK_MANGLED_0)."""
    (csum,) = _H.unpack_from(frame, csum_at)
    if udp and csum == 0:
        return
    csum = csum_replace(csum, old, new)
    _H.pack_into(frame, csum_at, 0xFFFF if udp and csum == 0 else csum)


def nat(frame: bytearray, action: NatAction) -> bool:
    """Apply a NAT rewrite in place, as the kernel program's nat_rewrite(): False when the
    frame is not IPv4 (the flow is broken and drops it). What is rewritten where is in
    the actions' docstrings (`tessera.datapath.base.SetIpSrc` ...)."""
    off = ipv4_offset(frame)
    if off is None:
        return False
    l4 = _l4_header(frame, off)
    if isinstance(action, SetIpSrc | SetIpDst):
        at = off + (12 if isinstance(action, SetIpSrc) else 16)
        old, new = bytes(frame[at : at + 4]), action.addr.to_bytes(4, "big")
        if l4 is not None and l4[0] != _ICMP:  # the pseudo-header holds the address
            proto, start = l4
            _fix_csum(frame, start + _L4_CSUM[proto][0], old, new, proto == _UDP)
        _fix_csum(frame, off + 10, old, new, False)
        frame[at : at + 4] = new
        return True
    if l4 is None:
        return True
    proto, start = l4
    if proto == _ICMP:
        if not isinstance(action, SetTpSrc) or frame[start] not in _ECHO_TYPES:
            return True
        at = start + 4  # the echo identifier
    else:
        at = start + (0 if isinstance(action, SetTpSrc) else 2)
    old, new = bytes(frame[at : at + 2]), action.port.to_bytes(2, "big")
    _fix_csum(frame, start + _L4_CSUM[proto][0], old, new, proto == _UDP)
    frame[at : at + 2] = new
    return True


def dec_ttl(frame: bytearray, n: int) -> bool:
    """Decrement the TTL in place with an incremental checksum update (RFC 1624).

    False when the frame is not IPv4 or its TTL would reach 0 — the caller hands it to
    the agent, as the kernel program does.
    """
    off = ipv4_offset(frame)
    if off is None:
        return False
    ttl = frame[off + 8]
    if ttl <= n:
        return False
    old_word = (ttl << 8) | frame[off + 9]
    new_word = ((ttl - n) << 8) | frame[off + 9]
    (csum,) = _H.unpack_from(frame, off + 10)
    total = (~csum & 0xFFFF) + (~old_word & 0xFFFF) + new_word
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    frame[off + 8] = ttl - n
    _H.pack_into(frame, off + 10, ~total & 0xFFFF)
    return True


def ttl_verdict(frame: bytes, actions: Sequence[Action]) -> Execution | None:
    """What a flow that decrements the TTL does to a packet it cannot run on, None when
    it may run.

    All or nothing, as the kernel program's check before its first action: when the
    decrements add up to the TTL the packet arrived with, some `DecTtl` would take it to
    zero, and the agent gets the packet untouched before anything is rewritten or sent
    (it answers ICMP time exceeded); a flow that decrements the TTL of a frame without
    one is broken and drops it (the agent would only install the same flow again).
    """
    dec = sum(a.n for a in actions if isinstance(a, DecTtl))
    if not dec:
        return None
    off = ipv4_offset(frame)
    if off is None:
        return Execution(dropped=True)
    if dec >= frame[off + 8]:
        return Execution(to_userspace=True)
    return None


def run_actions(frame: bytes, actions: Sequence[Action]) -> Execution:
    """Apply `actions` in order; each output carries the frame as rewritten so far."""
    refused = ttl_verdict(frame, actions)
    if refused is not None:
        return refused
    result = Execution()
    data = bytearray(frame)
    for action in actions:
        if isinstance(action, SetEthDst):
            data[0:6] = action.mac.to_bytes(6, "big")
        elif isinstance(action, SetEthSrc):
            data[6:12] = action.mac.to_bytes(6, "big")
        elif isinstance(action, DecTtl):
            dec_ttl(data, action.n)  # fits: ttl_verdict checked every decrement
        elif isinstance(action, SetIpSrc | SetIpDst | SetTpSrc | SetTpDst):
            if not nat(data, action):
                result.dropped = True
                return result
        elif isinstance(action, Output | OutputTunnel):
            result.outputs.append((action, bytes(data)))
        elif isinstance(action, Drop):
            result.dropped = True
            return result
        elif isinstance(action, ToUserspace):
            result.to_userspace = True
            return result
        elif isinstance(action, CtCommit):
            result.commits.append(action.zone)
    if not result.outputs:
        result.dropped = True
    return result
