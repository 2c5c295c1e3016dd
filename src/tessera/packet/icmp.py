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
