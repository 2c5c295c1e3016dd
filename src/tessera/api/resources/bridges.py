"""Bridges (virtual L2 switches) and the MAC addresses they have learned."""

from __future__ import annotations

from fastapi import APIRouter

from tessera.api.deps import BridgeId, Store, build, oid, sent
from tessera.api.filters import TenantId, of_tenant
from tessera.api.schemas import BridgeCreate, BridgeUpdate
from tessera.model import Bridge
from tessera.nsdb.tables import MacEntry

router = APIRouter(tags=["bridges"])


@router.get("/bridges")
def list_bridges(store: Store, tenant_id: TenantId = None) -> list[Bridge]:
    return of_tenant(store.list(Bridge), tenant_id)


@router.post("/bridges", status_code=201)
def create_bridge(body: BridgeCreate, store: Store) -> Bridge:
    return store.create(build(Bridge, body))


@router.get("/bridges/{bridge_id}")
def get_bridge(bridge_id: BridgeId, store: Store) -> Bridge:
    return store.get(Bridge, oid("bridges", bridge_id))


@router.put("/bridges/{bridge_id}")
def update_bridge(bridge_id: BridgeId, body: BridgeUpdate, store: Store) -> Bridge:
    return store.update(Bridge, oid("bridges", bridge_id), sent(body))


@router.delete("/bridges/{bridge_id}", status_code=204)
def delete_bridge(bridge_id: BridgeId, store: Store) -> None:
    """Deletes the bridge with its ports (unlinking their peers) and DHCP subnets."""
    store.delete(Bridge, oid("bridges", bridge_id))


@router.get("/bridges/{bridge_id}/mac_table")
def get_bridge_mac_table(bridge_id: BridgeId, store: Store) -> list[MacEntry]:
    """MAC addresses the bridge has learned, as agents report them."""
    return store.mac_table(oid("bridges", bridge_id))
