"""Routers (virtual L3 routers) and their ARP tables."""

from __future__ import annotations

from fastapi import APIRouter

from tessera.api.deps import RouterId, Store, build, oid, sent
from tessera.api.filters import TenantId, of_tenant
from tessera.api.schemas import RouterCreate, RouterUpdate
from tessera.model import Router
from tessera.nsdb.tables import ArpEntry

router = APIRouter(tags=["routers"])


@router.get("/routers")
def list_routers(store: Store, tenant_id: TenantId = None) -> list[Router]:
    return of_tenant(store.list(Router), tenant_id)


@router.post("/routers", status_code=201)
def create_router(body: RouterCreate, store: Store) -> Router:
    return store.create(build(Router, body))


@router.get("/routers/{router_id}")
def get_router(router_id: RouterId, store: Store) -> Router:
    return store.get(Router, oid("routers", router_id))


@router.put("/routers/{router_id}")
def update_router(router_id: RouterId, body: RouterUpdate, store: Store) -> Router:
    return store.update(Router, oid("routers", router_id), sent(body))


@router.delete("/routers/{router_id}", status_code=204)
def delete_router(router_id: RouterId, store: Store) -> None:
    """Deletes the router with its ports (unlinking their peers) and routes."""
    store.delete(Router, oid("routers", router_id))


@router.get("/routers/{router_id}/arp_table")
def get_router_arp_table(router_id: RouterId, store: Store) -> list[ArpEntry]:
    """IP-to-MAC resolutions the router's agents hold (`expiry` is a Unix time)."""
    return store.arp_table(oid("routers", router_id))
