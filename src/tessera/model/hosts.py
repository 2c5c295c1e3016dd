"""Hypervisor hosts and the tunnel zones that join them."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from tessera.model.base import StoredObject
from tessera.model.limits import MAX_HOST_ADDRESSES, MAX_TUNNEL_ZONE_HOSTS
from tessera.model.text import Name
from tessera.model.types import IPv4Addr, TesseraModel, Uuid


class Host(StoredObject):
    """A hypervisor, registered by its agent. `alive` mirrors the agent's NSDB session."""

    kind: ClassVar[str] = "hosts"
    read_only: ClassVar[tuple[str, ...]] = ("id", "name", "alive", "addresses")
    independent_fields: ClassVar[frozenset[str]] = frozenset({"alive"})

    name: Name = ""
    alive: bool = False
    addresses: list[IPv4Addr] = Field(default_factory=list, max_length=MAX_HOST_ADDRESSES)


class TunnelZoneHost(TesseraModel):
    host_id: Uuid
    ip_address: IPv4Addr


class TunnelZone(StoredObject):
    """Hosts that reach each other through VXLAN over the given underlay addresses."""

    kind: ClassVar[str] = "tunnel_zones"
    read_only: ClassVar[tuple[str, ...]] = ("id", "hosts")

    name: Name = ""
    type: Literal["vxlan"] = "vxlan"
    hosts: list[TunnelZoneHost] = Field(default_factory=list, max_length=MAX_TUNNEL_ZONE_HOSTS)
