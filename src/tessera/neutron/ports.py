"""Neutron ports ⇄ tessera bridge ports (same id), with their addresses and bindings.

- The twin is a port of the network's bridge with the Neutron port's id: `tessera lab
  vm add --port <neutron port id>` binds it as any tessera port.
- `fixed_ips` come from the subnets' allocation pools (the first subnet with a free
  address when none are asked for) or are requested (`subnet_id` and/or `ip_address`);
  each becomes a static host (MAC → address) of the subnet's DHCP subnet, so a VM on the
  port gets exactly its Neutron address by DHCP.
- `binding:host_id` names a tessera host (its name, or its id): the twin is bound there
  to interface `tap<first 11 characters of the id>` (Nova's naming). A host tessera
  does not know leaves the twin unbound (`binding:vif_type` "binding_failed").
- `security_groups` (the project's default group when none are given) are applied by
  `security_groups.apply_port` in the same transaction: port chains, group memberships
  and anti-spoofing (docs/security-groups.md); `remove_port` undoes it on delete.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from typing import Any

from tessera.model import DhcpHost, DhcpSubnet, Host, Port, Rule
from tessera.model.neutron import (
    AddressPair,
    FixedIp,
    NeutronFloatingIp,
    NeutronNetwork,
    NeutronPort,
    NeutronRouter,
    NeutronSubnet,
)
from tessera.model.types import new_id
from tessera.neutron import ipam, values, views
from tessera.neutron import security_groups as security
from tessera.neutron.errors import bad_request, conflict, not_found
from tessera.neutron.networks import get_network, now
from tessera.neutron.subnets import get_subnet
from tessera.nsdb import tables
from tessera.nsdb.base import Nsdb
from tessera.nsdb.errors import NsdbError
from tessera.nsdb.store import TUNNEL_KEY_COUNTER
from tessera.nsdb.store.connections import Binding, bind, unbind
from tessera.nsdb.store.integrity import cascade_delete, check_refs
from tessera.nsdb.store.objects import create as create_object
from tessera.nsdb.store.transaction import Transaction, run

_MUTABLE = (
    "name",
    "description",
    "admin_state_up",
    "mac_address",
    "fixed_ips",
    "security_groups",
    "allowed_address_pairs",
    "port_security_enabled",
    "device_owner",
    "device_id",
    "binding:host_id",
    "binding:vnic_type",
    "binding:profile",
)
CREATE_ATTRS = frozenset({*_MUTABLE, "network_id", "project_id", "tenant_id", "tags"})
READ_ONLY = frozenset({"id", "network_id", "project_id", "tenant_id", "status"})
MAC_PREFIX = "fa:16:3e"  # OpenStack's
_MAC_TRIES = 16


def interface_name(port_id: str) -> str:
    """The interface a bound port is expected on: Nova's `tap` + 11 id characters."""
    return "tap" + port_id[:11]


def get_port(tx: Transaction, id: str) -> NeutronPort:
    port = tx.find(NeutronPort.kind, id)
    if not isinstance(port, NeutronPort):
        raise not_found("PortNotFound", f"Port {id} could not be found.")
    return port


