"""Hosts (registered by their agents, read-only here) and port bindings on them."""

from __future__ import annotations

from fastapi import APIRouter

from tessera.api.deps import HostId, PortId, Store, oid
from tessera.api.schemas import Binding, BindingRequest
from tessera.model import Host

router = APIRouter(tags=["hosts"])


@router.get("/hosts")
def list_hosts(store: Store) -> list[Host]:
    """`alive` is true exactly while the host's agent holds its NSDB session."""
    return store.list(Host)


@router.get("/hosts/{host_id}")
def get_host(host_id: HostId, store: Store) -> Host:
    return store.get(Host, oid("hosts", host_id))


@router.delete("/hosts/{host_id}", status_code=204)
def delete_host(host_id: HostId, store: Store) -> None:
    """Forgets a dead host: its ports are unbound and it leaves its tunnel zones.
    A live host is refused (409): its agent would register it again."""
    store.delete_host(oid("hosts", host_id))


@router.get("/hosts/{host_id}/ports")
def list_host_bindings(host_id: HostId, store: Store) -> list[Binding]:
    return [
        Binding(host_id=b.host_id, port_id=b.port_id, interface_name=b.interface_name)
        for b in store.bindings(oid("hosts", host_id))
    ]


@router.post("/hosts/{host_id}/ports", status_code=201)
def create_host_binding(host_id: HostId, body: BindingRequest, store: Store) -> Binding:
    """Binds the port to the host's interface (a bound port moves; a linked one or an
    interface already bound to another port is refused with 409)."""
    b = store.bind(oid("hosts", host_id), body.port_id, body.interface_name)
    return Binding(host_id=b.host_id, port_id=b.port_id, interface_name=b.interface_name)


@router.delete("/hosts/{host_id}/ports/{port_id}", status_code=204)
def delete_host_binding(host_id: HostId, port_id: PortId, store: Store) -> None:
    store.unbind(oid("hosts", host_id), oid("ports", port_id))
