"""Neutron resources as clients see them, from what the NSDB stores.

Every list attribute is always present (the CLI fails on a missing one after the write
succeeded). The tessera twin is shown as `tessera:*` attributes; on the tessera side the
twin has the same id (network = bridge, port = bridge port), the bridge carries the
network's name and project (`tenant_id`), and the DHCP subnet is named by the subnet's
`tessera:dhcp_subnet`.
"""

from __future__ import annotations

from typing import Any

from tessera.model import DhcpSubnet, Port
from tessera.model.neutron import NeutronNetwork, NeutronObject, NeutronPort, NeutronSubnet


def _common(obj: NeutronObject) -> dict[str, Any]:
    return {
        "id": obj.id,
        "name": obj.name,
        "description": obj.description,
        "project_id": obj.project_id,
        "tenant_id": obj.project_id,
        "tags": list(obj.tags),
        "revision_number": obj.revision_number,
        "created_at": obj.created_at,
        "updated_at": obj.updated_at,
    }


def network(net: NeutronNetwork, subnet_ids: list[str]) -> dict[str, Any]:
    return {
        **_common(net),
        "admin_state_up": net.admin_state_up,
        "status": "ACTIVE",
        "shared": net.shared,
        "router:external": net.router_external,
        "mtu": net.mtu,
        "port_security_enabled": net.port_security_enabled,
        "subnets": sorted(subnet_ids),
        "availability_zone_hints": [],
        "availability_zones": [],
        "ipv4_address_scope": None,
        "ipv6_address_scope": None,
        "l2_adjacency": True,
        "tessera:bridge_id": net.bridge_id,
    }


def subnet(sub: NeutronSubnet, dhcp: DhcpSubnet | None) -> dict[str, Any]:
    return {
        **_common(sub),
        "network_id": sub.network_id,
        "ip_version": sub.ip_version,
        "cidr": sub.cidr,
        "gateway_ip": sub.gateway_ip,
        "allocation_pools": [p.model_dump() for p in sub.allocation_pools],
        "dns_nameservers": list(sub.dns_nameservers),
        "host_routes": [r.model_dump() for r in sub.host_routes],
        "enable_dhcp": sub.enable_dhcp,
        "ipv6_ra_mode": None,
        "ipv6_address_mode": None,
        "subnetpool_id": None,
        "service_types": [],
        "segment_id": None,
        "tessera:dhcp_subnet_id": sub.dhcp_subnet_id,
        "tessera:dhcp_subnet": dhcp.key if dhcp is not None else None,
    }


def vif_type(port: NeutronPort, twin: Port | None) -> str:
    if twin is not None and twin.host_id is not None:
        return "tap"
    return "binding_failed" if port.binding_host_id else "unbound"


def port(p: NeutronPort, twin: Port | None) -> dict[str, Any]:
    # bound to an interface, or linked to a router port (a router's interface): it
    # carries traffic (tempest waits for router interfaces to be ACTIVE)
    bound = twin is not None and (twin.host_id is not None or twin.peer_id is not None)
    return {
        **_common(p),
        "network_id": p.network_id,
        "admin_state_up": p.admin_state_up,
        "status": "ACTIVE" if bound and p.admin_state_up else "DOWN",
        "mac_address": p.mac_address,
        "fixed_ips": [f.model_dump() for f in p.fixed_ips],
        "security_groups": list(p.security_groups),
        "allowed_address_pairs": [a.model_dump() for a in p.allowed_address_pairs],
        "port_security_enabled": p.port_security_enabled,
        "device_owner": p.device_owner,
        "device_id": p.device_id,
        "binding:host_id": p.binding_host_id,
        "binding:vif_type": vif_type(p, twin),
        "binding:vif_details": {},
        "binding:vnic_type": "normal",
        "binding:profile": {},
        "extra_dhcp_opts": [],
        "tessera:port_id": p.tessera_port_id,
        "tessera:host_id": twin.host_id if twin is not None else None,
        "tessera:interface_name": twin.interface_name if twin is not None else None,
    }
