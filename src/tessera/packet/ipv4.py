"""IPv4 packets, with options and fragments.

Fragments matter to the flow cache: only the first fragment carries the L4 header, so a
later fragment's payload stays raw bytes and its ports are unknown (as in OVS). A first
fragment's L4 header is parsed when it is complete, but its checksum and UDP length keep
their wire values, because they describe the whole datagram.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from tessera.packet import tcp, udp
from tessera.packet.checksum import internet_checksum
from tessera.packet.errors import PacketError
from tessera.packet.icmp import Icmp
from tessera.packet.tcp import Tcp
from tessera.packet.udp import Udp

PROTO_ICMP = 1
PROTO_TCP = tcp.PROTO
PROTO_UDP = udp.PROTO
PROTO_SCTP = 132  # not parsed; its ports still go into the flow match

HEADER_LEN = 20
MAX_HEADER_LEN = 60
_HDR = struct.Struct("!BBHHHBBHII")
_DF = 0x4000
_MF = 0x2000
_OFFSET = 0x1FFF

L4 = Icmp | Tcp | Udp
_PROTO_OF: dict[type, int] = {Icmp: PROTO_ICMP, Tcp: PROTO_TCP, Udp: PROTO_UDP}


@dataclass(frozen=True, slots=True)
class IPv4:
    """An IPv4 packet; `frag_offset` is in 8-byte units, as on the wire.

    Header length and total length are derived on build; `checksum` is the parsed value
    and is always recomputed by `build()`.
    """

    src: int
    dst: int
    proto: int
    payload: Icmp | Tcp | Udp | bytes = b""
    ttl: int = 64
    tos: int = 0
    ident: int = 0
    dont_fragment: bool = False
    more_fragments: bool = False
    frag_offset: int = 0
    options: bytes = b""
    checksum: int = field(default=0, compare=False)

    @property
    def is_fragment(self) -> bool:
        return self.more_fragments or self.frag_offset != 0

    @classmethod
    def parse(cls, data: bytes) -> IPv4:
        """Parse a packet; bytes past the total length (Ethernet padding) are ignored."""
        header, hlen, total = _parse_header(data)
        if total > len(data):
            raise PacketError(f"IPv4 total length {total} exceeds the {len(data)} bytes given")
        return header._with_payload(_parse_l4(header, data[hlen:total]))

    @classmethod
    def parse_quoted(cls, data: bytes) -> tuple[IPv4, int]:
        """The packet quoted by an ICMP error: (header with raw payload, original total length).

        The quote is the original header plus only its first 8 payload bytes, so the total
        length field is not checked against the data and the payload is left unparsed.
        """
        header, hlen, total = _parse_header(data)
        return header._with_payload(data[hlen:total]), total

    def _with_payload(self, payload: Icmp | Tcp | Udp | bytes) -> IPv4:
        return IPv4(
            self.src, self.dst, self.proto, payload, self.ttl, self.tos, self.ident,
            self.dont_fragment, self.more_fragments, self.frag_offset, self.options,
            self.checksum,
        )  # fmt: skip

    def build(self, *, total_length: int | None = None) -> bytes:
        """Bytes of the packet; `total_length` overrides the length field for quoted headers."""
        olen = len(self.options)
        if olen % 4 or olen > MAX_HEADER_LEN - HEADER_LEN:
            raise PacketError(f"IPv4 options must be a multiple of 4 bytes, at most 40: {olen}")
        body = self._payload_bytes()
        hlen = HEADER_LEN + olen
        total = hlen + len(body) if total_length is None else total_length
        if not 0 <= self.frag_offset <= _OFFSET:
            raise PacketError(f"fragment offset {self.frag_offset!r} does not fit 13 bits")
        flags = (_DF if self.dont_fragment else 0) | (_MF if self.more_fragments else 0)
        try:
            header = _HDR.pack(
                0x40 | hlen // 4, self.tos, total, self.ident, flags | self.frag_offset,
                self.ttl, self.proto, 0, self.src, self.dst,
            ) + self.options  # fmt: skip
        except struct.error as exc:
            raise PacketError(f"cannot build IPv4 header: {exc}") from None
        csum = internet_checksum(header)
        return header[:10] + csum.to_bytes(2, "big") + header[12:] + body

    def _payload_bytes(self) -> bytes:
        payload = self.payload
        if isinstance(payload, bytes | bytearray):
            return bytes(payload)
        if _PROTO_OF.get(type(payload)) != self.proto:
            raise PacketError(
                f"IPv4 protocol {self.proto} does not match a {type(payload).__name__}"
            )
        if self.frag_offset:
            raise PacketError("a non-first fragment cannot carry an L4 header")
        if isinstance(payload, Icmp):
            return payload.build(fragment=self.more_fragments)
        return payload.build(self.src, self.dst, fragment=self.more_fragments)


def _parse_header(data: bytes) -> tuple[IPv4, int, int]:
    """The header (empty payload), its length and the total length field, all validated."""
    n = len(data)
    if n < HEADER_LEN:
        raise PacketError(f"IPv4 packet of {n} bytes is shorter than its header")
    vihl, tos, total, ident, frag, ttl, proto, csum, src, dst = _HDR.unpack_from(data)
    if vihl >> 4 != 4:
        raise PacketError(f"IP version {vihl >> 4} is not 4")
    hlen = (vihl & 0x0F) * 4
    if hlen < HEADER_LEN or hlen > n or total < hlen:
        raise PacketError(f"IPv4 header length {hlen} / total length {total} are inconsistent")
    header = IPv4(
        src, dst, proto, b"", ttl, tos, ident, bool(frag & _DF), bool(frag & _MF),
        frag & _OFFSET, data[HEADER_LEN:hlen], csum,
    )  # fmt: skip
    return header, hlen, total


def _parse_l4(header: IPv4, body: bytes) -> Icmp | Tcp | Udp | bytes:
    """Later fragments keep raw bytes; a first fragment too short for its L4 header too."""
    if header.frag_offset:
        return body
    proto = header.proto
    first = header.more_fragments
    try:
        if proto == PROTO_TCP:
            return Tcp.parse(body)
        if proto == PROTO_UDP:
            return Udp.parse(body, fragment=first)
        if proto == PROTO_ICMP:
            return Icmp.parse(body)
    except PacketError:
        if first:
            return body
        raise
    return body
