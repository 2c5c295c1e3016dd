"""Port mirrors: which packets to copy to which port; ports, bridges and routers name
them in `inbound_mirror_ids` / `outbound_mirror_ids`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from tessera.api.deps import Store, build, id_param, oid, sent
from tessera.api.filters import TenantId, of_tenant
from tessera.api.schemas import MirrorCreate, MirrorUpdate
from tessera.model import Mirror

router = APIRouter(tags=["mirrors"])

MirrorId = Annotated[str, id_param("mirror")]


@router.get("/mirrors")
def list_mirrors(store: Store, tenant_id: TenantId = None) -> list[Mirror]:
    return of_tenant(store.list(Mirror), tenant_id)


@router.post("/mirrors", status_code=201)
def create_mirror(body: MirrorCreate, store: Store) -> Mirror:
    """A packet is copied to `to_port_id` when it matches any of `conditions` (each
    with the condition fields of a rule); no conditions copies every packet."""
    return store.create(build(Mirror, body))


@router.get("/mirrors/{mirror_id}")
def get_mirror(mirror_id: MirrorId, store: Store) -> Mirror:
    return store.get(Mirror, oid("mirrors", mirror_id))


@router.put("/mirrors/{mirror_id}")
def update_mirror(mirror_id: MirrorId, body: MirrorUpdate, store: Store) -> Mirror:
    return store.update(Mirror, oid("mirrors", mirror_id), sent(body))


@router.delete("/mirrors/{mirror_id}", status_code=204)
def delete_mirror(mirror_id: MirrorId, store: Store) -> None:
    """Also removes it from the ports and devices that name it."""
    store.delete(Mirror, oid("mirrors", mirror_id))
