"""Load balancers (MidoNet's L4 load balancing): a router's load balancer holds VIPs,
the addresses clients connect to, and pools of backend members the VIPs spread their
connections over; a health monitor, named by pools, probes the members.

The object graph, and what each deletion takes with it (see docs/load-balancer.md):
router ← load balancer ← pool ← member, load balancer ← VIP → pool, pool → health
monitor (nullified when the monitor goes). `status` fields are the server's: never
taken from a client, written by the health-monitor service through the store.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, ValidationInfo, model_validator

from tessera.model.base import Ref, StoredObject
from tessera.model.limits import MAX_HEALTH_MONITOR_DELAY, MAX_MEMBER_WEIGHT
from tessera.model.text import is_stored
from tessera.model.types import IPv4Addr, Uuid, rule_error

LbStatus = Literal["ACTIVE", "INACTIVE"]
"""`ACTIVE`: in service. A member is `INACTIVE` while its health monitor finds it
down; a pool or monitor is `INACTIVE` when the health-monitor service says so."""

LbProtocol = Literal["TCP"]
LbMethod = Literal["ROUND_ROBIN"]
SessionPersistence = Literal["SOURCE_IP"]
HealthMonitorType = Literal["TCP"]

L4Port = Annotated[int, Field(ge=1, le=65535)]

_UNUSABLE = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "an unspecified ('this network') address"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "a loopback address"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "a multicast address"),
    (ipaddress.IPv4Network("255.255.255.255/32"), "the broadcast address"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "a reserved (class E) address"),
)


def check_usable_unicast(value: str, info: ValidationInfo) -> str:
    """A VIP or member address must be one a host can own and a TCP connection can go
    to or come from. (A rule the schema cannot state: a 400, not a 422.)"""
    if is_stored(info):
        return value
    addr = ipaddress.IPv4Address(value)
    for net, what in _UNUSABLE:
        if addr in net:
            raise rule_error(f"{value} is {what}; a usable unicast IPv4 address is needed")
    return value


UnicastAddr = Annotated[IPv4Addr, AfterValidator(check_usable_unicast)]


class LoadBalancer(StoredObject):
    """The load balancer of one router (at most one per router): packets the router
    receives for one of its VIPs are sent to a member of the VIP's pool."""

    kind: ClassVar[str] = "load_balancers"
    refs: ClassVar[tuple[Ref, ...]] = (Ref("router_id", ("routers",), "cascade"),)

    router_id: Uuid
    admin_state_up: bool = True


class HealthMonitor(StoredObject):
    """Probes every member of the pools naming it: a TCP connect each `delay` seconds,
    given up after `timeout` seconds; `max_retries` failures in a row mark the member
    INACTIVE, one success marks it ACTIVE again."""

    kind: ClassVar[str] = "health_monitors"
    read_only: ClassVar[tuple[str, ...]] = ("id", "status")
    independent_fields: ClassVar[frozenset[str]] = frozenset({"status"})

    type: HealthMonitorType = "TCP"
    delay: int = Field(default=5, ge=1, le=MAX_HEALTH_MONITOR_DELAY)
    timeout: int = Field(default=3, ge=1, le=MAX_HEALTH_MONITOR_DELAY)
    max_retries: int = Field(default=3, ge=1, le=10)
    admin_state_up: bool = True
    status: LbStatus = "ACTIVE"

    @model_validator(mode="after")
    def _timeout_within_delay(self) -> HealthMonitor:
        if self.timeout > self.delay:
            raise ValueError(
                f"timeout {self.timeout} is longer than delay {self.delay}: a probe must "
                "end before the next one starts"
            )
        return self


class Pool(StoredObject):
    """Backend members a VIP spreads connections over, round robin by weight."""

    kind: ClassVar[str] = "pools"
    refs: ClassVar[tuple[Ref, ...]] = (
        Ref("load_balancer_id", ("load_balancers",), "cascade"),
        Ref("health_monitor_id", ("health_monitors",), "nullify"),
    )
    read_only: ClassVar[tuple[str, ...]] = ("id", "status")
    independent_fields: ClassVar[frozenset[str]] = frozenset({"status"})

    load_balancer_id: Uuid
    health_monitor_id: Uuid | None = None
    protocol: LbProtocol = "TCP"
    lb_method: LbMethod = "ROUND_ROBIN"
    admin_state_up: bool = True
    status: LbStatus = "ACTIVE"


class PoolMember(StoredObject):
    """One backend of a pool: an address and TCP port behind the router."""

    kind: ClassVar[str] = "pool_members"
    refs: ClassVar[tuple[Ref, ...]] = (Ref("pool_id", ("pools",), "cascade"),)
    read_only: ClassVar[tuple[str, ...]] = ("id", "status")
    independent_fields: ClassVar[frozenset[str]] = frozenset({"status"})

    pool_id: Uuid
    address: UnicastAddr
    protocol_port: L4Port
    weight: int = Field(default=1, ge=1, le=MAX_MEMBER_WEIGHT)
    admin_state_up: bool = True
    status: LbStatus = "ACTIVE"


class Vip(StoredObject):
    """An address and TCP port of the load balancer's router that clients connect to;
    its connections go to members of `pool_id`, a pool of the same load balancer.
    `SOURCE_IP` session persistence sends a client's connections to one member."""

    kind: ClassVar[str] = "vips"
    refs: ClassVar[tuple[Ref, ...]] = (
        Ref("load_balancer_id", ("load_balancers",), "cascade"),
        Ref("pool_id", ("pools",), "cascade"),
    )

    load_balancer_id: Uuid
    pool_id: Uuid
    address: UnicastAddr
    protocol_port: L4Port
    session_persistence: SessionPersistence | None = None
    admin_state_up: bool = True
