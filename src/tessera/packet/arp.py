"""ARP for IPv4 over Ethernet, the only kind a virtual router answers (RFC 826)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tessera.packet.errors import PacketError

REQUEST = 1
REPLY = 2

LENGTH = 28
_HDR = struct.Struct("!HHBBH6sI6sI")
_ETHERNET = 1
_IPV4 = 0x0800


@dataclass(frozen=True, slots=True)
class Arp:
    op: int
    sender_mac: int
    sender_ip: int
    target_mac: int
    target_ip: int

    @classmethod
    def parse(cls, data: bytes) -> Arp:
        """Parse the 28-byte message; trailing Ethernet padding is ignored."""
        if len(data) < LENGTH:
            raise PacketError(f"ARP message of {len(data)} bytes is shorter than {LENGTH}")
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _HDR.unpack_from(data)
        if htype != _ETHERNET or ptype != _IPV4 or hlen != 6 or plen != 4:
            raise PacketError(f"ARP for hardware {htype}/protocol {ptype:#x} is not supported")
        return cls(op, int.from_bytes(sha, "big"), spa, int.from_bytes(tha, "big"), tpa)

    def build(self) -> bytes:
        try:
            return _HDR.pack(
                _ETHERNET, _IPV4, 6, 4, self.op, self.sender_mac.to_bytes(6, "big"),
                self.sender_ip, self.target_mac.to_bytes(6, "big"), self.target_ip,
            )  # fmt: skip
        except (struct.error, OverflowError) as exc:
            raise PacketError(f"cannot build ARP message: {exc}") from None
