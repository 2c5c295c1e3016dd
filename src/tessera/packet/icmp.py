"""ICMP messages: echo request/reply and the errors a virtual router generates.

Every ICMP message has an 8-byte header; its last 4 bytes mean different things per type
(identifier + sequence for echo, unused + next-hop MTU for "fragmentation needed"), so
they are kept as two 16-bit halves, `ident` and `seq`, which round-trip any type exactly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from tessera.packet.checksum import internet_checksum
from tessera.packet.errors import PacketError

ECHO_REPLY = 0
DEST_UNREACHABLE = 3
SOURCE_QUENCH = 4
REDIRECT = 5
ECHO_REQUEST = 8
TIME_EXCEEDED = 11
PARAMETER_PROBLEM = 12

# Codes of DEST_UNREACHABLE.
NET_UNREACHABLE = 0
HOST_UNREACHABLE = 1
PROTOCOL_UNREACHABLE = 2
PORT_UNREACHABLE = 3
FRAGMENTATION_NEEDED = 4
NET_PROHIBITED = 9
HOST_PROHIBITED = 10
ADMIN_PROHIBITED = 13

# Codes of TIME_EXCEEDED.
TTL_EXCEEDED = 0
REASSEMBLY_EXCEEDED = 1

ERROR_TYPES = frozenset(
    {DEST_UNREACHABLE, SOURCE_QUENCH, REDIRECT, TIME_EXCEEDED, PARAMETER_PROBLEM}
)

HEADER_LEN = 8
_HDR = struct.Struct("!BBHHH")


@dataclass(frozen=True, slots=True)
class Icmp:
    """One ICMP message; for errors `payload` is the quoted IP header + 8 bytes.

    `checksum` is what was on the wire when parsed; `build()` always recomputes it (except
    inside a first IP fragment, where the message is incomplete and the original is kept).
    """

    type: int
    code: int = 0
    ident: int = 0
    seq: int = 0
    payload: bytes = b""
    checksum: int = field(default=0, compare=False)

    @property
    def is_error(self) -> bool:
        return self.type in ERROR_TYPES

    @property
    def next_hop_mtu(self) -> int:
        """MTU announced by "fragmentation needed" (RFC 1191); it lives in the `seq` half."""
        return self.seq

    @classmethod
    def parse(cls, data: bytes) -> Icmp:
        if len(data) < HEADER_LEN:
            raise PacketError(f"ICMP message of {len(data)} bytes is shorter than its header")
        icmp_type, code, csum, ident, seq = _HDR.unpack_from(data)
        return cls(icmp_type, code, ident, seq, data[HEADER_LEN:], csum)

    def build(self, *, fragment: bool = False) -> bytes:
        try:
            if fragment:
                return _HDR.pack(self.type, self.code, self.checksum, self.ident, self.seq) + (
                    self.payload
                )
            message = _HDR.pack(self.type, self.code, 0, self.ident, self.seq) + self.payload
        except struct.error as exc:
            raise PacketError(f"cannot build ICMP header: {exc}") from None
        csum = internet_checksum(message)
        return message[:2] + csum.to_bytes(2, "big") + message[4:]


# -- the packet an error quotes ----------------------------------------------------------

# Errors whose quote identifies a connection (RFC 792): what conntrack calls RELATED.
QUOTING_TYPES = frozenset({DEST_UNREACHABLE, TIME_EXCEEDED, PARAMETER_PROBLEM})

_PROTO_ICMP, _PROTO_TCP, _PROTO_UDP = 1, 6, 17
_ECHO_TYPES = (ECHO_REPLY, ECHO_REQUEST)
_L4_CSUM = {_PROTO_TCP: 16, _PROTO_UDP: 6, _PROTO_ICMP: 2}


@dataclass(frozen=True, slots=True)
class Quoted:
    """The connection an ICMP error is about: the quoted packet's protocol, addresses and
    ports (both ports are the echo identifier for a quoted ICMP echo, as connection
    tracking keys an echo)."""

    proto: int
    src: int
    dst: int
    sport: int
    dport: int


def parse_quoted(data: bytes) -> Quoted | None:
    """The connection quoted in an error's payload `data` (what follows its 8-byte
    header), or None when it names none: not IPv4, a header cut short, a later fragment
    (no ports), or not TCP, UDP or ICMP echo with the bytes that identify it.

    Never raises: the quote is whatever the error's sender put there.
    """
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    hlen = (data[0] & 0x0F) * 4
    if hlen < 20 or len(data) < hlen + 4:
        return None
    if int.from_bytes(data[6:8], "big") & 0x1FFF:
        return None
    proto = data[9]
    src = int.from_bytes(data[12:16], "big")
    dst = int.from_bytes(data[16:20], "big")
    l4 = hlen
    if proto in (_PROTO_TCP, _PROTO_UDP):
        sport = int.from_bytes(data[l4 : l4 + 2], "big")
        dport = int.from_bytes(data[l4 + 2 : l4 + 4], "big")
        return Quoted(proto, src, dst, sport, dport)
    if proto == _PROTO_ICMP and len(data) >= l4 + 6 and data[l4] in _ECHO_TYPES:
        ident = int.from_bytes(data[l4 + 4 : l4 + 6], "big")
        return Quoted(proto, src, dst, ident, ident)
    return None


def translate_quoted(
    data: bytes,
    *,
    src: int | None = None,
    dst: int | None = None,
    sport: int | None = None,
    dport: int | None = None,
) -> bytes:
    """`data` (a quote `parse_quoted` accepts) with the quoted packet's addresses and
    ports replaced (None: kept), as NAT rewrote the packet the error is about.

    The quoted IP header's checksum is recomputed. The quoted L4 checksum, when the
    quote holds it, is updated incrementally (RFC 1624): it covers a whole datagram the
    quote only begins, so only the change can be applied — what Linux's NAT does too;
    a UDP checksum of 0 ("none") stays 0. For a quoted ICMP echo `sport`/`dport` are
    its identifier (one value: `sport` wins).
    """
    q = parse_quoted(data)
    if q is None:
        raise PacketError("the ICMP error quotes no TCP, UDP or ICMP echo packet")
    hlen = (data[0] & 0x0F) * 4
    out = bytearray(data)
    # Old and new 16-bit words the L4 checksum covers (pseudo-header addresses, ports).
    old_words: list[int] = []
    new_words: list[int] = []

    def put(offset: int, size: int, value: int, *, l4: bool) -> None:
        old = int.from_bytes(out[offset : offset + size], "big")
        if old == value:
            return
        out[offset : offset + size] = value.to_bytes(size, "big")
        if l4:
            for shift in range((size - 2) * 8, -1, -16):
                old_words.append(old >> shift & 0xFFFF)
                new_words.append(value >> shift & 0xFFFF)

    pseudo = q.proto != _PROTO_ICMP  # an ICMP checksum covers no addresses
    if src is not None:
        put(12, 4, src, l4=pseudo)
    if dst is not None:
        put(16, 4, dst, l4=pseudo)
    if q.proto == _PROTO_ICMP:
        ident = sport if sport is not None else dport
        if ident is not None:
            put(hlen + 4, 2, ident, l4=True)
    else:
        if sport is not None:
            put(hlen, 2, sport, l4=True)
        if dport is not None:
            put(hlen + 2, 2, dport, l4=True)
    out[10:12] = b"\x00\x00"
    out[10:12] = internet_checksum(bytes(out[:hlen])).to_bytes(2, "big")
    at = hlen + _L4_CSUM[q.proto]
    if old_words and len(out) >= at + 2:
        csum = int.from_bytes(out[at : at + 2], "big")
        if not (q.proto == _PROTO_UDP and csum == 0):
            csum = _adjust(csum, old_words, new_words)
            if q.proto == _PROTO_UDP and csum == 0:
                csum = 0xFFFF
            out[at : at + 2] = csum.to_bytes(2, "big")
    return bytes(out)


def _adjust(csum: int, old: list[int], new: list[int]) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), summed over every changed word."""
    total = ~csum & 0xFFFF
    for m in old:
        total += ~m & 0xFFFF
    for m in new:
        total += m
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
