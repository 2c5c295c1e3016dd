"""TCP segments: enough header to match, rewrite and reply (no stream reassembly)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from tessera.packet.checksum import l4_checksum
from tessera.packet.errors import PacketError

PROTO = 6

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

HEADER_LEN = 20
_HDR = struct.Struct("!HHIIHHHH")


@dataclass(frozen=True, slots=True)
class Tcp:
    """A TCP segment.

    `flags` is the whole 12-bit field after the data offset (reserved bits and NS
    included) so that any header round-trips. `checksum` is the parsed value; `build()`
    recomputes it, except inside a first IP fragment where only the whole datagram could
    be summed and the original value is kept.
    """

    src_port: int
    dst_port: int
    seq: int = 0
    ack: int = 0
    flags: int = 0
    window: int = 65535
    urgent: int = 0
    options: bytes = b""
    payload: bytes = b""
    checksum: int = field(default=0, compare=False)

    @classmethod
    def parse(cls, data: bytes) -> Tcp:
        n = len(data)
        if n < HEADER_LEN:
            raise PacketError(f"TCP segment of {n} bytes is shorter than its header")
        sport, dport, seq, ack, off_flags, window, csum, urgent = _HDR.unpack_from(data)
        hlen = (off_flags >> 12) * 4
        if hlen < HEADER_LEN or hlen > n:
            raise PacketError(f"TCP data offset {hlen} is invalid for a {n}-byte segment")
        return cls(
            sport,
            dport,
            seq,
            ack,
            off_flags & 0x0FFF,
            window,
            urgent,
            data[HEADER_LEN:hlen],
            data[hlen:],
            csum,
        )

    def build(self, src_ip: int, dst_ip: int, *, fragment: bool = False) -> bytes:
        olen = len(self.options)
        if olen % 4 or olen > 40:
            raise PacketError(f"TCP options must be a multiple of 4 bytes, at most 40: {olen}")
        if not 0 <= self.flags <= 0x0FFF:
            raise PacketError(f"TCP flags {self.flags!r} do not fit 12 bits")
        off_flags = ((HEADER_LEN + olen) // 4) << 12 | self.flags
        csum = self.checksum if fragment else 0
        try:
            header = _HDR.pack(
                self.src_port, self.dst_port, self.seq, self.ack, off_flags, self.window, csum,
                self.urgent,
            )  # fmt: skip
        except struct.error as exc:
            raise PacketError(f"cannot build TCP header: {exc}") from None
        segment = header + self.options + self.payload
        if fragment:
            return segment
        csum = l4_checksum(src_ip, dst_ip, PROTO, segment)
        return segment[:16] + csum.to_bytes(2, "big") + segment[18:]
