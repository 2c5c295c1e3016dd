"""Neutron v2.0 objects as the NSDB stores them, each linked to its tessera twin.

The Neutron API (`tessera.neutron`) writes one of these together with the tessera
topology it stands for, in one NSDB transaction. A network and a port share their id
with their twin (bridge, bridge port), as MidoNet's C3PO translation did: a Neutron
port id is a tessera port id, so anything that binds tessera ports (`tessera lab vm
add --port`) takes Neutron port ids unchanged. The twin's id is also kept in a field of
its own (`bridge_id`, `tessera_port_id`, `dhcp_subnet_id`) so that the generic
referential integrity (`Ref`, cascade) removes the Neutron object when its twin is
deleted through the tessera API: neither side can outlive the other.

Neutron's attribute names with a colon (`router:external`, `binding:host_id`) are
stored under Python names (`router_external`, `binding_host_id`); the API renames them.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from tessera.model import limits as L
from tessera.model.base import Ref, StoredObject
from tessera.model.text import Name
from tessera.model.types import IPv4Addr, MacAddr, TesseraModel, Uuid

# Neutron's limits: names, descriptions, project ids and tags up to 255 characters,
# printable (tessera's `Name`); every list bounded (model/limits.py).
Tags = Annotated[list[Name], Field(max_length=L.MAX_NEUTRON_TAGS)]


class AllocationPool(TesseraModel):
    start: IPv4Addr
    end: IPv4Addr


class HostRoute(TesseraModel):
    destination: str  # a CIDR, normalised by the API
    nexthop: IPv4Addr


class FixedIp(TesseraModel):
    subnet_id: Uuid
    ip_address: IPv4Addr


class AddressPair(TesseraModel):
    ip_address: str  # an address or a CIDR, as Neutron allows
    mac_address: MacAddr


class NeutronObject(StoredObject):
    """What every Neutron resource carries (project, name, tags, revision, times)."""

    name: Name = ""
    description: Name = ""
    project_id: Name = ""
    tags: Tags = Field(default_factory=list)
    revision_number: int = 0
    created_at: str = ""
    updated_at: str = ""


class NeutronNetwork(NeutronObject):
    """A Neutron network; its twin is the bridge with the same id (`bridge_id`)."""

    kind: ClassVar[str] = "neutron_networks"
    twin_of: ClassVar[str | None] = "bridges"
    refs: ClassVar[tuple[Ref, ...]] = (Ref("bridge_id", ("bridges",), "cascade"),)
    read_only: ClassVar[tuple[str, ...]] = ("id", "bridge_id")

    bridge_id: Uuid
    admin_state_up: bool = True
    shared: bool = False
    router_external: bool = False
    port_security_enabled: bool = True  # the default of its ports
    mtu: int = Field(default=1450, ge=68, le=65535)


class NeutronSubnet(NeutronObject):
    """A Neutron IPv4 subnet; its twin is the DHCP subnet `dhcp_subnet_id` of the
    network's bridge (whose `enabled` is `enable_dhcp`)."""

    kind: ClassVar[str] = "neutron_subnets"
    refs: ClassVar[tuple[Ref, ...]] = (
        Ref("network_id", ("neutron_networks",), "cascade"),
        Ref("dhcp_subnet_id", ("dhcp_subnets",), "cascade"),
    )
    read_only: ClassVar[tuple[str, ...]] = ("id", "network_id", "dhcp_subnet_id")

    network_id: Uuid
    dhcp_subnet_id: Uuid
    cidr: str
    ip_version: int = 4
    gateway_ip: IPv4Addr | None = None
    allocation_pools: list[AllocationPool] = Field(
        default_factory=list, max_length=L.MAX_ALLOCATION_POOLS
    )
    dns_nameservers: list[IPv4Addr] = Field(default_factory=list, max_length=L.MAX_DNS_SERVERS)
    host_routes: list[HostRoute] = Field(default_factory=list, max_length=L.MAX_SUBNET_HOST_ROUTES)
    enable_dhcp: bool = True


class NeutronPort(NeutronObject):
    """A Neutron port; its twin is the bridge port with the same id (`tessera_port_id`),
    bound to `binding_host_id`'s host when that names a registered host."""

    kind: ClassVar[str] = "neutron_ports"
    twin_of: ClassVar[str | None] = "ports"
    refs: ClassVar[tuple[Ref, ...]] = (
        Ref("network_id", ("neutron_networks",), "cascade"),
        Ref("tessera_port_id", ("ports",), "cascade"),
    )
    read_only: ClassVar[tuple[str, ...]] = ("id", "network_id", "tessera_port_id")

    network_id: Uuid
    tessera_port_id: Uuid
    admin_state_up: bool = True
    mac_address: MacAddr
    fixed_ips: list[FixedIp] = Field(default_factory=list, max_length=L.MAX_FIXED_IPS)
    # Security group ids as given: the security group translation (port groups and
    # conntrack chains) is built on them later; they are not checked yet.
    security_groups: list[Uuid] = Field(default_factory=list, max_length=L.MAX_PORT_SECURITY_GROUPS)
    allowed_address_pairs: list[AddressPair] = Field(
        default_factory=list, max_length=L.MAX_ADDRESS_PAIRS
    )
    port_security_enabled: bool = True
    device_owner: Name = ""
    device_id: Name = ""
    binding_host_id: Name = ""


class RouterInterface(TesseraModel):
    """A subnet a Neutron router connects: the Neutron port (`network:router_interface`)
    whose twin is linked to the tessera router port `router_port_id`, and the route to
    the subnet through it."""

    port_id: Uuid
    subnet_id: Uuid
    router_port_id: Uuid
    route_id: Uuid


