"""The reply a new conversation will get, guessed from its first packet.

When the first packet of a conversation between two ports of this host is simulated, its
reply is about to miss too, a few microseconds later: the agent would be woken again,
with cold caches, for the second half of the same round trip. Simulating the reply right
away, while everything is warm, and installing its flow before the first packet goes back
to the kernel, halves what a new same-host conversation costs (see docs/agent.md).

Only packets that open a conversation are guessed at — an ICMP echo request, a TCP SYN, a
UDP datagram — and the reply is the frame a host answers with: addresses and ports
swapped, an echo reply for an echo request, SYN+ACK for a SYN, a fresh TTL of 64 (the
default of Linux, Windows uses 128: a wrong guess only means the reply misses as it
would have anyway). The frame is only ever simulated, never sent, so its checksums are
left as they are.
"""

from __future__ import annotations

import struct
from typing import Final

from tessera.packet.ethernet import ETH_TYPE_IPV4
from tessera.packet.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP

REPLY_TTL: Final = 64
ICMP_ECHO_REQUEST: Final = 8
ICMP_ECHO_REPLY: Final = 0
TCP_SYN: Final = 0x02
TCP_ACK: Final = 0x10
_TCP_FLAGS_MASK: Final = 0x17  # FIN SYN RST ACK: a plain SYN has only SYN of these

_H: Final = struct.Struct("!H")


def reply_frame(frame: bytes) -> bytes | None:
    """The frame the receiver of `frame` (as delivered to it) would send back, or None
    when `frame` does not open a conversation: not untagged IPv4, a fragment, or neither
    an echo request, a SYN nor UDP."""
    if len(frame) < 34 or _H.unpack_from(frame, 12)[0] != ETH_TYPE_IPV4:
        return None
    vihl = frame[14]
    hlen = (vihl & 0x0F) << 2
    l4 = 14 + hlen
    if vihl >> 4 != 4 or hlen < 20 or _H.unpack_from(frame, 20)[0] & 0x3FFF:
        return None  # not IPv4, or a fragment (more fragments or an offset)
    proto = frame[23]
    out = bytearray(frame)
    if proto == PROTO_ICMP:
        if len(frame) < l4 + 8 or frame[l4] != ICMP_ECHO_REQUEST or frame[l4 + 1] != 0:
            return None
        out[l4] = ICMP_ECHO_REPLY
    elif proto == PROTO_TCP:
        if len(frame) < l4 + 20 or frame[l4 + 13] & _TCP_FLAGS_MASK != TCP_SYN:
            return None
        out[l4 + 13] = frame[l4 + 13] | TCP_ACK
        out[l4 : l4 + 4] = frame[l4 + 2 : l4 + 4] + frame[l4 : l4 + 2]
    elif proto == PROTO_UDP:
        if len(frame) < l4 + 8:
            return None
        out[l4 : l4 + 4] = frame[l4 + 2 : l4 + 4] + frame[l4 : l4 + 2]
    else:
        return None
    out[0:6], out[6:12] = frame[6:12], frame[0:6]
    out[26:30], out[30:34] = frame[30:34], frame[26:30]
    out[22] = REPLY_TTL
    return bytes(out)
