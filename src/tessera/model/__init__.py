"""The topology model: every object of the REST contract, validated, frozen.

The model knows nothing of storage or packets; `KINDS` maps each NSDB type name to its
class so that storage and the API can handle objects generically.
"""

from tessera.model.base import Ref, StoredObject
from tessera.model.devices import Bridge, Device, Port, PortType, Router
from tessera.model.dhcp import DhcpHost, DhcpSubnet, Opt121Route
from tessera.model.groups import IpAddrGroup, PortGroup
from tessera.model.hosts import Host, TunnelZone, TunnelZoneHost
from tessera.model.load_balancers import HealthMonitor, LoadBalancer, Pool, PoolMember, Vip
from tessera.model.mirrors import Mirror
from tessera.model.neutron import (
    NeutronFloatingIp,
    NeutronNetwork,
    NeutronPort,
    NeutronRouter,
    NeutronSecurityGroup,
    NeutronSecurityGroupRule,
    NeutronSubnet,
)
from tessera.model.neutron_owners import NeutronOwners
from tessera.model.routing import Route, RouteType
from tessera.model.rules import Chain, Conditions, NatTarget, Rule, RuleType
from tessera.model.types import PortRange, new_id

KINDS: dict[str, type[StoredObject]] = {
    cls.kind: cls
    for cls in (
        Bridge,
        Router,
        Port,
        Route,
        Chain,
        Rule,
        PortGroup,
        IpAddrGroup,
        Host,
        TunnelZone,
        DhcpSubnet,
        Mirror,
        LoadBalancer,
        Pool,
        PoolMember,
        Vip,
        HealthMonitor,
        NeutronNetwork,
        NeutronSubnet,
        NeutronPort,
        NeutronRouter,
        NeutronFloatingIp,
        NeutronSecurityGroup,
        NeutronSecurityGroupRule,
        NeutronOwners,
    )
}
# The kinds whose ids are unique across each other (every kind but the twins, which
# share their twin's id: see `StoredObject.twin_of`).
ID_KINDS: tuple[str, ...] = tuple(k for k, cls in KINDS.items() if cls.twin_of is None)

__all__ = [
    "ID_KINDS",
    "KINDS",
    "Bridge",
    "Chain",
    "Conditions",
    "Device",
    "DhcpHost",
    "DhcpSubnet",
    "HealthMonitor",
    "Host",
    "IpAddrGroup",
    "LoadBalancer",
    "Mirror",
    "NeutronNetwork",
    "NeutronOwners",
    "NeutronPort",
    "NeutronRouter",
    "NeutronFloatingIp",
    "NeutronSecurityGroup",
    "NeutronSecurityGroupRule",
    "NeutronSubnet",
    "NatTarget",
    "Opt121Route",
    "Pool",
    "PoolMember",
    "Port",
    "PortGroup",
    "PortRange",
    "PortType",
    "Ref",
    "Route",
    "RouteType",
    "Router",
    "Rule",
    "RuleType",
    "StoredObject",
    "TunnelZone",
    "TunnelZoneHost",
    "Vip",
    "new_id",
]
