"""Routes of routers."""

from __future__ import annotations

from fastapi import APIRouter

from tessera.api.deps import RouteId, RouterId, Store, build, oid, sent
from tessera.api.schemas import RouteCreate, RouteUpdate
from tessera.model import Route

router = APIRouter(tags=["routes"])


@router.get("/routers/{router_id}/routes")
def list_router_routes(router_id: RouterId, store: Store) -> list[Route]:
    return store.routes_of(oid("routers", router_id))


@router.post("/routers/{router_id}/routes", status_code=201)
def create_route(router_id: RouterId, body: RouteCreate, store: Store) -> Route:
    """`next_hop_port` must be a port of this router (required for `Normal` routes)."""
    return store.create(build(Route, body, router_id=oid("routers", router_id)))


@router.get("/routes/{route_id}")
def get_route(route_id: RouteId, store: Store) -> Route:
    return store.get(Route, oid("routes", route_id))


@router.put("/routes/{route_id}")
def update_route(route_id: RouteId, body: RouteUpdate, store: Store) -> Route:
    return store.update(Route, oid("routes", route_id), sent(body))


@router.delete("/routes/{route_id}", status_code=204)
def delete_route(route_id: RouteId, store: Store) -> None:
    store.delete(Route, oid("routes", route_id))
