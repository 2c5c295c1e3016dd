"""Pools and their members: the backends a VIP spreads its connections over. `status`
is the server's (the health-monitor service writes it): ignored when a client sends it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from tessera.api.deps import Store, build, id_param, oid, sent
from tessera.api.schemas import PoolCreate, PoolMemberCreate, PoolMemberUpdate, PoolUpdate
from tessera.model import Pool, PoolMember, Vip

router = APIRouter(tags=["pools"])

PoolId = Annotated[str, id_param("pool")]
PoolMemberId = Annotated[str, id_param("pool member")]


@router.get("/pools")
def list_pools(store: Store) -> list[Pool]:
    return store.list(Pool)


@router.post("/pools", status_code=201)
def create_pool(body: PoolCreate, store: Store) -> Pool:
    return store.create(build(Pool, body))


@router.get("/pools/{pool_id}")
def get_pool(pool_id: PoolId, store: Store) -> Pool:
    return store.get(Pool, oid("pools", pool_id))


@router.put("/pools/{pool_id}")
def update_pool(pool_id: PoolId, body: PoolUpdate, store: Store) -> Pool:
    """`load_balancer_id` is fixed at creation (its VIPs name the pool)."""
    return store.update(Pool, oid("pools", pool_id), sent(body))


@router.delete("/pools/{pool_id}", status_code=204)
def delete_pool(pool_id: PoolId, store: Store) -> None:
    """Also deletes its members and the VIPs that send connections to it."""
    store.delete(Pool, oid("pools", pool_id))


@router.get("/pools/{pool_id}/pool_members")
def list_pool_pool_members(pool_id: PoolId, store: Store) -> list[PoolMember]:
    return store.children(Pool, oid("pools", pool_id), PoolMember, "pool_id")


@router.get("/pools/{pool_id}/vips")
def list_pool_vips(pool_id: PoolId, store: Store) -> list[Vip]:
    return store.children(Pool, oid("pools", pool_id), Vip, "pool_id")


@router.get("/pool_members")
def list_pool_members(store: Store) -> list[PoolMember]:
    return store.list(PoolMember)


@router.post("/pool_members", status_code=201)
def create_pool_member(body: PoolMemberCreate, store: Store) -> PoolMember:
    """An address and port pair is one member of a pool (409)."""
    return store.create(build(PoolMember, body))


@router.get("/pool_members/{pool_member_id}")
def get_pool_member(pool_member_id: PoolMemberId, store: Store) -> PoolMember:
    return store.get(PoolMember, oid("pool_members", pool_member_id))


@router.put("/pool_members/{pool_member_id}")
def update_pool_member(
    pool_member_id: PoolMemberId, body: PoolMemberUpdate, store: Store
) -> PoolMember:
    return store.update(PoolMember, oid("pool_members", pool_member_id), sent(body))


@router.delete("/pool_members/{pool_member_id}", status_code=204)
def delete_pool_member(pool_member_id: PoolMemberId, store: Store) -> None:
    store.delete(PoolMember, oid("pool_members", pool_member_id))
