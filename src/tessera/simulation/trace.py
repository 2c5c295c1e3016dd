"""`tessera trace` and `POST /traces`: describe a packet, see what the network does.

A `PacketDescription` (ingress port, MACs, IPs, protocol, ports, TTL) becomes real frame
bytes through the packet layer, then goes through the very `simulate` an agent runs,
with the trace on. `trace_packet` returns plain JSON-ready data, which `tessera.cli.trace`
draws (what the API returned: the CLI never simulates itself).

Nothing is written: MACs and ARP entries the packet would teach are listed under
`state_updates`, and packets the network would emit under `emitted`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from tessera.model.types import IPv4Addr, MacAddr, TesseraModel, Uuid, VlanId
from tessera.packet import arp as arp_codes
from tessera.packet.addr import ip_from_str, mac_from_str
from tessera.packet.arp import Arp
from tessera.packet.ethernet import ETH_TYPE_ARP, ETH_TYPE_IPV4, Ethernet
from tessera.packet.icmp import Icmp
from tessera.packet.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, IPv4
from tessera.packet.match import FlowMatch
from tessera.packet.tcp import SYN, Tcp
from tessera.packet.udp import Udp
from tessera.simulation.simulator import simulate
from tessera.simulation.topology import Snapshot

Protocol = Literal["tcp", "udp", "icmp", "arp"]
_PROTO_NUMBERS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "icmp": PROTO_ICMP}
# Ether types whose bare frame (zero payload) would not be a valid packet of that type.
_NEEDS_ADDRESSES = {
    ETH_TYPE_IPV4: "an IPv4 packet (eth_type 2048) is described by src_ip and dst_ip",
    ETH_TYPE_ARP: "an ARP packet (eth_type 2054) is described by protocol 'arp' with "
    "src_ip and dst_ip",
    0x8100: "a VLAN tag (eth_type 33024) is described by vlan_id",
}


class PacketDescription(TesseraModel):
    """A packet entering the virtual network at `port_id`.

    With `protocol` "arp": an ARP request (or reply) from `src_ip` for `dst_ip`. With IP
    addresses: an IPv4 packet, by default an ICMP echo request. Without either: a bare
    Ethernet frame of `eth_type`.
    """

    port_id: Uuid
    src_mac: MacAddr
    dst_mac: MacAddr = "ff:ff:ff:ff:ff:ff"
    vlan_id: VlanId | None = None
    eth_type: int | None = Field(default=None, ge=0x0600, le=0xFFFF)
    src_ip: IPv4Addr | None = None
    dst_ip: IPv4Addr | None = None
    protocol: Protocol | int | None = None
    src_port: int = Field(default=49152, ge=0, le=65535)
    dst_port: int | None = Field(default=None, ge=0, le=65535)
    icmp_type: int = Field(default=8, ge=0, le=255)
    icmp_code: int = Field(default=0, ge=0, le=255)
    arp_op: Literal["request", "reply"] = "request"
    ttl: int = Field(default=64, ge=0, le=255)
    fragment: Literal["none", "first", "later"] = "none"

    @model_validator(mode="after")
    def _consistent(self) -> PacketDescription:
        if isinstance(self.protocol, int) and not 0 <= self.protocol <= 255:
            raise ValueError(f"protocol {self.protocol} is not in 0..255")
        has_ip = self.src_ip is not None or self.dst_ip is not None
        if self.protocol is not None or has_ip:
            if self.src_ip is None or self.dst_ip is None:
                raise ValueError("give both src_ip and dst_ip")
            if self.eth_type is not None:
                raise ValueError("eth_type is for frames without IP addresses")
        if self.protocol in ("tcp", "udp") and self.dst_port is None:
            raise ValueError(f"a {self.protocol} packet needs dst_port")
        if not has_ip and self.eth_type in _NEEDS_ADDRESSES:
            raise ValueError(_NEEDS_ADDRESSES[self.eth_type])
        return self

    def frame(self) -> bytes:
        src, dst = mac_from_str(self.src_mac), mac_from_str(self.dst_mac)
        if self.src_ip is None or self.dst_ip is None:
            eth_type = self.eth_type if self.eth_type is not None else 0x88B5
            return Ethernet(dst, src, eth_type, bytes(46), self.vlan_id).build()
        sip, dip = ip_from_str(self.src_ip), ip_from_str(self.dst_ip)
        if self.protocol == "arp":
            if self.arp_op == "request":
                message = Arp(arp_codes.REQUEST, src, sip, 0, dip)
            else:
                message = Arp(arp_codes.REPLY, src, sip, dst, dip)
            return Ethernet(dst, src, ETH_TYPE_ARP, message, self.vlan_id).build()
        proto = self.protocol if self.protocol is not None else "icmp"
        number = _PROTO_NUMBERS[proto] if isinstance(proto, str) else proto
        l4: Tcp | Udp | Icmp | bytes
        if self.fragment == "later":
            l4 = bytes(8)
        elif number == PROTO_TCP:
            l4 = Tcp(self.src_port, self.dst_port or 0, flags=SYN)
        elif number == PROTO_UDP:
            l4 = Udp(self.src_port, self.dst_port or 0, b"tessera trace")
        elif number == PROTO_ICMP:
            l4 = Icmp(self.icmp_type, self.icmp_code, 1, 1, b"tessera trace")
        else:
            l4 = bytes(8)
        packet = IPv4(
            sip,
            dip,
            number,
            l4,
            ttl=self.ttl,
            more_fragments=self.fragment == "first",
            frag_offset=1 if self.fragment == "later" else 0,
        )
        return Ethernet(dst, src, ETH_TYPE_IPV4, packet, self.vlan_id).build()


def trace_packet(
    snapshot: Snapshot, description: PacketDescription | Mapping[str, Any], now: float
) -> dict[str, Any]:
    """Simulate the described packet with the trace on; JSON-ready.

    Raises pydantic's ValidationError for a bad description, `PacketError` for one whose
    frame does not parse, and `NotYetLoaded` when the ingress port (or anything on the
    path) is not in the snapshot.
    """
    desc = (
        description
        if isinstance(description, PacketDescription)
        else PacketDescription.model_validate(description)
    )
    frame = desc.frame()
    snapshot.port(desc.port_id)  # an unknown ingress port is the caller's error
    match = FlowMatch.from_frame(desc.port_id, frame)
    result = simulate(snapshot, match, frame, now, trace=True)
    return {
        "packet": desc.model_dump(mode="json", exclude_none=True),
        "frame": frame.hex(),
        **result.to_dict(),
    }
