"""Neutron subnets ⇄ tessera DHCP subnets of the network's bridge.

`gateway_ip` → `default_gateway`, `dns_nameservers` → `dns_server_addrs`, `host_routes`
→ option 121 routes, `enable_dhcp` → `enabled`, the network's `mtu` →
`interface_mtu`. The DHCP subnet exists whatever `enable_dhcp` says (disabled, the
bridge does not answer), so that turning DHCP on later is a flag, not a rebuild; the
ports' addresses are its static hosts (see `ports`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from tessera.model import DhcpSubnet, Opt121Route
from tessera.model.neutron import AllocationPool, HostRoute, NeutronPort, NeutronSubnet
from tessera.model.types import new_id
from tessera.neutron import ipam, values, views
from tessera.neutron.errors import bad_request, conflict, not_found
from tessera.neutron.networks import DHCP_OWNER, get_network, now
from tessera.nsdb.base import Nsdb
from tessera.nsdb.store.integrity import cascade_delete, check_refs
from tessera.nsdb.store.objects import dhcp_subnet_id
from tessera.nsdb.store.transaction import Transaction, run

_MUTABLE = (
    "name",
    "description",
    "gateway_ip",
    "allocation_pools",
    "dns_nameservers",
    "host_routes",
    "enable_dhcp",
)
# Accepted at creation with their default (null) value only: what clients send for
# features tessera does not have (subnet pools, IPv6 modes, segments).
_NULL_ONLY = ("subnetpool_id", "ipv6_ra_mode", "ipv6_address_mode", "segment_id")
CREATE_ATTRS = frozenset(
    {
        *_MUTABLE,
        *_NULL_ONLY,
        "network_id",
        "cidr",
        "ip_version",
        "project_id",
        "tenant_id",
        "tags",
        "use_default_subnetpool",
        "service_types",
    }
)
READ_ONLY = frozenset({"id", "network_id", "cidr", "ip_version", "project_id", "tenant_id"})


def get_subnet(tx: Transaction, id: str) -> NeutronSubnet:
    sub = tx.find(NeutronSubnet.kind, id)
    if not isinstance(sub, NeutronSubnet):
        raise not_found("SubnetNotFound", f"Subnet {id} could not be found.")
    return sub


def _pools(value: Any) -> list[AllocationPool]:
    out = []
    for item in values.dict_list("allocation_pools", value):
        if set(item) != {"start", "end"}:
            raise bad_request(
                "Invalid input for allocation_pools. Reason: each needs start and end."
            )
        out.append(
            AllocationPool(
                start=values.ipv4("allocation_pools", item["start"]),
                end=values.ipv4("allocation_pools", item["end"]),
            )
        )
    return out


def _routes(value: Any) -> list[HostRoute]:
    out = []
    for item in values.dict_list("host_routes", value):
        if set(item) != {"destination", "nexthop"}:
            raise bad_request(
                "Invalid input for host_routes. Reason: each needs destination and nexthop."
            )
        dest = values.ipv4_network("host_routes", item["destination"])
        out.append(
            HostRoute(destination=str(dest), nexthop=values.ipv4("host_routes", item["nexthop"]))
        )
    return out


def _mutable(body: dict[str, Any], net: ipaddress.IPv4Network) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "name" in body:
        out["name"] = values.text("name", body["name"])
    if "description" in body:
        out["description"] = values.text("description", body["description"])
    if "gateway_ip" in body:
        gw = body["gateway_ip"]
        out["gateway_ip"] = None if gw is None else values.ipv4("gateway_ip", gw)
        if gw is not None:
            addr = ipaddress.IPv4Address(out["gateway_ip"])
            if addr not in net or addr in (net.network_address, net.broadcast_address):
                raise bad_request(
                    f"Invalid input for operation: Gateway IP {gw} is not a valid host "
                    f"address of subnet {net}.",
                    "InvalidInput",
                )
    if "allocation_pools" in body:
        out["allocation_pools"] = _pools(body["allocation_pools"])
    if "dns_nameservers" in body:
        dns = values.string_list("dns_nameservers", body["dns_nameservers"])
        out["dns_nameservers"] = [values.ipv4("dns_nameservers", d) for d in dns]
        if len(set(out["dns_nameservers"])) != len(dns):
            raise bad_request("Invalid input for dns_nameservers. Reason: duplicate nameserver.")
    if "host_routes" in body:
        out["host_routes"] = _routes(body["host_routes"])
    if "enable_dhcp" in body:
        out["enable_dhcp"] = values.boolean("enable_dhcp", body["enable_dhcp"])
    return out


def _dhcp_fields(sub: NeutronSubnet, mtu: int) -> dict[str, Any]:
    return {
        "default_gateway": sub.gateway_ip,
        "dns_server_addrs": list(sub.dns_nameservers),
        "opt121_routes": [
            Opt121Route(
                destination_prefix=str(ipaddress.IPv4Network(r.destination).network_address),
                destination_length=ipaddress.IPv4Network(r.destination).prefixlen,
                gateway_addr=r.nexthop,
            )
            for r in sub.host_routes
        ],
        "enabled": sub.enable_dhcp,
        "interface_mtu": mtu,
    }


def create(nsdb: Nsdb, body: dict[str, Any], project_header: str | None) -> dict[str, Any]:
    """Create one subnet: one NSDB transaction."""
    return run(nsdb, "creating a subnet", creator(nsdb, body, project_header))


def creator(
    nsdb: Nsdb, body: dict[str, Any], project_header: str | None
) -> Callable[[Transaction], dict[str, Any]]:
    """Check the body and return the write of the new subnet (and its twins) into a
    transaction: bulk creation runs several in one."""
    values.refuse_unknown(body, CREATE_ATTRS)
    for name in _NULL_ONLY:
        if body.get(name) is not None:
            raise bad_request(f"Invalid input for {name}. Reason: not supported by tessera yet.")
    if values.boolean("use_default_subnetpool", body.get("use_default_subnetpool", False)):
        raise bad_request("Invalid input for use_default_subnetpool. Reason: no subnet pools.")
    if values.string_list("service_types", body.get("service_types")):
        raise bad_request("Invalid input for service_types. Reason: not supported yet.")
    if "network_id" not in body:
        raise bad_request("Failed to parse request. Required attribute 'network_id' not specified")
    if "cidr" not in body:
        raise bad_request("Failed to parse request. Required attribute 'cidr' not specified")
    ip_version = values.integer("ip_version", body.get("ip_version", 4), 4, 6)
    if ip_version != 4:
        raise bad_request(
            f"Invalid input for ip_version. Reason: IPv{ip_version} is not supported yet."
        )
    network_id = values.text("network_id", body["network_id"])
    net = values.ipv4_network("cidr", body["cidr"])
    if net.prefixlen > 30:
        raise bad_request(f"Invalid input for cidr. Reason: {net} is too small (at most /30).")
    attrs = _mutable(body, net)
    if "gateway_ip" not in body:
        attrs["gateway_ip"] = str(net.network_address + 1)
    if "allocation_pools" not in attrs or not attrs["allocation_pools"]:
        attrs["allocation_pools"] = ipam.default_pools(net, attrs["gateway_ip"])
    ipam.check_pools(net, attrs["allocation_pools"], attrs["gateway_ip"])
    project = values.project(body, project_header)
    tags = values.string_list("tags", body.get("tags"))
    id = new_id()

    def write(tx: Transaction) -> dict[str, Any]:
        network = get_network(tx, network_id)
        for other in tx.all_of(NeutronSubnet):
            if other.network_id == network.id and ipaddress.IPv4Network(other.cidr).overlaps(net):
                raise bad_request(
                    f"Invalid input for operation: Requested subnet with cidr: {net} for "
                    f"network: {network.id} overlaps with another subnet."
                )
        stamp = now()
        dhcp_id = dhcp_subnet_id(network.bridge_id, str(net.network_address), net.prefixlen)
        sub = NeutronSubnet(
            id=id,
            network_id=network.id,
            dhcp_subnet_id=dhcp_id,
            cidr=str(net),
            project_id=project or network.project_id,
            tags=tags,
            created_at=stamp,
            updated_at=stamp,
            **attrs,
        )
        dhcp = DhcpSubnet(
            id=dhcp_id,
            bridge_id=network.bridge_id,
            subnet_prefix=str(net.network_address),
            subnet_length=net.prefixlen,
            **_dhcp_fields(sub, network.mtu),
        )
        if tx.find(DhcpSubnet.kind, dhcp_id) is not None:
            raise conflict(
                "SubnetInUse", f"Bridge {network.bridge_id} already serves DHCP subnet {net}."
            )
        check_refs(tx, dhcp, None)
        tx.create(dhcp)
        check_refs(tx, sub, None)
        tx.create(sub)
        return views.subnet(sub, dhcp)

    return write


def update(nsdb: Nsdb, id: str, body: dict[str, Any]) -> dict[str, Any]:
    values.refuse_fixed(body, READ_ONLY)
    values.refuse_unknown(body, _MUTABLE)

    def write(tx: Transaction) -> dict[str, Any]:
        old = get_subnet(tx, id)
        net = ipaddress.IPv4Network(old.cidr)
        attrs = _mutable(body, net)
        new = old.model_copy(
            update={**attrs, "updated_at": now(), "revision_number": old.revision_number + 1}
        )
        ipam.check_pools(net, new.allocation_pools, new.gateway_ip)
        if "allocation_pools" in attrs and not new.allocation_pools:
            new = new.model_copy(
                update={"allocation_pools": ipam.default_pools(net, new.gateway_ip)}
            )
        network = get_network(tx, old.network_id)
        dhcp = tx.get(DhcpSubnet, old.dhcp_subnet_id)
        new_dhcp = dhcp.model_copy(update=_dhcp_fields(new, network.mtu))
        DhcpSubnet.model_validate(new_dhcp.model_dump())  # the gateway inside, etc.
        tx.put(new_dhcp)
        tx.put(new)
        return views.subnet(new, new_dhcp)

    return run(nsdb, f"updating subnet {id}", write)


def delete(nsdb: Nsdb, id: str) -> None:
    """Refused (409 SubnetInUse) while a port other than a DHCP port has an address in
    it; the DHCP subnet goes, and the Neutron subnet with it (cascade)."""

    def write(tx: Transaction) -> None:
        sub = get_subnet(tx, id)
        # Read before the ports: a port given an address here meanwhile rewrites this
        # DHCP subnet, so our delete fails its version check and is re-run.
        tx.find(DhcpSubnet.kind, sub.dhcp_subnet_id)
        for port in tx.all_of(NeutronPort):
            if any(f.subnet_id == id for f in port.fixed_ips) and port.device_owner != DHCP_OWNER:
                raise conflict(
                    "SubnetInUse",
                    f"Unable to complete operation on subnet {id}: One or more ports have an "
                    "IP allocation from this subnet.",
                )
        cascade_delete(tx, DhcpSubnet.kind, sub.dhcp_subnet_id)
        if not tx.is_deleted(NeutronSubnet.kind, id):
            cascade_delete(tx, NeutronSubnet.kind, id)

    run(nsdb, f"deleting subnet {id}", write)


def show(nsdb: Nsdb, id: str) -> dict[str, Any]:
    tx = Transaction(nsdb)
    sub = get_subnet(tx, id)
    dhcp = tx.find(DhcpSubnet.kind, sub.dhcp_subnet_id)
    return views.subnet(sub, dhcp if isinstance(dhcp, DhcpSubnet) else None)


def listing(nsdb: Nsdb) -> list[dict[str, Any]]:
    tx = Transaction(nsdb)
    dhcps = {d.id: d for d in tx.all_of(DhcpSubnet)}
    return [views.subnet(s, dhcps.get(s.dhcp_subnet_id)) for s in tx.all_of(NeutronSubnet)]
