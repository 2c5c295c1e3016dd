"""Ethernet II frames with at most one 802.1Q tag: the unit every VM port sends.

A second tag (QinQ) or an unknown EtherType leaves the payload as raw bytes, so such
frames can still be matched on their L2 fields and dropped or forwarded by a bridge.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tessera.packet.arp import Arp
from tessera.packet.errors import PacketError
from tessera.packet.ipv4 import IPv4

ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_TYPE_VLAN = 0x8100
ETH_TYPE_IPV6 = 0x86DD

HEADER_LEN = 14
_HDR = struct.Struct("!6s6sH")
_TAG = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class Ethernet:
    """A frame; `vlan_id` None means untagged (a tag with VID 0 is priority-tagged).

    The tag's DEI bit is not kept: nothing in a virtual network sets or reads it.
    """

    dst: int
    src: int
    ethertype: int
    payload: Arp | IPv4 | bytes = b""
    vlan_id: int | None = None
    vlan_pcp: int = 0

    @classmethod
    def parse(cls, data: bytes) -> Ethernet:
        n = len(data)
        if n < HEADER_LEN:
            raise PacketError(f"Ethernet frame of {n} bytes is shorter than its header")
        dst, src, ethertype = _HDR.unpack_from(data)
        offset = HEADER_LEN
        vlan_id: int | None = None
        pcp = 0
        if ethertype == ETH_TYPE_VLAN:
            if n < HEADER_LEN + 4:
                raise PacketError("802.1Q tag is truncated")
            tci, ethertype = _TAG.unpack_from(data, HEADER_LEN)
            vlan_id = tci & 0x0FFF
            pcp = tci >> 13
            offset += 4
        body = data[offset:]
        payload: Arp | IPv4 | bytes
        if ethertype == ETH_TYPE_IPV4:
            payload = IPv4.parse(body)
        elif ethertype == ETH_TYPE_ARP:
            payload = Arp.parse(body)
        else:
            payload = body
        return cls(
            int.from_bytes(dst, "big"), int.from_bytes(src, "big"), ethertype, payload, vlan_id, pcp
        )

    def build(self) -> bytes:
        payload = self.payload
        if isinstance(payload, IPv4):
            if self.ethertype != ETH_TYPE_IPV4:
                raise PacketError(f"EtherType {self.ethertype:#x} does not match an IPv4 payload")
            body = payload.build()
        elif isinstance(payload, Arp):
            if self.ethertype != ETH_TYPE_ARP:
                raise PacketError(f"EtherType {self.ethertype:#x} does not match an ARP payload")
            body = payload.build()
        else:
            body = bytes(payload)
        try:
            header = _HDR.pack(
                self.dst.to_bytes(6, "big"),
                self.src.to_bytes(6, "big"),
                ETH_TYPE_VLAN if self.vlan_id is not None else self.ethertype,
            )
            if self.vlan_id is not None:
                if not 0 <= self.vlan_id <= 0x0FFF or not 0 <= self.vlan_pcp <= 7:
                    raise PacketError(f"VLAN {self.vlan_id}/PCP {self.vlan_pcp} out of range")
                header += _TAG.pack(self.vlan_pcp << 13 | self.vlan_id, self.ethertype)
            elif self.vlan_pcp:
                raise PacketError("a priority (PCP) needs an 802.1Q tag")
        except (struct.error, OverflowError) as exc:
            raise PacketError(f"cannot build Ethernet header: {exc}") from None
        return header + body
