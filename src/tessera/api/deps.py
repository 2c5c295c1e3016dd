"""What every resource module needs: the store, id parsing, building objects."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Request
from pydantic import BaseModel

from tessera.model import StoredObject
from tessera.nsdb.errors import IntegrityError
from tessera.nsdb.store import TopologyStore, normal_id

T = TypeVar("T", bound=StoredObject)


def _store(request: Request) -> TopologyStore:
    store: TopologyStore = request.app.state.store
    return store


Store = Annotated[TopologyStore, Depends(_store)]


def _id_param(what: str) -> Any:
    return Path(description=f"the {what}'s id (a UUID)")


BridgeId = Annotated[str, _id_param("bridge")]
RouterId = Annotated[str, _id_param("router")]
PortId = Annotated[str, _id_param("port")]
RouteId = Annotated[str, _id_param("route")]
ChainId = Annotated[str, _id_param("chain")]
RuleId = Annotated[str, _id_param("rule")]
PortGroupId = Annotated[str, _id_param("port group")]
IpAddrGroupId = Annotated[str, _id_param("IP address group")]
HostId = Annotated[str, _id_param("host")]
TunnelZoneId = Annotated[str, _id_param("tunnel zone")]
SubnetKey = Annotated[
    str, Path(description="the DHCP subnet as `{prefix}_{len}`", examples=["10.0.0.0_24"])
]


def oid(kind: str, value: str) -> str:
    """An id from the path in canonical form (404 if it cannot be an id at all)."""
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
