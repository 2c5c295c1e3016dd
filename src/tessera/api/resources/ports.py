"""Ports of bridges and routers, and links between interior ports."""

from __future__ import annotations

from fastapi import APIRouter

from tessera.api.deps import BridgeId, PortId, RouterId, Store, build, oid, sent
from tessera.api.schemas import BridgePortCreate, LinkRequest, PortUpdate, RouterPortCreate
from tessera.model import Bridge, Port, Router
from tessera.nsdb.errors import IntegrityError
from tessera.nsdb.store import Binding

router = APIRouter(tags=["ports"])


@router.get("/bridges/{bridge_id}/ports")
def list_bridge_ports(bridge_id: BridgeId, store: Store) -> list[Port]:
    return store.ports_of(Bridge, oid("bridges", bridge_id))


def _create(store: Store, port: Port) -> Port:
    """A port as the body describes it: `host_id` + `interface_name` bind it in the same
    transaction (as `POST /hosts/{id}/ports`); a link needs both ports to exist first."""
    if port.peer_id is not None:
        raise IntegrityError(
            "peer_id: create the port unlinked, then link it with POST /ports/{id}/link "
            '{"peer_id": ...}'
        )
    bind_to = None
    if port.host_id is not None and port.interface_name is not None:
        bind_to = Binding(port.host_id, port.id, port.interface_name)
    return store.create(port, bind_to=bind_to)


@router.post("/bridges/{bridge_id}/ports", status_code=201)
def create_bridge_port(bridge_id: BridgeId, body: BridgePortCreate, store: Store) -> Port:
    """The server assigns the port's `tunnel_key`. With `host_id` and `interface_name`
    the port is created bound; link it afterwards."""
    port = build(Port, body, device_id=oid("bridges", bridge_id), type="Bridge")
    return _create(store, port)


@router.get("/routers/{router_id}/ports")
def list_router_ports(router_id: RouterId, store: Store) -> list[Port]:
    return store.ports_of(Router, oid("routers", router_id))


@router.post("/routers/{router_id}/ports", status_code=201)
def create_router_port(router_id: RouterId, body: RouterPortCreate, store: Store) -> Port:
    """Without `port_mac` the server picks a unique locally administered MAC. With
    `host_id` and `interface_name` the port is created bound."""
    port = build(Port, body, device_id=oid("routers", router_id), type="Router")
    return _create(store, port)


@router.get("/ports")
def list_ports(store: Store) -> list[Port]:
    return store.list(Port)


@router.get("/ports/{port_id}")
def get_port(port_id: PortId, store: Store) -> Port:
    return store.get(Port, oid("ports", port_id))


@router.put("/ports/{port_id}")
def update_port(port_id: PortId, body: PortUpdate, store: Store) -> Port:
    """Changes the filters and `admin_state_up`; addressing and VLAN are fixed at
    creation, links and bindings have their own operations."""
    return store.update(Port, oid("ports", port_id), sent(body))


@router.delete("/ports/{port_id}", status_code=204)
def delete_port(port_id: PortId, store: Store) -> None:
    """Also unlinks its peer, deletes routes via it, removes it from port groups and
    rules (a rule left with no port at all is deleted, never widened)."""
    store.delete(Port, oid("ports", port_id))


@router.post("/ports/{port_id}/link", status_code=201)
def link_port(port_id: PortId, body: LinkRequest, store: Store) -> Port:
    """Joins two unbound, unlinked ports of different devices; returns this port."""
    return store.link(oid("ports", port_id), body.peer_id)


@router.delete("/ports/{port_id}/link", status_code=204)
def unlink_port(port_id: PortId, store: Store) -> None:
    """Unlinks the port and its peer (nothing to do for an unlinked port)."""
    store.unlink(oid("ports", port_id))