class RouterGateway(TesseraModel):
    """A Neutron router's external gateway: the Neutron port on the external network
    (`network:router_gateway`), its tessera router port, the routes made (the external
    subnet, the default route via its gateway) and the SNAT rules (when `enable_snat`)."""

    network_id: Uuid
    port_id: Uuid
    router_port_id: Uuid
    enable_snat: bool = True
    route_ids: list[Uuid] = Field(default_factory=list, max_length=L.MAX_ROUTER_GATEWAY_ROUTES)
    snat_rule_ids: list[Uuid] = Field(default_factory=list, max_length=L.MAX_ROUTER_GATEWAY_RULES)


class StaticRoute(TesseraModel):
    """One of a router's `routes` and the tessera route it became."""

    destination: str  # a CIDR, normalised by the API
    nexthop: IPv4Addr
    route_id: Uuid


class NeutronRouter(NeutronObject):
    """A Neutron router; its twin is the tessera router with the same id, whose inbound
    and outbound filters are the chains `inbound_chain_id` and `outbound_chain_id` (where
    SNAT and floating IP rules go, as MidoNet's C3PO did)."""

    kind: ClassVar[str] = "neutron_routers"
    twin_of: ClassVar[str | None] = "routers"
    refs: ClassVar[tuple[Ref, ...]] = (Ref("router_id", ("routers",), "cascade"),)
    read_only: ClassVar[tuple[str, ...]] = ("id", "router_id")

    router_id: Uuid
    admin_state_up: bool = True
    inbound_chain_id: Uuid
    outbound_chain_id: Uuid
    routes: list[StaticRoute] = Field(default_factory=list, max_length=L.MAX_ROUTER_ROUTES)
    interfaces: list[RouterInterface] = Field(
        default_factory=list, max_length=L.MAX_ROUTER_INTERFACES
    )
    gateway: RouterGateway | None = None


class NeutronFloatingIp(NeutronObject):
    """A Neutron floating IP: an address of the external network, reserved by the
    Neutron port `floating_port_id` (`network:floatingip`); associated with `port_id`'s
    `fixed_ip_address`, it is a static NAT pair on `router_id`'s chains (`rule_ids`:
    dnat inbound, snat outbound, both on the gateway port)."""

    kind: ClassVar[str] = "neutron_floatingips"
    refs: ClassVar[tuple[Ref, ...]] = (
        Ref("floating_network_id", ("neutron_networks",), "cascade"),
        Ref("floating_port_id", ("neutron_ports",), "cascade"),
    )
    read_only: ClassVar[tuple[str, ...]] = ("id", "floating_network_id", "floating_port_id")

    floating_network_id: Uuid
    floating_port_id: Uuid
    floating_ip_address: IPv4Addr
    port_id: Uuid | None = None
    fixed_ip_address: IPv4Addr | None = None
    router_id: Uuid | None = None
    rule_ids: list[Uuid] = Field(default_factory=list, max_length=L.MAX_FLOATING_IP_RULES)


class NeutronSecurityGroup(NeutronObject):
    """A Neutron security group; its tessera form (docs/security-groups.md) is an IP
    address group (its members' addresses), a port group (its members) and two chains
    of `accept` rules, one per direction. Any of them deleted through the tessera API
    takes the group (and its rules) with it."""

    kind: ClassVar[str] = "neutron_security_groups"
    refs: ClassVar[tuple[Ref, ...]] = (
        Ref("ip_addr_group_id", ("ip_addr_groups",), "cascade"),
        Ref("port_group_id", ("port_groups",), "cascade"),
        Ref("ingress_chain_id", ("chains",), "cascade"),
        Ref("egress_chain_id", ("chains",), "cascade"),
    )
    read_only: ClassVar[tuple[str, ...]] = (
        "id", "ip_addr_group_id", "port_group_id", "ingress_chain_id", "egress_chain_id",
    )  # fmt: skip

    ip_addr_group_id: Uuid
    port_group_id: Uuid
    ingress_chain_id: Uuid
    egress_chain_id: Uuid
    stateful: bool = True
    # Its rules' ids, in creation order: shown as `security_group_rules`.
    rule_ids: list[Uuid] = Field(default_factory=list, max_length=L.MAX_SECURITY_GROUP_RULES)


class NeutronSecurityGroupRule(NeutronObject):
    """A Neutron security group rule; its twin is the `accept` rule `rule_id` in the
    group's chain of its direction."""

    kind: ClassVar[str] = "neutron_security_group_rules"
    refs: ClassVar[tuple[Ref, ...]] = (
        Ref("security_group_id", ("neutron_security_groups",), "cascade"),
        Ref("remote_group_id", ("neutron_security_groups",), "cascade"),
        Ref("rule_id", ("rules",), "cascade"),
    )
    read_only: ClassVar[tuple[str, ...]] = ("id", "security_group_id", "rule_id")

    security_group_id: Uuid
    rule_id: Uuid
    direction: Literal["ingress", "egress"]
    ethertype: Literal["IPv4"] = "IPv4"
    protocol: Name | None = None  # as given: a name ("tcp") or a number ("6")
    port_range_min: int | None = Field(default=None, ge=0, le=65535)
    port_range_max: int | None = Field(default=None, ge=0, le=65535)
    remote_ip_prefix: str | None = None  # a CIDR, normalised by the API
    remote_group_id: Uuid | None = None
