"""Members of sets kept inside their owner: port group ports, IP address group
addresses, tunnel zone hosts and DHCP static hosts. Each change rewrites the owner with
a version check; adding a member that is already there is a 409, removing one that is
not there a 404, so a client always learns what really happened."""

from __future__ import annotations

import ipaddress

from tessera.model import (
    Bridge,
    DhcpHost,
    DhcpSubnet,
    Host,
    IpAddrGroup,
    Port,
    PortGroup,
    TunnelZone,
    TunnelZoneHost,
)
from tessera.nsdb.errors import AlreadyExists, IntegrityError, NotFound
from tessera.nsdb.store.integrity import replace
from tessera.nsdb.store.objects import dhcp_subnet_id, parse_subnet_key
from tessera.nsdb.store.transaction import Transaction

# -- port groups ------------------------------------------------------------------------


def add_port(tx: Transaction, group_id: str, port_id: str) -> None:
    group = tx.get(PortGroup, group_id)
    if not isinstance(tx.find(Port.kind, port_id), Port):
        raise IntegrityError(f"port_id: no port {port_id} exists")
    if port_id in group.port_ids:
        raise AlreadyExists(f"port {port_id} is already a member of port group {group.id}")
    tx.put(group.model_copy(update={"port_ids": [*group.port_ids, port_id]}))
    tx.touch(Port.kind, port_id)


def remove_port(tx: Transaction, group_id: str, port_id: str) -> None:
    group = tx.get(PortGroup, group_id)
    if port_id not in group.port_ids:
        raise NotFound(f"port {port_id} is not a member of port group {group.id}")
    tx.put(group.model_copy(update={"port_ids": [p for p in group.port_ids if p != port_id]}))


# -- IP address groups --------------------------------------------------------------------


def _normal_addr(addr: str) -> str | None:
    try:
        return str(ipaddress.IPv4Address(addr))
    except ValueError:
        return None


def add_addr(tx: Transaction, group_id: str, addr: str) -> str:
    group = tx.get(IpAddrGroup, group_id)
    normal = _normal_addr(addr)
    if normal is None:
        raise IntegrityError(f"addr: '{addr}' is not an IPv4 address")
    if normal in group.addrs:
        raise AlreadyExists(f"{normal} is already in IP address group {group.id}")
    tx.put(replace(group, addrs=[*group.addrs, normal]))
    return normal


def remove_addr(tx: Transaction, group_id: str, addr: str) -> None:
    group = tx.get(IpAddrGroup, group_id)
    normal = _normal_addr(addr)
    if normal is None or normal not in group.addrs:
        raise NotFound(f"{addr} is not in IP address group {group.id}")
    tx.put(group.model_copy(update={"addrs": [a for a in group.addrs if a != normal]}))


# -- tunnel zones -------------------------------------------------------------------------


def add_zone_host(tx: Transaction, zone_id: str, member: TunnelZoneHost) -> None:
    zone = tx.get(TunnelZone, zone_id)
    if not isinstance(tx.find(Host.kind, member.host_id), Host):
        raise IntegrityError(f"host_id: no host {member.host_id} exists")
    for h in zone.hosts:
        if h.host_id == member.host_id:
            raise AlreadyExists(
                f"host {member.host_id} is already in tunnel zone {zone.id} (as {h.ip_address})"
            )
        if h.ip_address == member.ip_address:
            raise AlreadyExists(
                f"{member.ip_address} is already the address of host {h.host_id} "
                f"in tunnel zone {zone.id}"
            )
    tx.put(zone.model_copy(update={"hosts": [*zone.hosts, member]}))
    tx.touch(Host.kind, member.host_id)


def remove_zone_host(tx: Transaction, zone_id: str, host_id: str) -> None:
    zone = tx.get(TunnelZone, zone_id)
    if not any(h.host_id == host_id for h in zone.hosts):
        raise NotFound(f"host {host_id} is not in tunnel zone {zone.id}")
    tx.put(zone.model_copy(update={"hosts": [h for h in zone.hosts if h.host_id != host_id]}))


# -- DHCP hosts ----------------------------------------------------------------------------


def subnet(tx: Transaction, bridge_id: str, key: str) -> DhcpSubnet:
    """The bridge's subnet named `{prefix}_{len}` (404 for the bridge, then the subnet)."""
    tx.get(Bridge, bridge_id)
    parsed = parse_subnet_key(key)
    found = tx.find(DhcpSubnet.kind, dhcp_subnet_id(bridge_id, *parsed)) if parsed else None
    if not isinstance(found, DhcpSubnet) or found.bridge_id != bridge_id:
        raise NotFound(f"bridge {bridge_id} has no DHCP subnet {key}")
    return found


def _normal_mac(mac: str) -> str:
    return mac.replace("-", ":").lower()


def dhcp_host(tx: Transaction, bridge_id: str, key: str, mac: str) -> DhcpHost:
    sub = subnet(tx, bridge_id, key)
    for h in sub.hosts:
        if h.mac_addr == _normal_mac(mac):
            return h
    raise NotFound(f"DHCP subnet {key} of bridge {bridge_id} has no host {mac}")


def put_dhcp_host(
    tx: Transaction, bridge_id: str, key: str, host: DhcpHost, replacing: str | None = None
) -> DhcpHost:
    """Add `host`, or with `replacing` (a MAC) replace that host by `host`."""
    sub = subnet(tx, bridge_id, key)
    others = list(sub.hosts)
    if replacing is not None:
        old = dhcp_host(tx, bridge_id, key, replacing)
        others = [h for h in others if h.mac_addr != old.mac_addr]
    for h in others:
        if h.mac_addr == host.mac_addr:
            raise AlreadyExists(f"DHCP subnet {key} already has a host {h.mac_addr}")
        if h.ip_addr == host.ip_addr:
            raise AlreadyExists(
                f"{host.ip_addr} is already given to {h.mac_addr} in DHCP subnet {key}"
            )
    tx.put(replace(sub, hosts=[*others, host]))
    return host


def remove_dhcp_host(tx: Transaction, bridge_id: str, key: str, mac: str) -> None:
    sub = subnet(tx, bridge_id, key)
    old = dhcp_host(tx, bridge_id, key, mac)
    tx.put(sub.model_copy(update={"hosts": [h for h in sub.hosts if h.mac_addr != old.mac_addr]}))
