"""What every resource module needs: the store, id parsing, building objects."""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Request
from pydantic import BaseModel

from tessera.model import StoredObject
from tessera.model.types import IPV4_PATTERN, MAC_PATTERN, UUID_PATTERN
from tessera.nsdb.codec import describe
from tessera.nsdb.errors import IntegrityError, NotFound
from tessera.nsdb.store import TopologyStore, normal_id

T = TypeVar("T", bound=StoredObject)


def _store(request: Request) -> TopologyStore:
    store: TopologyStore = request.app.state.store
    return store


Store = Annotated[TopologyStore, Depends(_store)]


def id_param(what: str) -> Any:
    """A path id: declared a UUID, although the server answers 404 (not 422) for any
    other value, as for an id that names nothing."""
    return Path(
        description=f"the {what}'s id (a UUID)",
        json_schema_extra={"format": "uuid", "pattern": UUID_PATTERN},
    )


BridgeId = Annotated[str, id_param("bridge")]
RouterId = Annotated[str, id_param("router")]
PortId = Annotated[str, id_param("port")]
RouteId = Annotated[str, id_param("route")]
ChainId = Annotated[str, id_param("chain")]
RuleId = Annotated[str, id_param("rule")]
PortGroupId = Annotated[str, id_param("port group")]
IpAddrGroupId = Annotated[str, id_param("IP address group")]
HostId = Annotated[str, id_param("host")]
TunnelZoneId = Annotated[str, id_param("tunnel zone")]
SubnetKey = Annotated[
    str,
    Path(
        description="the DHCP subnet as `{prefix}_{len}`",
        examples=["10.0.0.0_24"],
        json_schema_extra={"pattern": IPV4_PATTERN.removesuffix("$") + "_(3[0-2]|[12]?[0-9])$"},
    ),
]
MacParam = Annotated[
    str,
    Path(
        description="the host's MAC address",
        examples=["02:00:00:00:00:01"],
        json_schema_extra={"pattern": MAC_PATTERN},
    ),
]
AddrParam = Annotated[
    str,
    Path(
        description="an IPv4 address of the group",
        examples=["10.0.0.1"],
        json_schema_extra={"format": "ipv4", "pattern": IPV4_PATTERN},
    ),
]


_UUID = re.compile(UUID_PATTERN)


def oid(kind: str, value: str) -> str:
    """An id from the path in canonical form; 404 if it is not a UUID as the schema
    declares it (8-4-4-4-12 hex digits: no braces, no `urn:uuid:`, no bare 32 digits),
    so that a path the schema calls invalid never reaches an object."""
    if not _UUID.fullmatch(value):
        raise NotFound(f"{describe(kind, value)} does not exist")
    return normal_id(kind, value)


def build(cls: type[T], body: BaseModel, **from_path: str) -> T:
    """The object a create body describes, its parent taken from the path. A body that
    names a different parent is refused rather than silently overridden."""
    data = body.model_dump(exclude_unset=True)
    for field, value in from_path.items():
        sent = data.get(field)
        if sent is not None and sent != value:
            raise IntegrityError(f"{field}: {sent!r} does not match the path, which says {value!r}")
        data[field] = value
    if data.get("id") is None:
        data.pop("id", None)
    return cls.model_validate(data)


def sent(body: BaseModel) -> dict[str, Any]:
    """The fields an update body really carried (PUT semantics are the store's)."""
    return body.model_dump(exclude_unset=True)
