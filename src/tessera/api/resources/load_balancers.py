"""Load balancers and their VIPs: a router's load balancer sends the connections it
receives for a VIP (address, TCP port) to the members of the VIP's pool."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from tessera.api.deps import Store, build, id_param, oid, sent
from tessera.api.schemas import LoadBalancerCreate, LoadBalancerUpdate, VipCreate, VipUpdate
from tessera.model import LoadBalancer, Pool, Vip

router = APIRouter(tags=["load balancers"])

LoadBalancerId = Annotated[str, id_param("load balancer")]
VipId = Annotated[str, id_param("VIP")]


@router.get("/load_balancers")
def list_load_balancers(store: Store) -> list[LoadBalancer]:
    return store.list(LoadBalancer)


@router.post("/load_balancers", status_code=201)
def create_load_balancer(body: LoadBalancerCreate, store: Store) -> LoadBalancer:
    """A router has at most one load balancer (409 for a second one)."""
    return store.create(build(LoadBalancer, body))


@router.get("/load_balancers/{load_balancer_id}")
def get_load_balancer(load_balancer_id: LoadBalancerId, store: Store) -> LoadBalancer:
    return store.get(LoadBalancer, oid("load_balancers", load_balancer_id))


@router.put("/load_balancers/{load_balancer_id}")
def update_load_balancer(
    load_balancer_id: LoadBalancerId, body: LoadBalancerUpdate, store: Store
) -> LoadBalancer:
    return store.update(LoadBalancer, oid("load_balancers", load_balancer_id), sent(body))


@router.delete("/load_balancers/{load_balancer_id}", status_code=204)
def delete_load_balancer(load_balancer_id: LoadBalancerId, store: Store) -> None:
    """Also deletes its pools (with their members) and its VIPs."""
    store.delete(LoadBalancer, oid("load_balancers", load_balancer_id))


@router.get("/load_balancers/{load_balancer_id}/pools")
def list_load_balancer_pools(load_balancer_id: LoadBalancerId, store: Store) -> list[Pool]:
    lb = oid("load_balancers", load_balancer_id)
    return store.children(LoadBalancer, lb, Pool, "load_balancer_id")


@router.get("/load_balancers/{load_balancer_id}/vips")
def list_load_balancer_vips(load_balancer_id: LoadBalancerId, store: Store) -> list[Vip]:
    lb = oid("load_balancers", load_balancer_id)
    return store.children(LoadBalancer, lb, Vip, "load_balancer_id")


@router.get("/vips")
def list_vips(store: Store) -> list[Vip]:
    return store.list(Vip)


@router.post("/vips", status_code=201)
def create_vip(body: VipCreate, store: Store) -> Vip:
    """`pool_id` must be a pool of `load_balancer_id` (400); an address and port pair is
    one VIP of a load balancer (409)."""
    return store.create(build(Vip, body))


@router.get("/vips/{vip_id}")
def get_vip(vip_id: VipId, store: Store) -> Vip:
    return store.get(Vip, oid("vips", vip_id))


@router.put("/vips/{vip_id}")
def update_vip(vip_id: VipId, body: VipUpdate, store: Store) -> Vip:
    return store.update(Vip, oid("vips", vip_id), sent(body))


@router.delete("/vips/{vip_id}", status_code=204)
def delete_vip(vip_id: VipId, store: Store) -> None:
    store.delete(Vip, oid("vips", vip_id))
