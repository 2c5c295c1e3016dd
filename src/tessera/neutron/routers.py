"""Neutron routers ⇄ tessera routers (same id), one NSDB transaction per write.

The translation follows MidoNet's C3PO:

- a router is the tessera router with its id, with two chains of its own as inbound
  and outbound filters (where SNAT and floating IP rules go);
- an interface (`add_router_interface`) is a Neutron port on the subnet's network
  (`device_owner` `network:router_interface`, `device_id` the router) whose twin bridge
  port is linked to a new tessera router port (the port's address and MAC, the subnet's
  prefix), plus the route to the subnet through that router port. By subnet, the port is
  made with the subnet's `gateway_ip`; by port, the given port's address is used;
- the external gateway is a Neutron port on the external network (`router:external`)
  with an address from its pool, linked the same way; routes to the external subnet and
  a default route via its `gateway_ip`; with `enable_snat`, a dynamic `snat` rule (to
  the gateway address) on the outbound chain for packets leaving the gateway port and a
  `rev_snat` rule on the inbound chain for packets coming in on it;
- `routes` (extraroute) become tessera routes through the router port whose subnet
  holds the next hop.

Removing an interface or the gateway, or deleting the router, removes exactly what was
made (an interface added by port deletes that port, as Neutron does).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from tessera.model import Chain, Port, Route, Router, Rule
from tessera.model import limits as L
from tessera.model.neutron import (
    NeutronFloatingIp,
    NeutronPort,
    NeutronRouter,
    NeutronSubnet,
    RouterGateway,
    RouterInterface,
    StaticRoute,
)
from tessera.model.types import new_id
from tessera.neutron import ports, values, views
from tessera.neutron.errors import NeutronError, bad_request, conflict, not_found
from tessera.neutron.networks import get_network, now
from tessera.neutron.subnets import get_subnet
from tessera.nsdb.base import Nsdb
from tessera.nsdb.store import TUNNEL_KEY_COUNTER
from tessera.nsdb.store.connections import link
from tessera.nsdb.store.integrity import cascade_delete, check_refs
from tessera.nsdb.store.objects import create as create_object
from tessera.nsdb.store.transaction import Transaction, run

_COMMON = ("name", "description", "admin_state_up", "external_gateway_info", "routes")
CREATE_ATTRS = frozenset({*_COMMON, "project_id", "tenant_id", "tags"})
UPDATE_ATTRS = frozenset(_COMMON)
READ_ONLY = frozenset({"id", "project_id", "tenant_id", "status"})
INTERFACE_OWNER = "network:router_interface"
GATEWAY_OWNER = "network:router_gateway"
SNAT_PORTS = (1024, 65535)  # dynamic SNAT to the gateway address: no well-known ports


def get_router(tx: Transaction, id: str) -> NeutronRouter:
    router = tx.find(NeutronRouter.kind, id)
    if not isinstance(router, NeutronRouter) or tx.find(Router.kind, router.router_id) is None:
        raise not_found("RouterNotFound", f"Router {id} could not be found.")
    return router


def _bad(message: str) -> NeutronError:
    return bad_request(f"Bad router request: {message}.", "BadRequest")


# -- the request's values ---------------------------------------------------------------


def _attrs(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("name", "description"):
        if name in body:
            out[name] = values.text(name, body[name])
    if "admin_state_up" in body:
        out["admin_state_up"] = values.boolean("admin_state_up", body["admin_state_up"])
    return out


def _routes(raw: Any) -> list[tuple[str, str]]:
    """`routes` as (destination CIDR, nexthop), each checked and normalised."""
    out: list[tuple[str, str]] = []
    for item in values.dict_list("routes", raw or []):
        if set(item) != {"destination", "nexthop"}:
            raise bad_request(
                "Invalid input for routes. Reason: each route needs destination and nexthop."
            )
        dest = values.ipv4_network("routes", item["destination"], strict=False)
        hop = values.ipv4("routes", item["nexthop"])
        if (str(dest), hop) not in out:
            out.append((str(dest), hop))
    if len(out) > L.MAX_ROUTER_ROUTES:
        raise bad_request(
            f"Invalid input for routes. Reason: at most {L.MAX_ROUTER_ROUTES} routes."
        )
    return out


class _GatewayRequest:
    """`external_gateway_info` checked: None removes the gateway."""

    def __init__(self, raw: Any) -> None:
        self.network_id: str | None = None
        self.enable_snat = True
        self.fixed_ips: list[dict[str, Any]] | None = None
        if raw is None or raw == {}:
            return
        if not isinstance(raw, dict):
            raise bad_request("Invalid input for external_gateway_info. Reason: not a dict.")
        values.refuse_unknown(raw, {"network_id", "enable_snat", "external_fixed_ips"})
        if "network_id" not in raw:
            raise bad_request(
                "Invalid input for external_gateway_info. Reason: network_id is required."
            )
        self.network_id = values.text("network_id", raw["network_id"])
        if "enable_snat" in raw:
            self.enable_snat = values.boolean("enable_snat", raw["enable_snat"])
        if raw.get("external_fixed_ips") is not None:
            self.fixed_ips = values.dict_list("external_fixed_ips", raw["external_fixed_ips"])


# -- writing the topology ---------------------------------------------------------------


def _subnet_of(tx: Transaction, port: NeutronPort) -> tuple[NeutronSubnet, str]:
    if not port.fixed_ips:
        raise _bad(f"Port {port.id} does not have any IP addresses")
    fixed = port.fixed_ips[0]
    return get_subnet(tx, fixed.subnet_id), fixed.ip_address


def _router_port(
    tx: Transaction, router: NeutronRouter, port: NeutronPort, tunnel_key: int
) -> tuple[Port, NeutronSubnet]:
    """The tessera router port standing for `port` (its address and MAC), linked to the
    port's twin; refused when its subnet overlaps another port's of the router."""
    sub, address = _subnet_of(tx, port)
    net = ipaddress.IPv4Network(sub.cidr)
    for other in tx.all_of(Port):
        if other.device_id != router.router_id or other.network_address is None:
            continue
        other_net = ipaddress.IPv4Network(f"{other.network_address}/{other.network_length}")
        if other_net.overlaps(net):
            raise _bad(
                f"Cidr {net} of subnet {sub.id} overlaps with cidr {other_net} of router "
                f"{router.id}"
            )
    rport = Port(
        id=new_id(),
        device_id=router.router_id,
        type="Router",
        port_address=address,
        network_address=str(net.network_address),
        network_length=net.prefixlen,
        port_mac=port.mac_address,
    )
    made = create_object(tx, rport, tunnel_key)
    assert isinstance(made, Port)
    link(tx, made.id, port.tessera_port_id)
    return made, sub


def _route(tx: Transaction, router_id: str, dest: str, port_id: str, via: str | None) -> str:
    net = ipaddress.IPv4Network(dest)
    route = Route(
        id=new_id(),
        router_id=router_id,
        dst_network_addr=str(net.network_address),
        dst_network_length=net.prefixlen,
        next_hop_port=port_id,
        next_hop_gateway=via,
    )
    create_object(tx, route)
    return route.id


def _rule(tx: Transaction, chain_id: str, **fields: Any) -> str:
    rule = Rule(id=new_id(), chain_id=chain_id, **fields)
    create_object(tx, rule)
    return rule.id


def _snat_rules(tx: Transaction, router: NeutronRouter, rport: Port) -> list[str]:
    """C3PO's SNAT: packets leaving by the gateway port take the gateway address (a
    dynamic port); replies coming in on it are reverse-translated."""
    assert rport.port_address is not None
    target = {
        "address_from": rport.port_address,
        "address_to": rport.port_address,
        "port_from": SNAT_PORTS[0],
        "port_to": SNAT_PORTS[1],
    }
    out = _rule(
        tx, router.outbound_chain_id, type="snat", out_ports=[rport.id], nat_targets=[target]
    )
    back = _rule(
        tx,
        router.inbound_chain_id,
        type="rev_snat",
        in_ports=[rport.id],
        nw_dst_address=rport.port_address,
        nw_dst_length=32,
    )
    return [out, back]


def _drop_port(tx: Transaction, port_id: str) -> None:
    """What `DELETE /v2.0/ports/{id}` does, inside this transaction."""
    port = tx.find(NeutronPort.kind, port_id)
    if not isinstance(port, NeutronPort):
        return
    ports._dhcp_hosts(tx, port, add=False)
    cascade_delete(tx, Port.kind, port.tessera_port_id)
    cascade_delete(tx, NeutronPort.kind, port.id)


def _add_gateway(
    tx: Transaction,
    router: NeutronRouter,
    req: _GatewayRequest,
    make_port: Callable[[Transaction, dict[str, Any]], dict[str, Any]],
    tunnel_key: int,
) -> RouterGateway:
    assert req.network_id is not None
    net = get_network(tx, req.network_id)
    if not net.router_external:
        raise _bad(f"Network {net.id} is not an external network")
    made = make_port(
        tx,
        {
            "network_id": net.id,
            "device_owner": GATEWAY_OWNER,
            "device_id": router.id,
            **({"fixed_ips": req.fixed_ips} if req.fixed_ips is not None else {}),
        },
    )
    port = tx.get(NeutronPort, made["id"])
    if not port.fixed_ips:
        raise _bad(f"No IP addresses available on external network {net.id}")
    rport, sub = _router_port(tx, router, port, tunnel_key)
    route_ids = [_route(tx, router.router_id, sub.cidr, rport.id, None)]
    if sub.gateway_ip is not None:
        route_ids.append(_route(tx, router.router_id, "0.0.0.0/0", rport.id, sub.gateway_ip))
    rules = _snat_rules(tx, router, rport) if req.enable_snat else []
    return RouterGateway(
        network_id=net.id,
        port_id=port.id,
        router_port_id=rport.id,
        enable_snat=req.enable_snat,
        route_ids=route_ids,
        snat_rule_ids=rules,
    )


def _remove_gateway(tx: Transaction, gw: RouterGateway) -> None:
    for rule_id in gw.snat_rule_ids:
        cascade_delete(tx, Rule.kind, rule_id)
    for route_id in gw.route_ids:
        cascade_delete(tx, Route.kind, route_id)
    cascade_delete(tx, Port.kind, gw.router_port_id)
    _drop_port(tx, gw.port_id)


def _static_routes(
    tx: Transaction, router: NeutronRouter, wanted: list[tuple[str, str]]
) -> list[StaticRoute]:
    """Replace the router's static routes: each through the port whose subnet holds
    its next hop (Neutron's InvalidRoutes otherwise)."""
    for old in router.routes:
        cascade_delete(tx, Route.kind, old.route_id)
    rports = [p for p in tx.all_of(Port) if p.device_id == router.router_id]
    out = []
    for dest, hop in wanted:
        addr = ipaddress.IPv4Address(hop)
        via = next(
            (
                p
                for p in rports
                if p.network_address is not None
                and addr in ipaddress.IPv4Network(f"{p.network_address}/{p.network_length}")
                and p.port_address != hop
            ),
            None,
        )
        if via is None:
            raise bad_request(
                f"Invalid format for routes: [{{'destination': '{dest}', 'nexthop': '{hop}'}}], "
                f"the nexthop is not connected with router",
                "InvalidRoutes",
            )
        route_id = _route(tx, router.router_id, dest, via.id, hop)
        out.append(StaticRoute(destination=dest, nexthop=hop, route_id=route_id))
    return out


# -- the operations -----------------------------------------------------------------------


def view(tx: Transaction, router: NeutronRouter) -> dict[str, Any]:
    gateway: dict[str, Any] | None = None
    if router.gateway is not None:
        port = tx.find(NeutronPort.kind, router.gateway.port_id)
        fixed = port.fixed_ips if isinstance(port, NeutronPort) else []
        gateway = {
            "network_id": router.gateway.network_id,
            "enable_snat": router.gateway.enable_snat,
            "external_fixed_ips": [f.model_dump() for f in fixed],
        }
    return {
        **views._common(router),
        "admin_state_up": router.admin_state_up,
        "status": "ACTIVE",
        "external_gateway_info": gateway,
        "routes": [{"destination": r.destination, "nexthop": r.nexthop} for r in router.routes],
        "distributed": False,
        "ha": False,
        "availability_zone_hints": [],
        "availability_zones": [],
        "flavor_id": None,
        "tessera:router_id": router.router_id,
        "tessera:inbound_chain_id": router.inbound_chain_id,
        "tessera:outbound_chain_id": router.outbound_chain_id,
    }


def _gateway_port_maker(nsdb: Nsdb) -> Callable[[Transaction, dict[str, Any]], dict[str, Any]]:
    """The write of a router-owned Neutron port (interface or gateway), its id and
    tunnel key drawn now (outside the transaction, which may be re-run).

    Unlike `POST /v2.0/ports`, it makes no DHCP host: the router port answers for the
    address itself (and a subnet's gateway address cannot be a DHCP host)."""
    id = new_id()
    tunnel_key = nsdb.next_id(TUNNEL_KEY_COUNTER)

    def make(tx: Transaction, body: dict[str, Any]) -> dict[str, Any]:
        network = get_network(tx, body["network_id"])
        fixed = ports._fixed_ips(tx, network, id, body.get("fixed_ips"))
        stamp = now()
        port = NeutronPort(
            id=id,
            network_id=network.id,
            tessera_port_id=id,
            mac_address=ports._mac(tx, network.id, id, None),
            fixed_ips=fixed,
            project_id=body.get("project_id", ""),
            device_owner=body["device_owner"],
            device_id=body["device_id"],
            port_security_enabled=False,
            created_at=stamp,
            updated_at=stamp,
        )
        twin = Port(id=id, device_id=network.bridge_id, type="Bridge")
        create_object(tx, twin, tunnel_key)
        check_refs(tx, port, None)
        tx.create(port)
        return {"id": id}

    return make


def create(nsdb: Nsdb, body: dict[str, Any], project_header: str | None) -> dict[str, Any]:
    return run(nsdb, "creating a router", creator(nsdb, body, project_header))


def creator(
    nsdb: Nsdb, body: dict[str, Any], project_header: str | None
) -> Callable[[Transaction], dict[str, Any]]:
    values.refuse_unknown(body, CREATE_ATTRS)
    attrs = _attrs(body)
    project = values.project(body, project_header)
    tags = values.string_list("tags", body.get("tags"))
    gw_req = _GatewayRequest(body.get("external_gateway_info"))
    wanted_routes = _routes(body.get("routes"))
    id = new_id()
    inbound, outbound = new_id(), new_id()
    make_port = _gateway_port_maker(nsdb)
    tunnel_key = nsdb.next_id(TUNNEL_KEY_COUNTER) if gw_req.network_id else 0

    def write(tx: Transaction) -> dict[str, Any]:
        stamp = now()
        router = NeutronRouter(
            id=id,
            router_id=id,
            inbound_chain_id=inbound,
            outbound_chain_id=outbound,
            project_id=project,
            tags=tags,
            created_at=stamp,
            updated_at=stamp,
            **attrs,
        )
        tenant = project or None
        for chain_id, which in ((inbound, "inbound"), (outbound, "outbound")):
            create_object(tx, Chain(id=chain_id, name=f"OS_{which}_{id}", tenant_id=tenant))
        twin = Router(
            id=id,
            name=router.name,
            tenant_id=tenant,
            admin_state_up=router.admin_state_up,
            inbound_filter_id=inbound,
            outbound_filter_id=outbound,
        )
        check_refs(tx, twin, None)
        tx.create(twin)
        if gw_req.network_id is not None:
            router = router.model_copy(
                update={"gateway": _add_gateway(tx, router, gw_req, make_port, tunnel_key)}
            )
        if wanted_routes:
            router = router.model_copy(update={"routes": _static_routes(tx, router, wanted_routes)})
        router = NeutronRouter.model_validate(router.model_dump())
        check_refs(tx, router, None)
        tx.create(router)
        return view(tx, router)

    return write


def update(nsdb: Nsdb, id: str, body: dict[str, Any]) -> dict[str, Any]:
    values.refuse_fixed(body, READ_ONLY)
    values.refuse_unknown(body, UPDATE_ATTRS)
    attrs = _attrs(body)
    gw_given = "external_gateway_info" in body
    gw_req = _GatewayRequest(body.get("external_gateway_info"))
    wanted_routes = _routes(body["routes"]) if "routes" in body else None
    make_port = _gateway_port_maker(nsdb)
    tunnel_key = nsdb.next_id(TUNNEL_KEY_COUNTER) if gw_req.network_id else 0

    def write(tx: Transaction) -> dict[str, Any]:
        old = get_router(tx, id)
        new = old.model_copy(
            update={**attrs, "updated_at": now(), "revision_number": old.revision_number + 1}
        )
        if gw_given:
            replaced = old.gateway is not None and not (
                gw_req.network_id == old.gateway.network_id and gw_req.fixed_ips is None
            )
            if (
                replaced
                and wanted_routes is None
                and old.gateway is not None
                and _static_routes_via(tx, old, old.gateway.router_port_id)
            ):
                raise conflict(
                    "RouterExternalGatewayInUseByRoute",
                    f"Gateway cannot be updated for router {id}: one or more of its routes "
                    "have their next hop on the external network.",
                )
            gateway = _change_gateway(tx, new, gw_req, make_port, tunnel_key)
            new = new.model_copy(update={"gateway": gateway})
        if wanted_routes is not None:
            new = new.model_copy(update={"routes": _static_routes(tx, new, wanted_routes)})
        new = NeutronRouter.model_validate(new.model_dump())
        tx.put(new)
        twin = tx.get(Router, old.router_id)
        tx.put(twin.model_copy(update={"name": new.name, "admin_state_up": new.admin_state_up}))
        return view(tx, new)

    return run(nsdb, f"updating router {id}", write)


def _change_gateway(
    tx: Transaction,
    router: NeutronRouter,
    req: _GatewayRequest,
    make_port: Callable[[Transaction, dict[str, Any]], dict[str, Any]],
    tunnel_key: int,
) -> RouterGateway | None:
    """`router set/unset --external-gateway`: the same network without new addresses
    only switches SNAT; anything else replaces the gateway."""
    old = router.gateway
    if old is not None and req.network_id == old.network_id and req.fixed_ips is None:
        if req.enable_snat == old.enable_snat:
            return old
        for rule_id in old.snat_rule_ids:
            cascade_delete(tx, Rule.kind, rule_id)
        rules: list[str] = []
        if req.enable_snat:
            rules = _snat_rules(tx, router, tx.get(Port, old.router_port_id))
        return old.model_copy(update={"enable_snat": req.enable_snat, "snat_rule_ids": rules})
    if old is not None:
        if req.network_id is None and _has_floating_ips(tx, router):
            raise conflict(
                "RouterExternalGatewayInUseByFloatingIp",
                f"Gateway cannot be updated for router {router.id}, since a gateway to "
                f"external network {old.network_id} is required by one or more floating IPs.",
            )
        _remove_gateway(tx, old)
    if req.network_id is None:
        return None
    return _add_gateway(tx, router, req, make_port, tunnel_key)


def _has_floating_ips(tx: Transaction, router: NeutronRouter) -> bool:
    """Read here from the stored floating IPs (floatingips.py builds on this module)."""
    return any(f.router_id == router.id for f in tx.all_of(NeutronFloatingIp))


def _floating_ips_behind(tx: Transaction, router_id: str, subnet_cidr: str) -> bool:
    """Whether a floating IP of `router_id` translates to an address in `subnet_cidr`."""
    net = ipaddress.IPv4Network(subnet_cidr)
    return any(
        f.router_id == router_id
        and f.fixed_ip_address is not None
        and ipaddress.IPv4Address(f.fixed_ip_address) in net
        for f in tx.all_of(NeutronFloatingIp)
    )


def delete(nsdb: Nsdb, id: str) -> None:
    """Refused (409 RouterInUse) while it has interfaces, as Neutron does; removes its
    gateway, routes, chains and twin otherwise."""

    def write(tx: Transaction) -> None:
        router = get_router(tx, id)
        if router.interfaces:
            raise conflict(
                "RouterInUse",
                f"Router {id} still has ports",
            )
        if router.gateway is not None:
            _remove_gateway(tx, router.gateway)
        cascade_delete(tx, Router.kind, router.router_id)
        cascade_delete(tx, NeutronRouter.kind, router.id)
        for chain_id in (router.inbound_chain_id, router.outbound_chain_id):
            cascade_delete(tx, Chain.kind, chain_id)

    run(nsdb, f"deleting router {id}", write)


def show(nsdb: Nsdb, id: str) -> dict[str, Any]:
    tx = Transaction(nsdb)
    return view(tx, get_router(tx, id))


def listing(nsdb: Nsdb) -> list[dict[str, Any]]:
    tx = Transaction(nsdb)
    return [view(tx, r) for r in tx.all_of(NeutronRouter)]


# -- interfaces ---------------------------------------------------------------------------


def _interface_body(body: Any) -> tuple[str | None, str | None]:
    if not isinstance(body, dict):
        raise bad_request("Invalid input: expected a JSON object.")
    values.refuse_unknown(body, {"subnet_id", "port_id"})
    subnet_id = body.get("subnet_id")
    port_id = body.get("port_id")
    if (subnet_id is None) == (port_id is None):
        raise _bad("Either subnet_id or port_id must be specified")
    if subnet_id is not None:
        return values.text("subnet_id", subnet_id), None
    return None, values.text("port_id", port_id)


def _interface_view(router: NeutronRouter, port: NeutronPort, sub_id: str) -> dict[str, Any]:
    return {
        "id": router.id,
        "subnet_id": sub_id,
        "subnet_ids": [sub_id],
        "port_id": port.id,
        "network_id": port.network_id,
        "tenant_id": router.project_id,
        "project_id": router.project_id,
    }


def add_interface(nsdb: Nsdb, id: str, body: Any) -> dict[str, Any]:
    subnet_id, port_id = _interface_body(body)
    tunnel_key = nsdb.next_id(TUNNEL_KEY_COUNTER)
    make_port = _gateway_port_maker(nsdb)

    def write(tx: Transaction) -> dict[str, Any]:
        router = get_router(tx, id)
        if subnet_id is not None:
            sub = get_subnet(tx, subnet_id)
            if sub.gateway_ip is None:
                raise _bad("Subnet for router interface must have a gateway IP")
            if any(i.subnet_id == sub.id for i in router.interfaces):
                raise _bad(f"Router already has a port on subnet {sub.id}")
            made = make_port(
                tx,
                {
                    "network_id": sub.network_id,
                    "device_owner": INTERFACE_OWNER,
                    "device_id": router.id,
                    "project_id": router.project_id,
                    "fixed_ips": [{"subnet_id": sub.id, "ip_address": sub.gateway_ip}],
                },
            )
            port = tx.get(NeutronPort, made["id"])
        else:
            assert port_id is not None
            port = ports.get_port(tx, port_id)
            if port.device_id or port.device_owner:
                raise conflict(
                    "PortInUse",
                    f"Unable to complete operation on port {port.id} for network "
                    f"{port.network_id}. Port already has an attached device {port.device_id}.",
                )
            if len(port.fixed_ips) != 1:
                raise _bad(
                    "Router port must have exactly one fixed IP"
                    if port.fixed_ips
                    else f"Port {port.id} does not have any IP addresses"
                )
            port = port.model_copy(
                update={
                    "device_owner": INTERFACE_OWNER,
                    "device_id": router.id,
                    "updated_at": now(),
                    "revision_number": port.revision_number + 1,
                }
            )
            tx.put(port)
        rport, sub = _router_port(tx, router, port, tunnel_key)
        route_id = _route(tx, router.router_id, sub.cidr, rport.id, None)
        interface = RouterInterface(
            port_id=port.id, subnet_id=sub.id, router_port_id=rport.id, route_id=route_id
        )
        tx.put(
            router.model_copy(
                update={
                    "interfaces": [*router.interfaces, interface],
                    "updated_at": now(),
                    "revision_number": router.revision_number + 1,
                }
            )
        )
        return _interface_view(router, port, sub.id)

    return run(nsdb, f"adding an interface to router {id}", write)


def remove_interface(nsdb: Nsdb, id: str, body: Any) -> dict[str, Any]:
    subnet_id, port_id = _interface_body(body)

    def write(tx: Transaction) -> dict[str, Any]:
        router = get_router(tx, id)
        if subnet_id is not None:
            get_subnet(tx, subnet_id)
            found = [i for i in router.interfaces if i.subnet_id == subnet_id]
            if not found:
                raise not_found(
                    "RouterInterfaceNotFoundForSubnet",
                    f"Router {id} has no interface on subnet {subnet_id}",
                )
        else:
            ports.get_port(tx, port_id or "")
            found = [i for i in router.interfaces if i.port_id == port_id]
            if not found:
                raise not_found(
                    "RouterInterfaceNotFound",
                    f"Router {id} does not have an interface with id {port_id}",
                )
        interface = found[0]
        found_port = tx.find(NeutronPort.kind, interface.port_id)
        sub = tx.find(NeutronSubnet.kind, interface.subnet_id)
        if isinstance(sub, NeutronSubnet) and _floating_ips_behind(tx, router.id, sub.cidr):
            raise conflict(
                "RouterInterfaceInUseByFloatingIP",
                f"Router interface for subnet {interface.subnet_id} on router {id} cannot be "
                "deleted, as it is required by one or more floating IPs.",
            )
        if _static_routes_via(tx, router, interface.router_port_id):
            raise conflict(
                "RouterInterfaceInUseByRoute",
                f"Router interface for subnet {interface.subnet_id} on router {id} cannot be "
                "deleted, as it is required by one or more routes.",
            )
        cascade_delete(tx, Route.kind, interface.route_id)
        cascade_delete(tx, Port.kind, interface.router_port_id)
        _drop_port(tx, interface.port_id)
        tx.put(
            router.model_copy(
                update={
                    "interfaces": [i for i in router.interfaces if i != interface],
                    "updated_at": now(),
                    "revision_number": router.revision_number + 1,
                }
            )
        )
        return {
            "id": router.id,
            "subnet_id": interface.subnet_id,
            "subnet_ids": [interface.subnet_id],
            "port_id": interface.port_id,
            "network_id": found_port.network_id if isinstance(found_port, NeutronPort) else None,
            "tenant_id": router.project_id,
            "project_id": router.project_id,
        }

    return run(nsdb, f"removing an interface from router {id}", write)


def _static_routes_via(tx: Transaction, router: NeutronRouter, router_port_id: str) -> bool:
    for static in router.routes:
        route = tx.find(Route.kind, static.route_id)
        if isinstance(route, Route) and route.next_hop_port == router_port_id:
            return True
    return False
