"""Routes of a virtual router."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from tessera.model.base import Ref, StoredObject
from tessera.model.types import IPv4Addr, PrefixLen, Uuid

RouteType = Literal["Normal", "BlackHole", "Reject"]


class Route(StoredObject):
    """A route: longest destination prefix wins, then source prefix, then lowest weight."""

    kind: ClassVar[str] = "routes"
    refs: ClassVar[tuple[Ref, ...]] = (
        Ref("router_id", ("routers",), "cascade"),
        Ref("next_hop_port", ("ports",), "cascade"),
    )
    read_only: ClassVar[tuple[str, ...]] = ("id", "router_id")

    router_id: Uuid
    src_network_addr: IPv4Addr = "0.0.0.0"
    src_network_length: PrefixLen = 0
    dst_network_addr: IPv4Addr
    dst_network_length: PrefixLen
    type: RouteType = "Normal"
    next_hop_port: Uuid | None = None
    next_hop_gateway: IPv4Addr | None = None
    weight: int = Field(default=100, ge=0, le=65535)

    @model_validator(mode="after")
    def _next_hop(self) -> Route:
        if self.type == "Normal" and self.next_hop_port is None:
            raise ValueError("a Normal route needs next_hop_port")
        if self.next_hop_gateway == "0.0.0.0":
            # MidoNet clients send 0.0.0.0 for "on link".
            object.__setattr__(self, "next_hop_gateway", None)
        return self
