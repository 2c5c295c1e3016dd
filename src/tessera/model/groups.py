"""Port groups and IP address groups: sets named by rule conditions."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tessera.model.base import Ref, StoredObject
from tessera.model.limits import MAX_IP_ADDR_GROUP_MEMBERS, MAX_PORT_GROUP_MEMBERS
from tessera.model.text import Name
from tessera.model.types import IPv4Addr, Uuid


class PortGroup(StoredObject):
    """A set of ports; a `stateful` group shares connection state among its members."""

    kind: ClassVar[str] = "port_groups"
    refs: ClassVar[tuple[Ref, ...]] = (Ref("port_ids", ("ports",), "remove", many=True),)
    read_only: ClassVar[tuple[str, ...]] = ("id", "port_ids")

    name: Name = ""
    tenant_id: Name | None = None
    stateful: bool = False
    port_ids: list[Uuid] = Field(default_factory=list, max_length=MAX_PORT_GROUP_MEMBERS)


class IpAddrGroup(StoredObject):
    """A set of addresses, matched by a rule's `ip_addr_group_src`/`ip_addr_group_dst`."""

    kind: ClassVar[str] = "ip_addr_groups"
    read_only: ClassVar[tuple[str, ...]] = ("id", "addrs")

    name: Name = ""
    addrs: list[IPv4Addr] = Field(default_factory=list, max_length=MAX_IP_ADDR_GROUP_MEMBERS)
