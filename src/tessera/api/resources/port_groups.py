"""Port groups: sets of ports named by rules; a stateful one shares connection state."""

from __future__ import annotations

from fastapi import APIRouter

from tessera.api.deps import PortGroupId, PortId, Store, build, oid, sent
from tessera.api.filters import TenantId, of_tenant
from tessera.api.schemas import (
    PortGroupCreate,
    PortGroupPort,
    PortGroupPortRequest,
    PortGroupUpdate,
)
from tessera.model import PortGroup

router = APIRouter(tags=["port groups"])


@router.get("/port_groups")
def list_port_groups(store: Store, tenant_id: TenantId = None) -> list[PortGroup]:
    return of_tenant(store.list(PortGroup), tenant_id)


@router.post("/port_groups", status_code=201)
def create_port_group(body: PortGroupCreate, store: Store) -> PortGroup:
    return store.create(build(PortGroup, body))


@router.get("/port_groups/{port_group_id}")
def get_port_group(port_group_id: PortGroupId, store: Store) -> PortGroup:
    return store.get(PortGroup, oid("port_groups", port_group_id))


@router.put("/port_groups/{port_group_id}")
def update_port_group(port_group_id: PortGroupId, body: PortGroupUpdate, store: Store) -> PortGroup:
    """`port_ids` is read-only: add and remove members through `/ports`."""
    return store.update(PortGroup, oid("port_groups", port_group_id), sent(body))


@router.delete("/port_groups/{port_group_id}", status_code=204)
def delete_port_group(port_group_id: PortGroupId, store: Store) -> None:
    """Also deletes the rules that match on this group."""
    store.delete(PortGroup, oid("port_groups", port_group_id))


@router.get("/port_groups/{port_group_id}/ports")
def list_port_group_ports(port_group_id: PortGroupId, store: Store) -> list[PortGroupPort]:
    group = oid("port_groups", port_group_id)
    return [PortGroupPort(port_group_id=group, port_id=p) for p in store.port_group_ports(group)]


@router.post("/port_groups/{port_group_id}/ports", status_code=201)
def add_port_group_port(
    port_group_id: PortGroupId, body: PortGroupPortRequest, store: Store
) -> PortGroupPort:
    group = oid("port_groups", port_group_id)
    store.add_port_group_port(group, body.port_id)
    return PortGroupPort(port_group_id=group, port_id=body.port_id)


@router.delete("/port_groups/{port_group_id}/ports/{port_id}", status_code=204)
def remove_port_group_port(port_group_id: PortGroupId, port_id: PortId, store: Store) -> None:
    store.remove_port_group_port(oid("port_groups", port_group_id), oid("ports", port_id))
