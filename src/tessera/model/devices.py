"""Bridges, routers and their ports: the virtual devices packets traverse."""

from __future__ import annotations

import ipaddress
from typing import Annotated, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from tessera.model.base import Ref, StoredObject
from tessera.model.limits import MAX_MIRRORS_PER_DIRECTION
from tessera.model.text import InterfaceName, Name, is_stored
from tessera.model.types import (
    IPv4Addr,
    MacAddr,
    PrefixLen,
    Uuid,
    VlanId,
    network_of,
    rule_error,
)

_FILTER_REFS = (
    Ref("inbound_filter_id", ("chains",), "nullify"),
    Ref("outbound_filter_id", ("chains",), "nullify"),
)
# Tuples, not lists: devices and ports stay hashable (snapshots and caches rely on it);
# JSON shows them as arrays all the same.
MirrorIds = Annotated[tuple[Uuid, ...], Field(max_length=MAX_MIRRORS_PER_DIRECTION)]
# A deleted mirror simply stops being applied: its id leaves every list naming it.
_MIRROR_REFS = (
    Ref("inbound_mirror_ids", ("mirrors",), "remove", many=True),
    Ref("outbound_mirror_ids", ("mirrors",), "remove", many=True),
)


class Device(StoredObject):
    name: Name = ""
    tenant_id: Name | None = None
    admin_state_up: bool = True
    inbound_filter_id: Uuid | None = None
    outbound_filter_id: Uuid | None = None
    inbound_mirror_ids: MirrorIds = ()
    outbound_mirror_ids: MirrorIds = ()


class Bridge(Device):
    """A virtual L2 switch: learns MACs, floods unknown destinations, serves DHCP."""

    kind: ClassVar[str] = "bridges"
    refs: ClassVar[tuple[Ref, ...]] = (*_FILTER_REFS, *_MIRROR_REFS)


class Router(Device):
    """A virtual L3 router: longest-prefix routing, ARP, ICMP errors."""

    kind: ClassVar[str] = "routers"
    refs: ClassVar[tuple[Ref, ...]] = (*_FILTER_REFS, *_MIRROR_REFS)


PortType = Literal["Bridge", "Router"]

# Router port MACs: locally administered unicast, the port's 24-bit tunnel key in the
# last three bytes, hence unique in the cluster without any lookup.
ROUTER_MAC_PREFIX = "02:7e:55"


def router_port_mac(tunnel_key: int) -> str:
    """The MAC a router port gets when created without one. The store assigns it; the
    simulation derives it for a port stored without one (snapshots built in tests)."""
    tail = tunnel_key.to_bytes(3, "big")
    return f"{ROUTER_MAC_PREFIX}:" + ":".join(f"{b:02x}" for b in tail)