def _attrs(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("name", "description", "device_owner", "device_id"):
        if name in body:
            out[name] = values.text(name, body[name])
    for name in ("admin_state_up", "port_security_enabled"):
        if name in body:
            out[name] = values.boolean(name, body[name])
    if "mac_address" in body:
        out["mac_address"] = values.mac("mac_address", body["mac_address"])
    if "security_groups" in body:
        out["security_groups"] = values.string_list("security_groups", body["security_groups"])
    if "allowed_address_pairs" in body:
        out["allowed_address_pairs"] = values.dict_list(
            "allowed_address_pairs", body["allowed_address_pairs"]
        )
    if "binding:host_id" in body:
        out["binding_host_id"] = values.text("binding:host_id", body["binding:host_id"])
    if body.get("binding:vnic_type", "normal") != "normal":
        raise bad_request(
            "Invalid input for binding:vnic_type. Reason: only 'normal' is supported."
        )
    if body.get("binding:profile") not in (None, {}):
        raise bad_request("Invalid input for binding:profile. Reason: not supported yet.")
    return out


def _pairs(raw: list[dict[str, Any]], mac: str) -> list[AddressPair]:
    out = []
    for item in raw:
        if "ip_address" not in item or set(item) - {"ip_address", "mac_address"}:
            raise bad_request(
                "Invalid input for allowed_address_pairs. Reason: each needs ip_address."
            )
        ip = item["ip_address"]
        try:
            ipaddress.ip_network(str(ip), strict=False)
        except ValueError:
            raise bad_request(
                f"Invalid input for allowed_address_pairs. Reason: '{ip}' is not an IP."
            ) from None
        pair_mac = values.mac("allowed_address_pairs", item.get("mac_address") or mac)
        out.append(AddressPair(ip_address=str(ip), mac_address=pair_mac))
    return out


def _subnets(tx: Transaction, network_id: str) -> list[NeutronSubnet]:
    found = [s for s in tx.all_of(NeutronSubnet) if s.network_id == network_id]
    return sorted(found, key=lambda s: (s.created_at, s.id))


def _used(tx: Transaction, subnets: list[NeutronSubnet], except_port: str) -> dict[str, set[str]]:
    """Addresses taken in each subnet: by other Neutron ports, and by the DHCP subnet's
    hosts (entries made through the v1 API, and — the NSDB being read piece by piece —
    a port committed since the port list was read: the DHCP subnet is read after it and
    rewritten with a version check, so an allocation never trusts a stale list)."""
    own = tx.find(NeutronPort.kind, except_port)
    own_mac = own.mac_address if isinstance(own, NeutronPort) else None
    ids = {s.id for s in subnets}
    used: dict[str, set[str]] = {}
    for p in tx.all_of(NeutronPort):
        if p.id != except_port:
            for f in p.fixed_ips:
                if f.subnet_id in ids:
                    used.setdefault(f.subnet_id, set()).add(f.ip_address)
    for sub in subnets:
        dhcp = tx.find(DhcpSubnet.kind, sub.dhcp_subnet_id)
        if isinstance(dhcp, DhcpSubnet):
            taken = used.setdefault(sub.id, set())
            taken.update(h.ip_addr for h in dhcp.hosts if h.mac_addr != own_mac)
    return used


def _fixed_ips(tx: Transaction, network: NeutronNetwork, port_id: str, raw: Any) -> list[FixedIp]:
    """The port's addresses: allocated (`raw` None) or as requested, each checked."""
    subnets = _subnets(tx, network.id)
    used = _used(tx, subnets, port_id)
    out: list[FixedIp] = []
    if raw is None:
        for candidate in subnets:
            addr = ipam.free_address(
                candidate.allocation_pools,
                used.get(candidate.id, set()) | {candidate.gateway_ip or "0.0.0.0"},
            )
            if addr is not None:
                return [FixedIp(subnet_id=candidate.id, ip_address=addr)]
        if subnets:
            raise conflict(
                "IpAddressGenerationFailure",
                f"No more IP addresses available on network {network.id}.",
            )
        return []
    by_id = {s.id: s for s in subnets}
    for item in values.dict_list("fixed_ips", raw):
        if not item or set(item) - {"subnet_id", "ip_address"}:
            raise bad_request(
                "Invalid input for fixed_ips. Reason: each needs subnet_id and/or ip_address."
            )
        sub: NeutronSubnet | None = None
        if item.get("subnet_id") is not None:
            sub_id = values.text("subnet_id", item["subnet_id"])
            get_subnet(tx, sub_id)
            sub = by_id.get(sub_id)
            if sub is None:
                raise bad_request(
                    f"Invalid input for operation: Failed to create port on network "
                    f"{network.id}, because fixed_ips included invalid subnet {sub_id}."
                )
        if item.get("ip_address") is None:
            if sub is None:
                raise bad_request(
                    "Invalid input for fixed_ips. Reason: each needs subnet_id and/or ip_address."
                )
            taken = (
                used.get(sub.id, set())
                | {f.ip_address for f in out}
                | {sub.gateway_ip or "0.0.0.0"}
            )
            addr = ipam.free_address(sub.allocation_pools, taken)
            if addr is None:
                raise conflict(
                    "IpAddressGenerationFailure",
                    f"No more IP addresses available for subnet {sub.id}.",
                )
            out.append(FixedIp(subnet_id=sub.id, ip_address=addr))
            continue
        ip = values.ipv4("ip_address", item["ip_address"])
        addr_obj = ipaddress.IPv4Address(ip)
        if sub is None:
            sub = next((s for s in subnets if addr_obj in ipaddress.IPv4Network(s.cidr)), None)
            if sub is None:
                raise bad_request(
                    f"IP address {ip} is not a valid IP for any of the subnets on the "
                    f"specified network.",
                    "InvalidIpForNetwork",
                )
        net = ipaddress.IPv4Network(sub.cidr)
        if addr_obj not in net or addr_obj in (net.network_address, net.broadcast_address):
            raise bad_request(
                f"IP address {ip} is not a valid IP for the specified subnet.", "InvalidIpForSubnet"
            )
        if ip in used.get(sub.id, set()) or any(f.ip_address == ip for f in out):
            raise conflict(
                "IpAddressInUse",
                f"Unable to complete operation for network {network.id}. The IP address "
                f"{ip} is in use.",
            )
        out.append(FixedIp(subnet_id=sub.id, ip_address=ip))
    return out


def _mac(tx: Transaction, network_id: str, port_id: str, wanted: str | None) -> str:
    taken = {
        p.mac_address
        for p in tx.all_of(NeutronPort)
        if p.network_id == network_id and p.id != port_id
    }
    if wanted is not None:
        if wanted in taken:
            raise conflict(
                "MacAddressInUse",
                f"Unable to complete operation for network {network_id}. The mac address "
                f"{wanted} is in use.",
            )
        return wanted
    for _ in range(_MAC_TRIES):
        tail = ":".join(f"{random.randrange(256):02x}" for _ in range(3))
        candidate = f"{MAC_PREFIX}:{tail}"
        if candidate not in taken:
            return candidate
    raise conflict(
        "MacAddressGenerationFailure", f"Unable to generate a unique mac on network {network_id}."
    )


def _dhcp_hosts(tx: Transaction, port: NeutronPort, add: bool) -> None:
    """Add (or remove) the port's DHCP host entries: one per subnet, its first address
    there (a DHCP subnet maps each MAC to one address).

    Adding also touches each subnet the port has an address in: a subnet deleted since
    this transaction listed it then fails the commit (which is re-run from fresh
    reads) instead of leaving the port with an address in a subnet that is gone."""
    seen: set[str] = set()
    for fixed in port.fixed_ips:
        if fixed.subnet_id in seen:
            continue
        seen.add(fixed.subnet_id)
        sub = tx.find(NeutronSubnet.kind, fixed.subnet_id)
        if not isinstance(sub, NeutronSubnet):
            continue
        if add:
            tx.touch(NeutronSubnet.kind, sub.id)
        dhcp = tx.find(DhcpSubnet.kind, sub.dhcp_subnet_id)
        if not isinstance(dhcp, DhcpSubnet):
            continue
        hosts = [
            h
            for h in dhcp.hosts
            if not (h.mac_addr == port.mac_address and h.ip_addr == fixed.ip_address)
        ]
        if add:
            if any(h.ip_addr == fixed.ip_address for h in hosts):
                raise conflict(
                    "IpAddressInUse",
                    f"Unable to complete operation for network {port.network_id}. The IP "
                    f"address {fixed.ip_address} is in use.",
                )
            name = "host-" + fixed.ip_address.replace(".", "-")
            hosts.append(DhcpHost(mac_addr=port.mac_address, ip_addr=fixed.ip_address, name=name))
        data = dhcp.model_dump()
        data["hosts"] = [h.model_dump() for h in hosts]
        tx.put(DhcpSubnet.model_validate(data))


def _host(tx: Transaction, name: str) -> Host | None:
    if not name:
        return None
    for host in tx.all_of(Host):
        if host.name == name or host.id == name:
            return host
    return None


def create(nsdb: Nsdb, body: dict[str, Any], project_header: str | None) -> dict[str, Any]:
    """Create one port: one NSDB transaction."""
    return run(nsdb, "creating a port", creator(nsdb, body, project_header))


def creator(
    nsdb: Nsdb, body: dict[str, Any], project_header: str | None
) -> Callable[[Transaction], dict[str, Any]]:
    """Check the body and return the write of the new port (and its twins) into a
    transaction: bulk creation runs several in one."""
    values.refuse_unknown(body, CREATE_ATTRS)
    if "network_id" not in body:
        raise bad_request("Failed to parse request. Required attribute 'network_id' not specified")
    network_id = values.text("network_id", body["network_id"])
    attrs = _attrs(body)
    raw_pairs = attrs.pop("allowed_address_pairs", [])
    project = values.project(body, project_header)
    tags = values.string_list("tags", body.get("tags"))
    id = new_id()
    tunnel_key = nsdb.next_id(TUNNEL_KEY_COUNTER)

    def write(tx: Transaction) -> dict[str, Any]:
        network = get_network(tx, network_id)
        given = dict(attrs)  # popped from a copy: a retried attempt starts over
        given.setdefault("port_security_enabled", network.port_security_enabled)
        _check_security(given["port_security_enabled"], given.get("security_groups", []), raw_pairs)
        given["security_groups"] = security.port_groups(
            tx,
            project or network.project_id,
            given["port_security_enabled"],
            given.get("device_owner", ""),
            given.get("security_groups"),
        )
        mac = _mac(tx, network.id, id, given.pop("mac_address", None))
        fixed = _fixed_ips(tx, network, id, body.get("fixed_ips"))
        stamp = now()
        port = NeutronPort(
            id=id,
            network_id=network.id,
            tessera_port_id=id,
            mac_address=mac,
            fixed_ips=fixed,
            allowed_address_pairs=_pairs(raw_pairs, mac),
            project_id=project or network.project_id,
            tags=tags,
            created_at=stamp,
            updated_at=stamp,
            **given,
        )
        host = _host(tx, port.binding_host_id)
        twin = Port(
            id=id, device_id=network.bridge_id, type="Bridge", admin_state_up=port.admin_state_up
        )
        binding = Binding(host.id, id, interface_name(id)) if host is not None else None
        made = create_object(tx, twin, tunnel_key, binding)
        assert isinstance(made, Port)
        check_refs(tx, port, None)
        tx.create(port)
        _dhcp_hosts(tx, port, add=True)
        security.apply_port(tx, None, port)
        return views.port(port, tx.get(Port, id))

    return write


def _check_security(enabled: bool, groups: list[str], pairs: list[dict[str, Any]]) -> None:
    if not enabled and groups:
        raise bad_request(
            "Port security must be enabled and port must have an IP address in order to use "
            "security groups.",
            "PortSecurityAndIPRequiredForSecurityGroups",
        )
    if not enabled and pairs:
        raise conflict(
            "AddressPairAndPortSecurityRequired",
            "Port Security must be enabled in order to have allowed address pairs on a port.",
        )


def update(nsdb: Nsdb, id: str, body: dict[str, Any]) -> dict[str, Any]:
    values.refuse_fixed(body, READ_ONLY)
    values.refuse_unknown(body, _MUTABLE)
    attrs = _attrs(body)
    raw_pairs = attrs.pop("allowed_address_pairs", None)

    def write(tx: Transaction) -> dict[str, Any]:
        old = get_port(tx, id)
        network = get_network(tx, old.network_id)
        changes = dict(attrs)
        mac = _mac(tx, network.id, id, changes.pop("mac_address", None) or old.mac_address)
        changes["mac_address"] = mac
        if "fixed_ips" in body:
            changes["fixed_ips"] = _fixed_ips(tx, network, id, body["fixed_ips"] or [])
        if raw_pairs is not None:
            changes["allowed_address_pairs"] = _pairs(raw_pairs, mac)
        new = old.model_copy(
            update={**changes, "updated_at": now(), "revision_number": old.revision_number + 1}
        )
        _check_security(
            new.port_security_enabled,
            new.security_groups,
            [p.model_dump() for p in new.allowed_address_pairs],
        )
        _dhcp_hosts(tx, old, add=False)
        _dhcp_hosts(tx, new, add=True)
        twin = tx.get(Port, old.tessera_port_id)
        if twin.admin_state_up != new.admin_state_up:
            twin = twin.model_copy(update={"admin_state_up": new.admin_state_up})
            tx.put(twin)
        if new.binding_host_id != old.binding_host_id:
            host = _host(tx, new.binding_host_id)
            if host is not None:
                bind(tx, host.id, twin.id, interface_name(id))
            elif twin.host_id is not None:
                unbind(tx, twin.host_id, twin.id)
            twin = tx.get(Port, twin.id)
        security.apply_port(tx, old, new)
        twin = tx.get(Port, twin.id)
        tx.put(NeutronPort.model_validate(new.model_dump()))
        return views.port(new, twin)

    return run(nsdb, f"updating port {id}", write)


# The ports Neutron's L3 plugin owns (`l3_db.router_device_owners`): the port API may not
# delete them while their owner exists, only the router / floating IP API may.
SERVICE_OWNERS = {
    "network:router_interface": NeutronRouter.kind,
    "network:router_gateway": NeutronRouter.kind,
    "network:floatingip": NeutronFloatingIp.kind,
}


def _refuse_service_port(tx: Transaction, port: NeutronPort) -> None:
    """Neutron's `prevent_l3_port_deletion`: a router interface, router gateway or
    floating IP port is deleted with its router / floating IP, never directly (that
    would leave the router port, routes and NAT rules pointing at nothing). A stale one
    (its owner gone) may go, as in Neutron."""
    owner_kind = SERVICE_OWNERS.get(port.device_owner)
    if owner_kind is None or not port.device_id or tx.find(owner_kind, port.device_id) is None:
        return
    raise conflict(
        "ServicePortInUse",
        f"Port {port.id} cannot be deleted directly via the port API: "
        f"has device owner {port.device_owner}.",
    )


def _disassociate_floating_ips(tx: Transaction, port_id: str) -> None:
    """Neutron's `disassociate_floatingips` on port delete: the floating IPs stay (with
    `port_id` null) but their static NAT rules go, in the port's delete transaction.
    (Read from the store: `floatingips` imports this module.)"""
    for fip in tx.all_of(NeutronFloatingIp):
        if fip.port_id != port_id:
            continue
        for rule_id in fip.rule_ids:
            cascade_delete(tx, Rule.kind, rule_id)
        tx.put(
            fip.model_copy(
                update={
                    "port_id": None,
                    "fixed_ip_address": None,
                    "router_id": None,
                    "rule_ids": [],
                    "updated_at": now(),
                    "revision_number": fip.revision_number + 1,
                }
            )
        )


def delete(nsdb: Nsdb, id: str) -> None:
    def write(tx: Transaction) -> Port | None:
        port = get_port(tx, id)
        _refuse_service_port(tx, port)
        _disassociate_floating_ips(tx, port.id)
        twin = tx.find(Port.kind, port.tessera_port_id)
        _dhcp_hosts(tx, port, add=False)
        security.remove_port(tx, port)
        cascade_delete(tx, Port.kind, port.tessera_port_id)
        if not tx.is_deleted(NeutronPort.kind, id):
            cascade_delete(tx, NeutronPort.kind, id)
        return twin if isinstance(twin, Port) else None

    twin = run(nsdb, f"deleting port {id}", write)
    if twin is not None:
        _forget_macs(nsdb, twin)


def _forget_macs(nsdb: Nsdb, twin: Port) -> None:
    """MAC entries learned on the deleted port would keep every host unicasting to it
    (as `TopologyStore.delete` does for a tessera port); best effort."""
    table = tables.mac_table(twin.device_id)
    try:
        for key, value in nsdb.state_get(table).items():
            try:
                entry = tables.decode_mac(key, value)
            except ValueError:
                continue
            if str(entry.port_id) == twin.id:
                nsdb.state_delete(table, key)
    except NsdbError:
        pass


def show(nsdb: Nsdb, id: str) -> dict[str, Any]:
    tx = Transaction(nsdb)
    port = get_port(tx, id)
    twin = tx.find(Port.kind, port.tessera_port_id)
    return views.port(port, twin if isinstance(twin, Port) else None)


def listing(nsdb: Nsdb) -> list[dict[str, Any]]:
    tx = Transaction(nsdb)
    twins = {p.id: p for p in tx.all_of(Port)}
    return [views.port(p, twins.get(p.tessera_port_id)) for p in tx.all_of(NeutronPort)]
