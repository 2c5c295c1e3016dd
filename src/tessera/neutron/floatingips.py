"""Neutron floating IPs ⇄ static NAT on the router, one NSDB transaction per write.

As MidoNet's C3PO did:

- the address comes from the external network's subnets (requested or allocated), and
  is reserved by a Neutron port on that network (`device_owner` `network:floatingip`,
  `device_id` the floating IP): the allocation of ports and floating IPs is one;
- associated with a port (`port_id`, optionally `fixed_ip_address`), it becomes two
  rules on the router that connects the port's subnet to the floating network (an
  interface there, its gateway on the floating network): on the inbound chain, first,
  `dnat` of packets coming in on the gateway port to the floating address → the fixed
  address; on the outbound chain, first (before the gateway's dynamic SNAT), `snat` of
  packets leaving by the gateway port from the fixed address → the floating address;
- disassociating (`port_id` null) or deleting removes exactly those rules (and, on
  delete, the reserving port).

The router answers ARP for the floating address on its gateway port (with that port's
MAC) because of the `dnat` rule alone (`simulation.arp.owns_floating`): nothing else is
written for it, so the answer comes and goes with the association. MidoNet wrote an
entry in the external network's ARP table instead; one source of truth leaves nothing
to get out of step.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from tessera.model import NatTarget, Rule
from tessera.model.neutron import NeutronFloatingIp, NeutronPort, NeutronRouter
from tessera.model.types import new_id
from tessera.neutron import routers, values, views
from tessera.neutron.errors import NeutronError, bad_request, conflict, not_found
from tessera.neutron.networks import get_network, now
from tessera.neutron.ports import get_port
from tessera.neutron.subnets import get_subnet
from tessera.nsdb.base import Nsdb
from tessera.nsdb.store.integrity import cascade_delete, check_refs
from tessera.nsdb.store.objects import create as create_object
from tessera.nsdb.store.transaction import Transaction, run

FLOATING_IP_OWNER = "network:floatingip"
CREATE_ATTRS = frozenset(
    {
        "floating_network_id",
        "floating_ip_address",
        "subnet_id",
        "port_id",
        "fixed_ip_address",
        "description",
        "project_id",
        "tenant_id",
        "tags",
    }
)
UPDATE_ATTRS = frozenset({"port_id", "fixed_ip_address", "description"})
READ_ONLY = frozenset(
    {"id", "floating_network_id", "floating_ip_address", "project_id", "tenant_id", "status"}
)


def _bad(message: str) -> NeutronError:
    return bad_request(f"Bad floatingip request: {message}.", "BadRequest")


def get_floatingip(tx: Transaction, id: str) -> NeutronFloatingIp:
    fip = tx.find(NeutronFloatingIp.kind, id)
    if not isinstance(fip, NeutronFloatingIp):
        raise not_found("FloatingIPNotFound", f"Floating IP {id} could not be found")
    return fip


def view(fip: NeutronFloatingIp) -> dict[str, Any]:
    return {
        **views._common(fip),
        "floating_network_id": fip.floating_network_id,
        "floating_ip_address": fip.floating_ip_address,
        "port_id": fip.port_id,
        "fixed_ip_address": fip.fixed_ip_address,
        "router_id": fip.router_id,
        "status": "ACTIVE" if fip.port_id else "DOWN",
        "port_details": None,
        "dns_domain": "",
        "dns_name": "",
        "qos_policy_id": None,
        "port_forwardings": [],
        "tessera:floating_port_id": fip.floating_port_id,
        "tessera:rule_ids": list(fip.rule_ids),
    }


def _router_for(
    tx: Transaction, network_id: str, port: NeutronPort, fixed_ip: str
) -> NeutronRouter:
    """The router with an interface on the fixed address's subnet and its gateway on
    the floating network (Neutron's ExternalGatewayForFloatingIPNotFound otherwise)."""
    addr = ipaddress.IPv4Address(fixed_ip)
    subnet_ids = [f.subnet_id for f in port.fixed_ips if f.ip_address == fixed_ip]
    for router in tx.all_of(NeutronRouter):
        if router.gateway is None or router.gateway.network_id != network_id:
            continue
        for iface in router.interfaces:
            if iface.subnet_id in subnet_ids:
                sub = get_subnet(tx, iface.subnet_id)
                if addr in ipaddress.IPv4Network(sub.cidr):
                    return router
    raise not_found(
        "ExternalGatewayForFloatingIPNotFound",
        f"External network {network_id} is not reachable from subnet "
        f"{subnet_ids[0] if subnet_ids else ''}. Therefore, cannot associate Port {port.id} "
        "with a Floating IP.",
    )


def _associate(
    tx: Transaction, fip: NeutronFloatingIp, port_id: str, fixed: str | None
) -> NeutronFloatingIp:
    port = get_port(tx, port_id)
    if not port.fixed_ips:
        raise _bad(f"Port {port.id} does not have any IP addresses")
    addresses = [f.ip_address for f in port.fixed_ips]
    if fixed is None:
        fixed = addresses[0]
    elif fixed not in addresses:
        raise _bad(f"Port {port.id} does not have fixed ip {fixed}")
    for other in tx.all_of(NeutronFloatingIp):
        if other.id != fip.id and other.port_id == port.id and other.fixed_ip_address == fixed:
            raise conflict(
                "FloatingIPPortAlreadyAssociated",
                f"Cannot associate floating IP {fip.floating_ip_address} ({fip.id}) with port "
                f"{port.id} using fixed IP {fixed}, as that fixed IP already has a floating "
                f"IP on external network {fip.floating_network_id}.",
            )
    router = _router_for(tx, fip.floating_network_id, port, fixed)
    assert router.gateway is not None
    gw_port = router.gateway.router_port_id
    dnat = Rule(
        id=new_id(),
        chain_id=router.inbound_chain_id,
        type="dnat",
        position=1,
        in_ports=[gw_port],
        nw_dst_address=fip.floating_ip_address,
        nw_dst_length=32,
        nat_targets=[NatTarget(address_from=fixed, address_to=fixed)],
    )
    snat = Rule(
        id=new_id(),
        chain_id=router.outbound_chain_id,
        type="snat",
        position=1,
        out_ports=[gw_port],
        nw_src_address=fixed,
        nw_src_length=32,
        nat_targets=[
            NatTarget(address_from=fip.floating_ip_address, address_to=fip.floating_ip_address)
        ],
    )
    for rule in (dnat, snat):
        create_object(tx, rule)
    return fip.model_copy(
        update={
            "port_id": port.id,
            "fixed_ip_address": fixed,
            "router_id": router.id,
            "rule_ids": [dnat.id, snat.id],
        }
    )


def _disassociate(tx: Transaction, fip: NeutronFloatingIp) -> NeutronFloatingIp:
    for rule_id in fip.rule_ids:
        cascade_delete(tx, Rule.kind, rule_id)
    return fip.model_copy(
        update={"port_id": None, "fixed_ip_address": None, "router_id": None, "rule_ids": []}
    )


def create(nsdb: Nsdb, body: dict[str, Any], project_header: str | None) -> dict[str, Any]:
    return run(nsdb, "creating a floating IP", creator(nsdb, body, project_header))


def creator(
    nsdb: Nsdb, body: dict[str, Any], project_header: str | None
) -> Callable[[Transaction], dict[str, Any]]:
    values.refuse_unknown(body, CREATE_ATTRS)
    if body.get("floating_network_id") is None:
        raise bad_request(
            "Failed to parse request. Required attribute 'floating_network_id' not specified"
        )
    network_id = values.text("floating_network_id", body["floating_network_id"])
    description = values.text("description", body.get("description", ""))
    address = body.get("floating_ip_address")
    if address is not None:
        address = values.ipv4("floating_ip_address", address)
    subnet_id = body.get("subnet_id")
    if subnet_id is not None:
        subnet_id = values.text("subnet_id", subnet_id)
    port_id = body.get("port_id")
    if port_id is not None:
        port_id = values.text("port_id", port_id)
    fixed = body.get("fixed_ip_address")
    if fixed is not None:
        fixed = values.ipv4("fixed_ip_address", fixed)
    project = values.project(body, project_header)
    tags = values.string_list("tags", body.get("tags"))
    id = new_id()
    make_port = routers._gateway_port_maker(nsdb)

    def write(tx: Transaction) -> dict[str, Any]:
        net = get_network(tx, network_id)
        if not net.router_external:
            raise _bad(f"Network {net.id} is not a valid external network")
        wanted: dict[str, Any] = {}
        if subnet_id is not None:
            wanted["subnet_id"] = subnet_id
        if address is not None:
            wanted["ip_address"] = address
        made = make_port(
            tx,
            {
                "network_id": net.id,
                "device_owner": FLOATING_IP_OWNER,
                "device_id": id,
                **({"fixed_ips": [wanted]} if wanted else {}),
            },
        )
        reserving = tx.get(NeutronPort, made["id"])
        if not reserving.fixed_ips:
            raise conflict(
                "IpAddressGenerationFailure",
                f"No more IP addresses available on network {net.id}.",
            )
        stamp = now()
        fip = NeutronFloatingIp(
            id=id,
            floating_network_id=net.id,
            floating_port_id=reserving.id,
            floating_ip_address=reserving.fixed_ips[0].ip_address,
            description=description,
            project_id=project,
            tags=tags,
            created_at=stamp,
            updated_at=stamp,
        )
        if port_id is not None:
            fip = _associate(tx, fip, port_id, fixed)
        fip = NeutronFloatingIp.model_validate(fip.model_dump())
        check_refs(tx, fip, None)
        tx.create(fip)
        return view(fip)

    return write


def update(nsdb: Nsdb, id: str, body: dict[str, Any]) -> dict[str, Any]:
    values.refuse_fixed(body, READ_ONLY)
    values.refuse_unknown(body, UPDATE_ATTRS)
    port_given = "port_id" in body
    port_id = body.get("port_id")
    if port_id is not None:
        port_id = values.text("port_id", port_id)
    fixed = body.get("fixed_ip_address")
    if fixed is not None:
        fixed = values.ipv4("fixed_ip_address", fixed)
    description = values.text("description", body["description"]) if "description" in body else None

    def write(tx: Transaction) -> dict[str, Any]:
        old = get_floatingip(tx, id)
        new = old.model_copy(
            update={"updated_at": now(), "revision_number": old.revision_number + 1}
        )
        if description is not None:
            new = new.model_copy(update={"description": description})
        if port_given:
            new = _disassociate(tx, new)
            if port_id is not None:
                new = _associate(tx, new, port_id, fixed)
        new = NeutronFloatingIp.model_validate(new.model_dump())
        tx.put(new)
        return view(new)

    return run(nsdb, f"updating floating IP {id}", write)


def delete(nsdb: Nsdb, id: str) -> None:
    def write(tx: Transaction) -> None:
        fip = get_floatingip(tx, id)
        _disassociate(tx, fip)
        cascade_delete(tx, NeutronFloatingIp.kind, fip.id)
        routers._drop_port(tx, fip.floating_port_id)

    run(nsdb, f"deleting floating IP {id}", write)


def show(nsdb: Nsdb, id: str) -> dict[str, Any]:
    return view(get_floatingip(Transaction(nsdb), id))


def listing(nsdb: Nsdb) -> list[dict[str, Any]]:
    return [view(f) for f in Transaction(nsdb).all_of(NeutronFloatingIp)]