class Port(StoredObject):
    """A port of a bridge or a router.

    An *exterior* port is bound to an interface on a host (`host_id`, `interface_name`);
    an *interior* port is linked to another port (`peer_id`). `tunnel_key` is the port's
    cluster-wide number: the VXLAN VNI that carries packets to it across hosts.
    """

    kind: ClassVar[str] = "ports"
    refs: ClassVar[tuple[Ref, ...]] = (
        Ref("device_id", ("bridges", "routers"), "cascade"),
        Ref("peer_id", ("ports",), "nullify"),
        Ref("host_id", ("hosts",), "nullify"),
        *_FILTER_REFS,
        *_MIRROR_REFS,
    )
    read_only: ClassVar[tuple[str, ...]] = (
        "id",
        "device_id",
        "type",
        "peer_id",
        "tunnel_key",
        "host_id",
        "interface_name",
    )

    device_id: Uuid
    type: PortType
    admin_state_up: bool = True
    inbound_filter_id: Uuid | None = None
    outbound_filter_id: Uuid | None = None
    inbound_mirror_ids: MirrorIds = ()
    outbound_mirror_ids: MirrorIds = ()
    host_id: Uuid | None = None
    interface_name: InterfaceName | None = None
    peer_id: Uuid | None = None
    # Below 2^23: the VXLAN VNI's top bit asks the receiving host to commit a connection.
    tunnel_key: int = Field(default=0, ge=0, lt=1 << 23)
    # bridge ports
    vlan_id: VlanId | None = None
    # router ports
    port_address: IPv4Addr | None = None
    network_address: IPv4Addr | None = None
    network_length: PrefixLen | None = None
    port_mac: MacAddr | None = None

    @field_validator("port_mac")
    @classmethod
    def _unicast(cls, mac: str | None, info: ValidationInfo) -> str | None:
        if mac is not None and not is_stored(info):
            check_unicast_mac(mac)
        return mac

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Port:
        if self.type == "Router":
            missing = [
                f
                for f in ("port_address", "network_address", "network_length")
                if getattr(self, f) is None
            ]
            if missing:
                raise ValueError(f"a router port needs {', '.join(missing)}")
            assert self.port_address is not None and self.network_length is not None
            net = network_of(self.port_address, self.network_length)
            if network_of(self.network_address or "0.0.0.0", self.network_length) != net:
                raise ValueError(
                    f"port_address {self.port_address} is not in "
                    f"{self.network_address}/{self.network_length}"
                )
            if self.vlan_id is not None:
                raise ValueError("vlan_id applies to bridge ports only")
            if not is_stored(info):
                _check_router_address(self.port_address, net)
        else:
            extra = [
                f
                for f in ("port_address", "network_address", "network_length", "port_mac")
                if getattr(self, f) is not None
            ]
            if extra:
                raise ValueError(f"{', '.join(extra)} apply to router ports only")
        if self.peer_id is not None and self.host_id is not None:
            raise ValueError("a port is either linked (interior) or bound to a host, not both")
        if (self.host_id is None) != (self.interface_name is None):
            raise ValueError("host_id and interface_name are set together (a binding)")
        return self

    @property
    def is_interior(self) -> bool:
        return self.peer_id is not None

    @property
    def is_exterior(self) -> bool:
        return self.host_id is not None


def check_unicast_mac(mac: str) -> None:
    """A MAC a device answers with or leases to must be unicast and not all zeros: hosts
    never take a multicast or broadcast MAC as a neighbour's, and 00:00:00:00:00:00
    means "unknown". (A field validator: the message gets the field's name.)"""
    if mac == "00:00:00:00:00:00":
        raise rule_error("00:00:00:00:00:00 is not a usable MAC address")
    if int(mac[:2], 16) & 1:
        what = "broadcast" if mac == "ff:ff:ff:ff:ff:ff" else "multicast"
        raise rule_error(f"{mac} is a {what} address; a unicast MAC is needed")


def _check_router_address(port_address: str, net: ipaddress.IPv4Network) -> None:
    """A router port's address must be one a neighbour can send to: a host address of
    its network (not the network or broadcast address, except on /31 and /32 links,
    RFC 3021), never 0.0.0.0 or a multicast address, on a network that is not the whole
    IPv4 space (a /0 port would claim every destination as on-link)."""
    addr = ipaddress.IPv4Address(port_address)
    if net.prefixlen == 0:
        raise ValueError(
            "network_length 0 is not allowed for a router port: a port's network cannot "
            "be the whole IPv4 space (use a route to 0.0.0.0/0 instead)"
        )
    if addr == ipaddress.IPv4Address(0):
        raise ValueError("port_address 0.0.0.0 is not a usable address")
    if addr.is_multicast or addr == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError(f"port_address {addr} is not a unicast address")
    if net.prefixlen <= 30:
        if addr == net.network_address:
            raise ValueError(
                f"port_address {addr} is the network address of {net}; use a host address"
            )
        if addr == net.broadcast_address:
            raise ValueError(
                f"port_address {addr} is the broadcast address of {net}; use a host address"
            )
