"""Executing flow actions on frame bytes, for every datapath that does it in Python.

The fake, the userspace path and the eBPF backend's packet-out all apply actions here,
so a rewrite means the same bytes everywhere, and the same as the kernel program: MACs
overwritten in place, the TTL decremented with the IPv4 header checksum fixed, outputs
taking the frame as rewritten so far, a TTL that any decrement would take to 0 handing
the packet as it arrived to the agent before anything is sent (it answers with ICMP time
exceeded), and a decrement of a frame that is not IPv4 dropping it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from tessera.datapath.base import (
    Action,
    DecTtl,
    Drop,
    Output,
    OutputTunnel,
    SetEthDst,
    SetEthSrc,
    ToUserspace,
)

_ETH_TYPE_IPV4 = 0x0800
_ETH_TYPE_VLAN = 0x8100
_H = struct.Struct("!H")


@dataclass
class Execution:
    """What running a flow's actions on one packet produced."""

    outputs: list[tuple[Output | OutputTunnel, bytes]] = field(default_factory=list)
    to_userspace: bool = False  # stop: the agent must see this packet
    dropped: bool = False


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
        elif isinstance(action, Output | OutputTunnel):
            result.outputs.append((action, bytes(data)))
        elif isinstance(action, Drop):
            result.dropped = True
            return result
        elif isinstance(action, ToUserspace):
            result.to_userspace = True
            return result
    if not result.outputs:
        result.dropped = True
    return result
