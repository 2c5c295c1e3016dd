"""Placement (docs/placement.md) with the shapes of OpenStack Placement, under
`/placement`: resource providers and their inventories, traits, aggregates and
allocations; allocations per consumer; allocation candidates; resource classes and
traits. `POST /placement/requests` is tessera's own: the scheduler places a request
and records it. Without Cassandra every one of these answers 503.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tessera.api.errors import error
from tessera.placement.backend import PlacementBackend
from tessera.placement.errors import Conflict, Invalid, NotFound, PlacementError
from tessera.placement.model import (
    Inventory,
    check_amounts,
    check_name,
    fits,
    parse_resources,
    parse_traits,
)
from tessera.placement.scheduler import WEIGHERS, Scheduler, candidates
from tessera.placement.store import PlacementStore, Provider, provider_id

router = APIRouter(prefix="/placement", tags=["placement"])

#: Claims a PUT /allocations retries when other claims move a provider's generation.
CLAIM_TRIES = 20


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A provider's generation is a Cassandra bigint: a larger number could never match one,
# and the driver refuses to send it (a 500 before this bound made it a 422). 2**53, not
# 2**63 - 1: JSON clients compare numbers as doubles, and the bigint's limit rounds up.
Generation = Annotated[int, Field(ge=0, le=2**53)]


class ProviderCreate(_Body):
    name: str = Field(min_length=1, max_length=200)
    uuid: str | None = None


class ProviderUpdate(_Body):
    name: str = Field(min_length=1, max_length=200)
    resource_provider_generation: Generation | None = None


class InventoriesPut(_Body):
    resource_provider_generation: Generation
    inventories: dict[str, dict[str, Any]]


class TraitsPut(_Body):
    resource_provider_generation: Generation
    traits: list[str]


class AggregatesPut(_Body):
    resource_provider_generation: Generation
    aggregates: list[str]


class ProviderAllocation(_Body):
    resources: dict[str, int]


class AllocationsPut(_Body):
    allocations: dict[str, ProviderAllocation]
    project_id: str | None = None
    user_id: str | None = None


class ResourceClassPut(_Body):
    discrete: bool = False


class RequestCreate(_Body):
    resources: dict[str, int]
    required: list[str] = []
    member_of: list[str] = []
    consumer: str | None = None
    weigher: str = Field("spread", pattern="^(spread|pack)$")


def _store(request: Request) -> PlacementStore:
    backend: PlacementBackend = request.app.state.placement
    return backend.store()


def install(app: FastAPI, backend: PlacementBackend) -> None:
    """The backend and the handler turning placement errors into their statuses."""
    app.state.placement = backend

    async def on_placement_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PlacementError)
        return error(exc.status, str(exc) or type(exc).__name__)

    app.add_exception_handler(PlacementError, on_placement_error)


def _provider_json(p: Provider) -> dict[str, Any]:
    out = p.to_json()
    out["links"] = [{"rel": "self", "href": f"/resource_providers/{p.uuid}"}]
    return out


# -- resource providers ---------------------------------------------------------------


@router.get("/resource_providers")
def list_resource_providers(
    request: Request,
    name: str | None = None,
    required: Annotated[str | None, Query(description="traits, comma-separated")] = None,
    resources: Annotated[str | None, Query(description="e.g. VCPU:2,MEMORY_MB:2048")] = None,
) -> dict[str, Any]:
    """Every provider (or those with `name`, the `required` traits, room for
    `resources`), read from Cassandra now."""
    store = _store(request)
    needed = set(parse_traits(required)) if required else set()
    wanted = parse_resources(resources) if resources else None
    out = []
    for p in store.providers():
        if name is not None and p.name != name:
            continue
        if not needed <= p.traits:
            continue
        if wanted is not None and fits(p.inventories, p.usages, wanted) is None:
            continue
        out.append(_provider_json(p))
    return {"resource_providers": out}


@router.post("/resource_providers")
def create_resource_provider(request: Request, body: ProviderCreate) -> dict[str, Any]:
    """A provider at generation 0 (its uuid the body's, else a new one); 409 if the
    uuid or the name is taken."""
    return _provider_json(_store(request).create_provider(body.name, body.uuid))


@router.get("/resource_providers/{uuid}")
def get_resource_provider(request: Request, uuid: str) -> dict[str, Any]:
    return _provider_json(_store(request).provider(uuid))


@router.put("/resource_providers/{uuid}")
def update_resource_provider(request: Request, uuid: str, body: ProviderUpdate) -> dict[str, Any]:
    """Rename (409 on a stale `resource_provider_generation`, when given)."""
    store = _store(request)
    return _provider_json(store.rename_provider(uuid, body.name, body.resource_provider_generation))


@router.delete("/resource_providers/{uuid}", status_code=204)
def delete_resource_provider(request: Request, uuid: str) -> Response:
    """409 while it has allocations."""
    _store(request).delete_provider(uuid)
    return Response(status_code=204)


@router.get("/resource_providers/{uuid}/inventories")
def get_inventories(request: Request, uuid: str) -> dict[str, Any]:
    p = _store(request).provider(uuid)
    return {
        "resource_provider_generation": p.generation,
        "inventories": {k: v.to_json() for k, v in sorted(p.inventories.items())},
    }


@router.put("/resource_providers/{uuid}/inventories")
def put_inventories(request: Request, uuid: str, body: InventoriesPut) -> dict[str, Any]:
    """Replace every inventory; 409 if `resource_provider_generation` is stale or a
    class in use would shrink below its usage or go."""
    store = _store(request)
    inventories = {}
    for name, fields in body.inventories.items():
        check_name("resource class", name)
        inventories[name] = Inventory.from_json(fields)
    p = store.set_inventories(uuid, body.resource_provider_generation, inventories)
    return {
        "resource_provider_generation": p.generation,
        "inventories": {k: v.to_json() for k, v in sorted(p.inventories.items())},
    }


@router.get("/resource_providers/{uuid}/usages")
def get_usages(request: Request, uuid: str) -> dict[str, Any]:
    p = _store(request).provider(uuid)
    return {"resource_provider_generation": p.generation, "usages": p.to_json()["usages"]}


@router.get("/resource_providers/{uuid}/traits")
def get_provider_traits(request: Request, uuid: str) -> dict[str, Any]:
    p = _store(request).provider(uuid)
    return {"resource_provider_generation": p.generation, "traits": sorted(p.traits)}


@router.put("/resource_providers/{uuid}/traits")
def put_provider_traits(request: Request, uuid: str, body: TraitsPut) -> dict[str, Any]:
    """Replace the traits (each must exist: PUT /traits/CUSTOM_... first)."""
    for t in body.traits:
        check_name("trait", t)
    p = _store(request).set_traits(uuid, body.resource_provider_generation, body.traits)
    return {"resource_provider_generation": p.generation, "traits": sorted(p.traits)}


@router.get("/resource_providers/{uuid}/aggregates")
def get_provider_aggregates(request: Request, uuid: str) -> dict[str, Any]:
    p = _store(request).provider(uuid)
    return {"resource_provider_generation": p.generation, "aggregates": sorted(p.aggregates)}


@router.put("/resource_providers/{uuid}/aggregates")
def put_provider_aggregates(request: Request, uuid: str, body: AggregatesPut) -> dict[str, Any]:
    """Replace the aggregates (uuids: a zone, a rack...)."""
    for a in body.aggregates:
        try:
            provider_id(a)
        except NotFound:
            raise Invalid(f"aggregate {a!r} is not a uuid") from None
    p = _store(request).set_aggregates(uuid, body.resource_provider_generation, body.aggregates)
    return {"resource_provider_generation": p.generation, "aggregates": sorted(p.aggregates)}


@router.get("/resource_providers/{uuid}/allocations")
def get_provider_allocations(request: Request, uuid: str) -> dict[str, Any]:
    store = _store(request)
    p = store.provider(uuid)
    allocations = store.provider_allocations(p.uuid)
    return {
        "resource_provider_generation": p.generation,
        "allocations": {c: {"resources": r} for c, r in sorted(allocations.items())},
    }


# -- allocations -----------------------------------------------------------------------


@router.get("/allocations/{consumer}")
def get_allocations(request: Request, consumer: str) -> dict[str, Any]:
    """The consumer's allocations (empty if it has none), from the providers' rows."""
    store = _store(request)
    allocations = store.consumer_allocations(provider_id(consumer))
    out = {}
    for pid, resources in allocations.items():
        out[pid] = {"resources": resources, "generation": store.provider(pid).generation}
    return {"allocations": out}


@router.put("/allocations/{consumer}", status_code=204)
def put_allocations(request: Request, consumer: str, body: AllocationsPut) -> Response:
    """Replace the consumer's allocations with these: each claimed on its provider
    with the generation check (re-read and retried when another claim won); 409 when
    a provider has no room, and then the consumer keeps no allocation."""
    store = _store(request)
    cid = provider_id(consumer)
    if not body.allocations:
        raise Invalid("allocations: name at least one resource provider")
    wanted = {provider_id(p): check_amounts(dict(a.resources)) for p, a in body.allocations.items()}
    for pid in wanted:
        store.provider(pid)  # 404 before anything changes
    record = store.request(cid)
    before = store.consumer_allocations(cid) if record is not None else {}
    merged: dict[str, int] = {}
    for resources in wanted.values():
        for k, v in resources.items():
            merged[k] = merged.get(k, 0) + v
    # The record names every provider that may hold a row of this consumer before any
    # claim is made, so a crash half-way leaves nothing that a later PUT or DELETE
    # cannot find.
    store.record_request(cid, merged, [])
    store.update_request(cid, "claiming", set(before) | set(wanted), 0, 0)
    done: list[str] = []
    try:
        for pid, resources in wanted.items():
            _claim_on(store, pid, cid, resources)
            done.append(pid)
    except PlacementError:
        # As Placement does: a failed replacement leaves the consumer's allocations
        # as they were.
        for pid in done:
            if pid in before:
                _claim_on(store, pid, cid, before[pid], force=True)
            else:
                store.release(pid, cid)
        store.update_request(cid, "placed" if before else "failed", before, len(done) + 1, 0)
        raise
    for pid in set(before) - set(wanted):
        store.release(pid, cid)
    store.update_request(cid, "placed", done, len(done), 0)
    return Response(status_code=204)


def _claim_on(
    store: PlacementStore, pid: str, cid: str, resources: dict[str, int], force: bool = False
) -> None:
    """Make `cid`'s allocation on `pid` exactly `resources` (what it already holds
    there counts as free for it). `force` (putting back what a consumer held) skips
    the room check: it held that before, so it fitted then."""
    for _ in range(CLAIM_TRIES):
        p = store.provider(pid)
        own = store.allocation(pid, cid)
        usages = {k: v - own.get(k, 0) for k, v in p.usages.items()}
        taken = dict(resources) if force else fits(p.inventories, usages, resources)
        if taken is None:
            asked = ", ".join(f"{k}:{v}" for k, v in sorted(resources.items()))
            raise Conflict(f"resource provider {pid} has no room for {asked}")
        if store.claim(p, cid, taken, previous=own):
            return
    raise Conflict(f"resource provider {pid} kept changing: retry the request")


def _free(store: PlacementStore, cid: str) -> bool:
    record = store.request(cid)
    if record is None:
        return False
    freed = False
    for pid in record["providers"]:
        freed = store.release(pid, cid) or freed
    store.update_request(cid, "freed", [], record["attempts"], record["retries"])
    return freed


@router.delete("/allocations/{consumer}", status_code=204)
def delete_allocations(request: Request, consumer: str) -> Response:
    """404 if the consumer has no allocation."""
    cid = provider_id(consumer)
    if not _free(_store(request), cid):
        raise NotFound(f"consumer {cid} has no allocations")
    return Response(status_code=204)


@router.get("/allocation_candidates")
def get_allocation_candidates(
    request: Request,
    resources: Annotated[str, Query(description="e.g. VCPU:2,MEMORY_MB:2048")],
    required: Annotated[str | None, Query(description="traits, comma-separated")] = None,
    member_of: Annotated[str | None, Query(description="aggregate uuids, comma-separated")] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    weigher: Annotated[str, Query(pattern="^(spread|pack)$")] = "spread",
) -> dict[str, Any]:
    """Providers with room for `resources` and every `required` trait, best first
    for `weigher`, with what an allocation would take from each."""
    store = _store(request)
    wanted = parse_resources(resources)
    traits = parse_traits(required) if required else []
    groups = [provider_id(a) for a in member_of.split(",")] if member_of else []
    found = candidates(store, wanted, traits, groups, weigher)[:limit]
    return {
        "allocation_requests": [
            {"allocations": {c.provider.uuid: {"resources": c.taken}}} for c in found
        ],
        "provider_summaries": {
            c.provider.uuid: {
                "resources": {
                    k: {"capacity": inv.capacity, "used": c.provider.usages.get(k, 0)}
                    for k, inv in sorted(c.provider.inventories.items())
                },
                "traits": sorted(c.provider.traits),
            }
            for c in found
        },
    }


@router.post("/requests", status_code=201)
def create_request(request: Request, body: RequestCreate) -> dict[str, Any]:
    """Schedule: the request is recorded, the scheduler picks a provider and claims
    (409 when none can take it); the answer is the request record with its
    provider, allocation, attempts and lost races."""
    store = _store(request)
    if body.weigher not in WEIGHERS:
        raise Invalid(f"weigher must be one of {', '.join(WEIGHERS)}")
    wanted = check_amounts(dict(body.resources))
    cid = provider_id(body.consumer) if body.consumer else None
    if cid is not None and store.consumer_allocations(cid):
        raise Conflict(f"consumer {cid} already has allocations")
    groups = [provider_id(a) for a in body.member_of]
    placed = Scheduler(store, body.weigher).schedule(wanted, body.required, groups, cid)
    record = store.request(placed.consumer) or {}
    return {**record, "provider": placed.provider, "allocation": placed.allocation}


@router.get("/requests/{consumer}")
def get_request(request: Request, consumer: str) -> dict[str, Any]:
    """A request's record: what it asked for, its state, attempts and lost races."""
    record = _store(request).request(consumer)
    if record is None:
        raise NotFound(f"no placement request for consumer {consumer}")
    return record


