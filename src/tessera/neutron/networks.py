"""Neutron networks ⇄ tessera bridges (same id), one NSDB transaction per write.

A network's twin is the bridge with its id, carrying its name, project (`tenant_id`)
and admin state; its `mtu` is what the DHCP subnets of the bridge announce. Deleting a
network deletes the bridge, and the bridge's cascade (its DHCP subnets, its ports)
takes the Neutron subnets and ports with it: nothing is left behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tessera.model import Bridge, DhcpSubnet, Port
from tessera.model.neutron import NeutronFloatingIp, NeutronNetwork, NeutronPort, NeutronSubnet
from tessera.model.types import new_id
from tessera.neutron import values, views
from tessera.neutron.errors import conflict, not_found
from tessera.nsdb.base import Nsdb
from tessera.nsdb.store.integrity import cascade_delete, check_refs
from tessera.nsdb.store.transaction import Transaction, run

_COMMON = (
    "name", "description", "admin_state_up", "shared", "router:external", "mtu",
    "port_security_enabled",
)  # fmt: skip
CREATE_ATTRS = frozenset({*_COMMON, "project_id", "tenant_id", "tags"})
UPDATE_ATTRS = frozenset(_COMMON)
READ_ONLY = frozenset({"id", "project_id", "tenant_id", "status", "subnets"})
DHCP_OWNER = "network:dhcp"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _attrs(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "name" in body:
        out["name"] = values.text("name", body["name"])
    if "description" in body:
        out["description"] = values.text("description", body["description"])
    if "admin_state_up" in body:
        out["admin_state_up"] = values.boolean("admin_state_up", body["admin_state_up"])
    if "shared" in body:
        out["shared"] = values.boolean("shared", body["shared"])
    if "router:external" in body:
        out["router_external"] = values.boolean("router:external", body["router:external"])
    if "port_security_enabled" in body:
        out["port_security_enabled"] = values.boolean(
            "port_security_enabled", body["port_security_enabled"]
        )
    if "mtu" in body:
        out["mtu"] = values.integer("mtu", body["mtu"], 68, 65535)
    return out


def get_network(tx: Transaction, id: str) -> NeutronNetwork:
    """The network, its bridge read too: the transaction keeps what it read, so a
    network deleted meanwhile is "not found" here rather than a missing bridge later."""
    net = tx.find(NeutronNetwork.kind, id)
    if not isinstance(net, NeutronNetwork) or tx.find(Bridge.kind, net.bridge_id) is None:
        raise not_found("NetworkNotFound", f"Network {id} could not be found.")
    return net


def subnet_ids(tx: Transaction, network_id: str) -> list[str]:
    return [s.id for s in tx.all_of(NeutronSubnet) if s.network_id == network_id]


def view(tx: Transaction, net: NeutronNetwork) -> dict[str, Any]:
    return views.network(net, subnet_ids(tx, net.id))


def create(nsdb: Nsdb, body: dict[str, Any], project_header: str | None) -> dict[str, Any]:
    """Create one network: one NSDB transaction."""
    return run(nsdb, "creating a network", creator(nsdb, body, project_header))


def creator(
    nsdb: Nsdb, body: dict[str, Any], project_header: str | None
) -> Callable[[Transaction], dict[str, Any]]:
    """Check the body and return the write of the new network (and its twins) into a
    transaction: bulk creation runs several in one."""
    values.refuse_unknown(body, CREATE_ATTRS)
    attrs = _attrs(body)
    project = values.project(body, project_header)
    tags = values.string_list("tags", body.get("tags"))
    id = new_id()
    stamp = now()
    net = NeutronNetwork(
        id=id,
        bridge_id=id,
        project_id=project,
        tags=tags,
        created_at=stamp,
        updated_at=stamp,
        **attrs,
    )
    bridge = Bridge(
        id=id, name=net.name, tenant_id=project or None, admin_state_up=net.admin_state_up
    )

    def write(tx: Transaction) -> dict[str, Any]:
        check_refs(tx, bridge, None)
        tx.create(bridge)
        check_refs(tx, net, None)
        tx.create(net)
        return views.network(net, [])

    return write


def update(nsdb: Nsdb, id: str, body: dict[str, Any]) -> dict[str, Any]:
    values.refuse_fixed(body, READ_ONLY)
    values.refuse_unknown(body, UPDATE_ATTRS)
    attrs = _attrs(body)

    def write(tx: Transaction) -> dict[str, Any]:
        old = get_network(tx, id)
        new = old.model_copy(
            update={**attrs, "updated_at": now(), "revision_number": old.revision_number + 1}
        )
        tx.put(new)
        bridge = tx.get(Bridge, old.bridge_id)
        tx.put(bridge.model_copy(update={"name": new.name, "admin_state_up": new.admin_state_up}))
        if new.mtu != old.mtu:
            for sub in tx.all_of(NeutronSubnet):
                if sub.network_id == id:
                    dhcp = tx.get(DhcpSubnet, sub.dhcp_subnet_id)
                    tx.put(dhcp.model_copy(update={"interface_mtu": new.mtu}))
        return view(tx, new)

    return run(nsdb, f"updating network {id}", write)


def delete(nsdb: Nsdb, id: str) -> None:
    """Refused (409 NetworkInUse) while it has ports other than DHCP ones and those of
    unassociated floating IPs (deleted with it, as Neutron does), or bridge ports made
    through the tessera API that no Neutron port stands for."""

    def write(tx: Transaction) -> None:
        net = get_network(tx, id)
        neutron_ports = {p.id: p for p in tx.all_of(NeutronPort) if p.network_id == id}
        # Neutron's `delete_disassociated_floatingips`: an external network's floating
        # IPs that no port uses go with it (the bridge cascade removes them and their
        # reserving ports); an associated one keeps the network in use.
        idle_fip_ports = {
            f.floating_port_id
            for f in tx.all_of(NeutronFloatingIp)
            if f.floating_network_id == id and f.port_id is None
        }
        in_use = [
            p.id
            for p in neutron_ports.values()
            if p.device_owner != DHCP_OWNER and p.id not in idle_fip_ports
        ]
        foreign = [
            p.id
            for p in tx.all_of(Port)
            if p.device_id == net.bridge_id and p.id not in neutron_ports
        ]
        if in_use or foreign:
            raise conflict(
                "NetworkInUse",
                f"Unable to complete operation on network {id}. There are one or more ports "
                "still in use on the network.",
            )
        cascade_delete(tx, Bridge.kind, net.bridge_id)

    run(nsdb, f"deleting network {id}", write)


def show(nsdb: Nsdb, id: str) -> dict[str, Any]:
    tx = Transaction(nsdb)
    return view(tx, get_network(tx, id))


def listing(nsdb: Nsdb) -> list[dict[str, Any]]:
    tx = Transaction(nsdb)
    subnets: dict[str, list[str]] = {}
    for sub in tx.all_of(NeutronSubnet):
        subnets.setdefault(sub.network_id, []).append(sub.id)
    return [views.network(n, subnets.get(n.id, [])) for n in tx.all_of(NeutronNetwork)]
