"""Chains: ordered rule lists used as filters of devices and ports."""

from __future__ import annotations

from fastapi import APIRouter

from tessera.api.deps import ChainId, Store, build, oid, sent
from tessera.api.filters import TenantId, of_tenant
from tessera.api.schemas import ChainCreate, ChainUpdate
from tessera.model import Chain

router = APIRouter(tags=["chains"])


@router.get("/chains")
def list_chains(store: Store, tenant_id: TenantId = None) -> list[Chain]:
    return of_tenant(store.list(Chain), tenant_id)


@router.post("/chains", status_code=201)
def create_chain(body: ChainCreate, store: Store) -> Chain:
    return store.create(build(Chain, body))


@router.get("/chains/{chain_id}")
def get_chain(chain_id: ChainId, store: Store) -> Chain:
    return store.get(Chain, oid("chains", chain_id))


@router.put("/chains/{chain_id}")
def update_chain(chain_id: ChainId, body: ChainUpdate, store: Store) -> Chain:
    """Renames the chain; `rule_ids` is read-only (insert rules at a `position`)."""
    return store.update(Chain, oid("chains", chain_id), sent(body))


@router.delete("/chains/{chain_id}", status_code=204)
def delete_chain(chain_id: ChainId, store: Store) -> None:
    """Deletes its rules and rules jumping to it; filters naming it are cleared."""
    store.delete(Chain, oid("chains", chain_id))
