"""Request and response bodies that are not topology objects themselves.

Create and update bodies are derived from the model classes, so the REST schema can
never drift from the model: a create body is the whole object with the id, the parent
from the path and the server-owned fields optional (a client may send an object as GET
showed it; null server-owned fields are dropped here, the store ignores or refuses the
rest); an update body is the whole object as GET returns it, with read-only and
fixed-at-creation fields optional (they are ignored, or must be sent unchanged).
Field-level validation (types, ranges, formats) happens here (422); whole-object rules
(a router port's address within its network, a jump rule's target...) run when the API
builds the model object (400).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import Field, create_model, model_validator
from pydantic.fields import FieldInfo

from tessera.api.jsontypes import JsonTyped
from tessera.model import (
    Bridge,
    Chain,
    DhcpHost,
    DhcpSubnet,
    HealthMonitor,
    IpAddrGroup,
    LoadBalancer,
    Mirror,
    Pool,
    PoolMember,
    Port,
    PortGroup,
    Route,
    Router,
    Rule,
    StoredObject,
    TunnelZone,
    Vip,
)
from tessera.model.dhcp import HostName
from tessera.model.text import InterfaceName
from tessera.model.types import IPv4Addr, MacAddr, PrefixLen, TesseraModel, Uuid
from tessera.nsdb.store.integrity import FIXED_FIELDS, PARENT_FIELD, server_owned
from tessera.simulation.trace import PacketDescription


def _annotation(info: FieldInfo) -> Any:
    """The field's type with its constraints and its schema extras (a UUID's pattern...),
    which pydantic keeps on the field rather than in the type."""
    parts = [*info.metadata]
    if info.json_schema_extra is not None:
        parts.append(Field(json_schema_extra=info.json_schema_extra))
    if parts:
        return Annotated[(info.annotation, *parts)]
    return info.annotation


def _optional(info: FieldInfo) -> tuple[Any, Any]:
    return (
        _annotation(info) | None,
        Field(default=None, description=info.description, examples=info.examples),
    )


class Body(TesseraModel, JsonTyped):
    """Base of every request body: JSON types exactly as the schema declares them."""


def _without_nulls(fields: frozenset[str]) -> type[TesseraModel]:
    """A base whose instances leave out `fields` sent as null, as if never sent: the
    object is then built with their defaults (the store fills them in)."""

    class NullsDropped(Body):
        @model_validator(mode="before")
        @classmethod
        def _drop_nulls(cls, data: Any) -> Any:
            if isinstance(data, dict):
                return {k: v for k, v in data.items() if not (k in fields and v is None)}
            return data

    return NullsDropped


def _derive(
    name: str,
    cls: type[StoredObject],
    fields: Iterable[str],
    optional: Iterable[str],
    doc: str,
    overrides: dict[str, tuple[Any, Any]] | None = None,
    base: type[TesseraModel] = Body,
) -> type[TesseraModel]:
    opt = set(optional)
    overrides = overrides or {}
    defs: dict[str, Any] = {}
    for field in fields:
        info = cls.model_fields[field]
        if field in overrides:
            defs[field] = overrides[field]
        elif field in opt:
            defs[field] = _optional(info)
        else:
            defs[field] = (info.annotation, copy.copy(info))
    model: type[TesseraModel] = create_model(name, __base__=base, __doc__=doc, **defs)
    return model


def create_body(
    cls: type[StoredObject],
    name: str | None = None,
    overrides: dict[str, tuple[Any, Any]] | None = None,
) -> type[TesseraModel]:
    owned = server_owned(cls)
    optional = {"id", PARENT_FIELD.get(cls.kind, ""), *owned}
    doc = (
        f"A new {cls.__name__}: `id` is chosen by the server unless given; server-owned "
        "fields may be sent null or empty (ignored)."
    )
    base = _without_nulls(owned)
    fields = cls.model_fields
    return _derive(name or f"{cls.__name__}Create", cls, fields, optional, doc, overrides, base)


def update_body(cls: type[StoredObject], name: str | None = None) -> type[TesseraModel]:
    optional = set(cls.read_only) | FIXED_FIELDS.get(cls.kind, frozenset())
    doc = (
        f"A {cls.__name__} as GET returns it, with the changes: read-only fields are "
        "ignored, fields fixed at creation may only be sent unchanged."
    )
    return _derive(name or f"{cls.__name__}Update", cls, cls.model_fields, optional, doc)


if TYPE_CHECKING:  # to mypy they are models; at run time, derived ones
    BridgeCreate: TypeAlias = TesseraModel
    BridgeUpdate: TypeAlias = TesseraModel
    RouterCreate: TypeAlias = TesseraModel
    RouterUpdate: TypeAlias = TesseraModel
    BridgePortCreate: TypeAlias = TesseraModel
    RouterPortCreate: TypeAlias = TesseraModel
    PortUpdate: TypeAlias = TesseraModel
    RouteCreate: TypeAlias = TesseraModel
    RouteUpdate: TypeAlias = TesseraModel
    ChainCreate: TypeAlias = TesseraModel
    ChainUpdate: TypeAlias = TesseraModel
    RuleCreate: TypeAlias = TesseraModel
    RuleUpdate: TypeAlias = TesseraModel
    DhcpSubnetCreate: TypeAlias = TesseraModel
    DhcpSubnetUpdate: TypeAlias = TesseraModel
    PortGroupCreate: TypeAlias = TesseraModel
    PortGroupUpdate: TypeAlias = TesseraModel
    IpAddrGroupCreate: TypeAlias = TesseraModel
    IpAddrGroupUpdate: TypeAlias = TesseraModel
    TunnelZoneCreate: TypeAlias = TesseraModel
    TunnelZoneUpdate: TypeAlias = TesseraModel
    MirrorCreate: TypeAlias = TesseraModel
    MirrorUpdate: TypeAlias = TesseraModel
    LoadBalancerCreate: TypeAlias = TesseraModel
    LoadBalancerUpdate: TypeAlias = TesseraModel
    PoolCreate: TypeAlias = TesseraModel
    PoolUpdate: TypeAlias = TesseraModel
    PoolMemberCreate: TypeAlias = TesseraModel
    PoolMemberUpdate: TypeAlias = TesseraModel
    VipCreate: TypeAlias = TesseraModel
    VipUpdate: TypeAlias = TesseraModel
    HealthMonitorCreate: TypeAlias = TesseraModel
    HealthMonitorUpdate: TypeAlias = TesseraModel
else:
    BridgeCreate, BridgeUpdate = create_body(Bridge), update_body(Bridge)
    RouterCreate, RouterUpdate = create_body(Router), update_body(Router)
    # Each port body takes the other kind's fields too, so that a port as GET showed it
    # (with those fields null) can be sent back; the model refuses them when set.
    BridgePortCreate = create_body(
        Port, "BridgePortCreate", overrides={"type": (Literal["Bridge"] | None, None)}
    )
    RouterPortCreate = create_body(
        Port,
        "RouterPortCreate",
        overrides={
            "type": (Literal["Router"] | None, None),
            "port_address": (IPv4Addr, ...),
            "network_address": (IPv4Addr, ...),
            "network_length": (PrefixLen, ...),
        },
    )
    PortUpdate = update_body(Port)
    RouteCreate, RouteUpdate = create_body(Route), update_body(Route)
    ChainCreate, ChainUpdate = create_body(Chain), update_body(Chain)
    RuleCreate, RuleUpdate = create_body(Rule), update_body(Rule)
    DhcpSubnetCreate, DhcpSubnetUpdate = create_body(DhcpSubnet), update_body(DhcpSubnet)
    PortGroupCreate, PortGroupUpdate = create_body(PortGroup), update_body(PortGroup)
    IpAddrGroupCreate, IpAddrGroupUpdate = create_body(IpAddrGroup), update_body(IpAddrGroup)
    TunnelZoneCreate, TunnelZoneUpdate = create_body(TunnelZone), update_body(TunnelZone)
    MirrorCreate, MirrorUpdate = create_body(Mirror), update_body(Mirror)
    LoadBalancerCreate, LoadBalancerUpdate = create_body(LoadBalancer), update_body(LoadBalancer)
    PoolCreate, PoolUpdate = create_body(Pool), update_body(Pool)
    PoolMemberCreate, PoolMemberUpdate = create_body(PoolMember), update_body(PoolMember)
    VipCreate, VipUpdate = create_body(Vip), update_body(Vip)
    HealthMonitorCreate = create_body(HealthMonitor)
    HealthMonitorUpdate = update_body(HealthMonitor)


class LinkRequest(Body):
    """The port to link to (both ports must be unbound and unlinked)."""

    peer_id: Uuid


class BindingRequest(Body):
    port_id: Uuid
    interface_name: InterfaceName = Field(examples=["tap0"])


class Binding(TesseraModel):
    """A port bound to an interface of a host."""

    host_id: Uuid
    port_id: Uuid
    interface_name: str


class PortGroupPortRequest(Body):
    port_id: Uuid


class PortGroupPort(TesseraModel):
    port_group_id: Uuid
    port_id: Uuid


class IpAddrRequest(Body):
    addr: IPv4Addr


class IpAddrGroupAddr(TesseraModel):
    ip_addr_group_id: Uuid
    addr: IPv4Addr


class TunnelZoneMember(TesseraModel):
    tunnel_zone_id: Uuid
    host_id: Uuid
    ip_address: IPv4Addr


class DhcpHostUpdate(Body):
    """A DHCP host as GET returns it; `mac_addr` names it and may only be sent unchanged."""

    mac_addr: MacAddr | None = None
    ip_addr: IPv4Addr
    name: HostName = ""


class Health(TesseraModel):
    """200: this server can serve; the NSDB answered a request just now."""

    status: Literal["ok"] = "ok"
    nsdb_connected: bool
    leader: bool = Field(description="whether this server runs the cluster's singleton services")
    leader_id: str | None = Field(description="the server that runs them, if known")


class HealthUnavailable(TesseraModel):
    """503: the NSDB did not answer within the health check's deadline (down, frozen or
    overloaded). An error body like any other (`message`), with the health fields."""

    message: str
    status: Literal["unavailable"] = "unavailable"
    nsdb_connected: Literal[False] = False
    leader: bool = Field(description="whether this server still runs the singleton services")
    leader_id: None = Field(default=None, description="not asked: that needs the NSDB")


class DhcpHostCreate(DhcpHost, Body):
    """A static lease: `mac_addr` names it; `ip_addr` must be in the subnet."""


class TraceRequest(PacketDescription, Body):
    """A packet entering the virtual network at `port_id` (see `PacketDescription`)."""
