"""Every list of the model is bounded, and the largest valid object of each kind stays
well below the store's 512 KiB cap (issue 13, item 3).

Run as a script to print the table of docs/api.md ("Limits"):
    .venv/bin/python tests/unit/model/test_model_limits.py
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any, get_args, get_origin

import pytest
from annotated_types import MaxLen
from pydantic import BaseModel, ValidationError

from tessera.model import (
    KINDS,
    Bridge,
    Chain,
    Conditions,
    DhcpHost,
    DhcpSubnet,
    HealthMonitor,
    Host,
    IpAddrGroup,
    LoadBalancer,
    Mirror,
    NatTarget,
    NeutronFloatingIp,
    NeutronNetwork,
    NeutronOwners,
    NeutronPort,
    NeutronRouter,
    NeutronSecurityGroup,
    NeutronSecurityGroupRule,
    NeutronSubnet,
    Opt121Route,
    Pool,
    PoolMember,
    Port,
    PortGroup,
    Route,
    Router,
    Rule,
    StoredObject,
    TunnelZone,
    TunnelZoneHost,
    Vip,
)
from tessera.model import limits as L
from tessera.model.neutron_owners import MAX_NEUTRON_OWNERS

STORE_CAP = 512 * 1024
# "Well below" the cap: the largest object of any kind must leave most of it unused.
BUDGET = STORE_CAP * 2 // 5

NESTED: tuple[type[BaseModel], ...] = (Conditions, NatTarget, Opt121Route, DhcpHost, TunnelZoneHost)


def _is_list(annotation: Any) -> bool:
    if get_origin(annotation) in (list, tuple):
        return True
    return any(_is_list(a) for a in get_args(annotation))


@pytest.mark.parametrize("cls", [*KINDS.values(), *NESTED], ids=lambda c: c.__name__)
def test_every_list_field_declares_a_limit(cls: type[BaseModel]) -> None:
    for name, info in cls.model_fields.items():
        if _is_list(info.annotation):
            assert any(isinstance(m, MaxLen) for m in info.metadata), f"{cls.__name__}.{name}"


def _ids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1)) for i in range(n)]


def _addrs(n: int, first: int = 0x0A000000) -> list[str]:
    return [str(ipaddress.IPv4Address(a)) for a in range(first + 1, first + 1 + n)]


ANY_ID = _ids(1)[0]
SUBNET = {"bridge_id": ANY_ID, "subnet_prefix": "10.0.0.0", "subnet_length": 8}
DEFAULT_ROUTE = {
    "destination_prefix": "0.0.0.0",
    "destination_length": 0,
    "gateway_addr": "10.0.0.1",
}


def _zone_hosts(n: int) -> list[dict[str, str]]:
    return [{"host_id": i, "ip_address": "223.255.255.255"} for i in _ids(n)]


def _leases(n: int) -> list[dict[str, str]]:
    return [
        {"mac_addr": f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", "ip_addr": a}
        for i, a in enumerate(_addrs(n, 0x0A000100))
    ]


OVER: list[tuple[type[BaseModel], str, int, dict[str, Any], Any]] = [
    (Bridge, "inbound_mirror_ids", L.MAX_MIRRORS_PER_DIRECTION, {}, _ids),
    (Router, "outbound_mirror_ids", L.MAX_MIRRORS_PER_DIRECTION, {}, _ids),
    (Port, "inbound_mirror_ids", L.MAX_MIRRORS_PER_DIRECTION, {"device_id": ANY_ID,
                                                               "type": "Bridge"}, _ids),
    (Chain, "rule_ids", L.MAX_RULES_PER_CHAIN, {}, _ids),
    (Rule, "in_ports", L.MAX_PORTS_PER_CONDITION, {"chain_id": ANY_ID, "type": "drop"}, _ids),
    (Rule, "out_ports", L.MAX_PORTS_PER_CONDITION, {"chain_id": ANY_ID, "type": "drop"}, _ids),
    (Rule, "nat_targets", L.MAX_NAT_TARGETS, {"chain_id": ANY_ID, "type": "dnat"},
     lambda n: [{"address_from": "10.0.0.1", "address_to": "10.0.0.1"}] * n),
    (Mirror, "conditions", L.MAX_MIRROR_CONDITIONS, {"to_port_id": ANY_ID}, lambda n: [{}] * n),
    (PortGroup, "port_ids", L.MAX_PORT_GROUP_MEMBERS, {}, _ids),
    (IpAddrGroup, "addrs", L.MAX_IP_ADDR_GROUP_MEMBERS, {}, _addrs),
    (Host, "addresses", L.MAX_HOST_ADDRESSES, {}, _addrs),
    (TunnelZone, "hosts", L.MAX_TUNNEL_ZONE_HOSTS, {}, _zone_hosts),
    (DhcpSubnet, "dns_server_addrs", L.MAX_DNS_SERVERS, SUBNET, _addrs),
    (DhcpSubnet, "opt121_routes", L.MAX_OPT121_ROUTES, SUBNET, lambda n: [DEFAULT_ROUTE] * n),
    (DhcpSubnet, "hosts", L.MAX_DHCP_HOSTS, SUBNET, _leases),
]  # fmt: skip


@pytest.mark.parametrize(
    ("cls", "field", "limit", "base", "items"), OVER, ids=[f"{c.__name__}.{f}" for c, f, *_ in OVER]
)
def test_a_list_at_its_limit_passes_one_more_is_refused_naming_the_limit(
    cls: type[BaseModel], field: str, limit: int, base: dict[str, Any], items: Any
) -> None:
    cls.model_validate({**base, field: items(limit)})
    with pytest.raises(ValidationError) as info:
        cls.model_validate({**base, field: items(limit + 1)})
    (error,) = info.value.errors()
    assert error["loc"] == (field,)
    assert f"at most {limit} items" in error["msg"], error["msg"]


def test_a_copy_cannot_grow_a_list_past_its_limit() -> None:
    """The store adds members through copies (port groups, chains, tunnel zones)."""
    group = PortGroup(port_ids=_ids(L.MAX_PORT_GROUP_MEMBERS))
    with pytest.raises(ValidationError, match=f"at most {L.MAX_PORT_GROUP_MEMBERS} items"):
        group.model_copy(update={"port_ids": [*group.port_ids, str(uuid.uuid4())]})


def test_a_copy_of_independent_fields_checks_just_the_new_values() -> None:
    """`position` (set on every read of a rule) and `alive` are read by no whole-object
    check: a copy changing only them validates the values alone, still refusing bad ones."""
    rule = Rule(chain_id=ANY_ID, type="drop", in_ports=_ids(3))
    assert rule.model_copy(update={"position": 7}).position == 7
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        rule.model_copy(update={"position": -1})
    assert Host().model_copy(update={"alive": True}).alive is True


# -- the largest valid object of each kind ------------------------------------------------

WIDE = "\U0001f600" * 255  # 255 printable characters of 4 UTF-8 bytes each: the longest name
NAME = {"name": WIDE}
OWNED = {"name": WIDE, "tenant_id": WIDE}
NEUTRON = {
    "name": WIDE,
    "description": WIDE,
    "project_id": WIDE,
    "tags": [WIDE] * L.MAX_NEUTRON_TAGS,
    "revision_number": 1 << 31,
    "created_at": "2026-12-04T00:00:00Z",
    "updated_at": "2026-12-04T00:00:00Z",
}
FILTERS = {"inbound_filter_id": _ids(1)[0], "outbound_filter_id": _ids(1)[0]}
MIRRORS = {
    "inbound_mirror_ids": _ids(L.MAX_MIRRORS_PER_DIRECTION),
    "outbound_mirror_ids": _ids(L.MAX_MIRRORS_PER_DIRECTION),
}


def _conditions() -> dict[str, Any]:
    return {
        "in_ports": _ids(L.MAX_PORTS_PER_CONDITION),
        "out_ports": _ids(L.MAX_PORTS_PER_CONDITION),
        "inv_in_ports": True,
        "inv_out_ports": True,
        "port_group": _ids(1)[0],
        "inv_port_group": True,
        "ip_addr_group_src": _ids(1)[0],
        "ip_addr_group_dst": _ids(1)[0],
        "dl_type": 0x0800,
        "inv_dl_type": True,
        "dl_src": "02:00:00:00:00:01",
        "dl_src_mask": "ff:ff:ff:ff:ff:ff",
        "dl_dst": "02:00:00:00:00:02",
        "dl_dst_mask": "ff:ff:ff:ff:ff:ff",
        "inv_dl_src": True,
        "inv_dl_dst": True,
        "nw_src_address": "255.255.255.255",
        "nw_src_length": 32,
        "inv_nw_src": True,
        "nw_dst_address": "255.255.255.255",
        "nw_dst_length": 32,
        "inv_nw_dst": True,
        "nw_proto": 255,
        "inv_nw_proto": True,
        "tp_src": {"start": 10000, "end": 65535},
        "tp_dst": {"start": 10000, "end": 65535},
        "inv_tp_src": True,
        "inv_tp_dst": True,
        "match_forward_flow": True,
        "fragment_policy": "unfragmented",
    }


def largest() -> dict[str, StoredObject]:
    """One object per kind, every field set to its longest valid value."""
    rid = _ids(1)[0]
    nat = {
        "address_from": "255.255.255.254",
        "address_to": "255.255.255.255",
        "port_from": 65534,
        "port_to": 65535,
    }
    route = {
        "destination_prefix": "0.0.0.0",
        "destination_length": 0,
        "gateway_addr": "255.255.255.255",
    }
    hosts = [
        {
            "mac_addr": f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}",
            "ip_addr": a,
            "name": "h" * L.MAX_DHCP_HOSTNAME_LEN,
        }
        for i, a in enumerate(_addrs(L.MAX_DHCP_HOSTS, 0xC0A8_0000 + 99))
    ]
    objects = [
        Bridge(**OWNED, **FILTERS, **MIRRORS),
        Router(**OWNED, **FILTERS, **MIRRORS),
        Port(
            device_id=rid, type="Router", **FILTERS, **MIRRORS, host_id=rid,
            interface_name="x" * 15, tunnel_key=(1 << 23) - 1, port_address="192.168.100.100",
            network_address="192.168.100.100", network_length=24, port_mac="02:7e:55:7f:ff:ff",
        ),
        Route(
            router_id=rid, src_network_addr="255.255.255.255", src_network_length=32,
            dst_network_addr="255.255.255.255", dst_network_length=32, next_hop_port=rid,
            next_hop_gateway="255.255.255.255", weight=65535,
        ),
        Chain(**OWNED, rule_ids=_ids(L.MAX_RULES_PER_CHAIN)),
        Rule(chain_id=rid, type="dnat", position=L.MAX_RULES_PER_CHAIN, **_conditions(),
             nat_targets=[nat] * L.MAX_NAT_TARGETS),
        PortGroup(**OWNED, stateful=True, port_ids=_ids(L.MAX_PORT_GROUP_MEMBERS)),
        IpAddrGroup(**NAME, addrs=_addrs(L.MAX_IP_ADDR_GROUP_MEMBERS, 0xDF00_0000)),
        Host(**NAME, alive=True, addresses=_addrs(L.MAX_HOST_ADDRESSES, 0xDF00_0000)),
        TunnelZone(**NAME, hosts=_zone_hosts(L.MAX_TUNNEL_ZONE_HOSTS)),
        DhcpSubnet(
            bridge_id=rid, subnet_prefix="192.168.0.0", subnet_length=16,
            server_addr="192.168.255.254",
            dns_server_addrs=["255.255.255.255"] * L.MAX_DNS_SERVERS, interface_mtu=65535,
            opt121_routes=[route] * L.MAX_OPT121_ROUTES, hosts=hosts,
        ),
        Mirror(**OWNED, to_port_id=rid, conditions=[_conditions()] * L.MAX_MIRROR_CONDITIONS),
        LoadBalancer(router_id=rid),
        Pool(load_balancer_id=rid, health_monitor_id=rid, status="INACTIVE"),
        PoolMember(pool_id=rid, address="223.255.255.254", protocol_port=65535,
                   weight=L.MAX_MEMBER_WEIGHT, admin_state_up=False, status="INACTIVE"),
        Vip(load_balancer_id=rid, pool_id=rid, address="223.255.255.254", protocol_port=65535,
            session_persistence="SOURCE_IP", admin_state_up=False),
        HealthMonitor(delay=L.MAX_HEALTH_MONITOR_DELAY, timeout=L.MAX_HEALTH_MONITOR_DELAY,
                      max_retries=10, admin_state_up=False, status="INACTIVE"),
        NeutronNetwork(**NEUTRON, bridge_id=rid, router_external=True, mtu=65535),
        NeutronSubnet(
            **NEUTRON, network_id=rid, dhcp_subnet_id=rid, cidr="192.168.0.0/16",
            gateway_ip="192.168.255.254",
            allocation_pools=[{"start": "192.168.0.1", "end": "192.168.255.253"}]
            * L.MAX_ALLOCATION_POOLS,
            dns_nameservers=["255.255.255.255"] * L.MAX_DNS_SERVERS,
            host_routes=[{"destination": "255.255.255.255/32", "nexthop": "255.255.255.255"}]
            * L.MAX_SUBNET_HOST_ROUTES,
        ),
        NeutronPort(
            **NEUTRON, network_id=rid, tessera_port_id=rid, mac_address="02:00:00:00:00:01",
            fixed_ips=[{"subnet_id": rid, "ip_address": "255.255.255.255"}] * L.MAX_FIXED_IPS,
            security_groups=_ids(L.MAX_PORT_SECURITY_GROUPS),
            allowed_address_pairs=[
                {"ip_address": "255.255.255.255/32", "mac_address": "02:00:00:00:00:01"}
            ] * L.MAX_ADDRESS_PAIRS,
            device_owner=WIDE, device_id=WIDE, binding_host_id=WIDE,
        ),
        NeutronRouter(
            **NEUTRON, router_id=rid, inbound_chain_id=rid, outbound_chain_id=rid,
            routes=[{"destination": "255.255.255.255/32", "nexthop": "255.255.255.255",
                     "route_id": rid}] * L.MAX_ROUTER_ROUTES,
            interfaces=[{"port_id": rid, "subnet_id": rid, "router_port_id": rid,
                         "route_id": rid}] * L.MAX_ROUTER_INTERFACES,
            gateway={"network_id": rid, "port_id": rid, "router_port_id": rid,
                     "route_ids": _ids(L.MAX_ROUTER_GATEWAY_ROUTES),
                     "snat_rule_ids": _ids(L.MAX_ROUTER_GATEWAY_RULES)},
        ),
        NeutronFloatingIp(
            **NEUTRON, floating_network_id=rid, floating_port_id=rid,
            floating_ip_address="255.255.255.255", port_id=rid,
            fixed_ip_address="255.255.255.255", router_id=rid,
            rule_ids=_ids(L.MAX_FLOATING_IP_RULES),
        ),
        NeutronSecurityGroup(
            **NEUTRON, ip_addr_group_id=rid, port_group_id=rid, ingress_chain_id=rid,
            egress_chain_id=rid, rule_ids=_ids(L.MAX_SECURITY_GROUP_RULES),
        ),
        NeutronSecurityGroupRule(
            **NEUTRON, security_group_id=rid, rule_id=rid, direction="ingress",
            protocol=WIDE, port_range_min=65535, port_range_max=65535,
            remote_ip_prefix="255.255.255.255/32", remote_group_id=rid,
        ),
        NeutronOwners(
            owners=[{"owner_kind": "x" * 64, "owner_id": rid}] * MAX_NEUTRON_OWNERS,
        ),
    ]  # fmt: skip
    return {type(o).kind: o for o in objects}


def encoded_size(obj: StoredObject) -> int:
    """What the NSDB stores (nsdb/codec.py: the model's JSON, every field)."""
    return len(obj.model_dump_json().encode("utf-8"))


def test_the_largest_object_of_each_kind_stays_well_below_the_store_cap() -> None:
    objects = largest()
    assert set(objects) == set(KINDS), "a kind without its largest object"
    sizes = {kind: encoded_size(obj) for kind, obj in objects.items()}
    over = {kind: size for kind, size in sizes.items() if size > BUDGET}
    assert not over, f"larger than {BUDGET} bytes: {over}"


if __name__ == "__main__":
    print("| kind | largest valid object (bytes, encoded JSON) |\n| --- | ---: |")
    for kind, obj in sorted(largest().items()):
        print(f"| {kind} | {encoded_size(obj):,} |")