# -- resource classes and traits -------------------------------------------------------


@router.get("/resource_classes")
def list_resource_classes(request: Request) -> dict[str, Any]:
    classes = _store(request).resource_classes()
    return {"resource_classes": [{"name": k, "discrete": v} for k, v in sorted(classes.items())]}


@router.get("/resource_classes/{name}")
def get_resource_class(request: Request, name: str) -> dict[str, Any]:
    classes = _store(request).resource_classes()
    if name not in classes:
        raise NotFound(f"no resource class {name}")
    return {"name": name, "discrete": classes[name]}


@router.put("/resource_classes/{name}", status_code=201)
def put_resource_class(
    request: Request, name: str, body: ResourceClassPut | None = None
) -> Response:
    """Create a CUSTOM_ class (201; 204 if it exists alike). `discrete: true` makes
    it taken whole (a bare-metal node)."""
    created = _store(request).create_resource_class(name, body.discrete if body else False)
    return Response(status_code=201 if created else 204)


@router.delete("/resource_classes/{name}", status_code=204)
def delete_resource_class(request: Request, name: str) -> Response:
    _store(request).delete_resource_class(name)
    return Response(status_code=204)


@router.get("/traits")
def list_traits(request: Request) -> dict[str, Any]:
    return {"traits": _store(request).traits()}


@router.put("/traits/{name}", status_code=201)
def put_trait(request: Request, name: str) -> Response:
    """Create a CUSTOM_ trait (201; 204 if it exists)."""
    created = _store(request).create_trait(name)
    return Response(status_code=201 if created else 204)
