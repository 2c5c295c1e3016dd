"""UDP datagrams; DHCP ports carry a parsed `Dhcp` message, anything else raw bytes."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from tessera.packet.checksum import l4_checksum
from tessera.packet.dhcp import CLIENT_PORT, SERVER_PORT, Dhcp
from tessera.packet.errors import PacketError

PROTO = 17
HEADER_LEN = 8
_HDR = struct.Struct("!HHHH")
_DHCP_PORTS = (SERVER_PORT, CLIENT_PORT)


def is_dhcp(src_port: int, dst_port: int) -> bool:
    """Client 68->67, server 67->68, relay 67->67: both ends on a DHCP port."""
    return src_port in _DHCP_PORTS and dst_port in _DHCP_PORTS


@dataclass(frozen=True, slots=True)
class Udp:
    """A UDP datagram.

    `checksum` and `length` are what was on the wire. `build()` recomputes both, except
    inside a first IP fragment: there the datagram is incomplete, so the original values
    are the only correct ones (a `length` of 0 then means "this fragment's length").
    """

    src_port: int
    dst_port: int
    payload: Dhcp | bytes = b""
    checksum: int = field(default=0, compare=False)
    length: int = field(default=0, compare=False)

    @classmethod
    def parse(cls, data: bytes, *, fragment: bool = False) -> Udp:
        """`fragment`: `data` is the start of a fragmented datagram (length not checked)."""
        n = len(data)
        if n < HEADER_LEN:
            raise PacketError(f"UDP datagram of {n} bytes is shorter than its header")
        sport, dport, length, csum = _HDR.unpack_from(data)
        if fragment:
            return cls(sport, dport, data[HEADER_LEN:], csum, length)
        if length < HEADER_LEN or length > n:
            raise PacketError(f"UDP length {length} is invalid for {n} bytes of data")
        body = data[HEADER_LEN:length]
        payload: Dhcp | bytes = Dhcp.parse(body) if is_dhcp(sport, dport) else body
        return cls(sport, dport, payload, csum, length)

    def build(self, src_ip: int, dst_ip: int, *, fragment: bool = False) -> bytes:
        if isinstance(self.payload, Dhcp):
            if fragment or not is_dhcp(self.src_port, self.dst_port):
                raise PacketError("a DHCP payload needs DHCP ports and an unfragmented packet")
            body = self.payload.build()
        else:
            body = self.payload
        length = HEADER_LEN + len(body)
        if fragment:
            try:
                return _HDR.pack(
                    self.src_port, self.dst_port, self.length or length, self.checksum
                ) + bytes(body)
            except struct.error as exc:
                raise PacketError(f"cannot build UDP header: {exc}") from None
        try:
            header = _HDR.pack(self.src_port, self.dst_port, length, 0)
        except struct.error as exc:
            raise PacketError(f"cannot build UDP header: {exc}") from None
        csum = l4_checksum(src_ip, dst_ip, PROTO, header + body) or 0xFFFF
        return header[:6] + csum.to_bytes(2, "big") + bytes(body)
