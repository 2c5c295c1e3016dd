"""The FastAPI application: REST API v1 under `/api/v1`, `/metrics`, `/docs`."""

from __future__ import annotations

import functools
import re
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.routing import Route, compile_path

from tessera import __version__
from tessera.api import errors
from tessera.api.metrics import ApiMetrics, MetricsMiddleware, RouteTemplates, TopologyCollector
from tessera.api.resources import (
    bridges,
    chains,
    cluster,
    dhcp,
    health,
    health_monitors,
    hosts,
    ip_addr_groups,
    load_balancers,
    mirrors,
    pools,
    port_groups,
    ports,
    routers,
    routes,
    rules,
    traces,
    tunnel_zones,
)
from tessera.api.resources import placement as placement_api
from tessera.api.wait import RealizationWaiter, RecordingNsdb, WaitMiddleware, document_wait
from tessera.cluster.services import ClusterServices
from tessera.nsdb.base import Nsdb
from tessera.nsdb.store import TopologyStore
from tessera.placement.backend import PlacementBackend

API_PREFIX = "/api/v1"
_RESOURCES = (
    bridges,
    routers,
    ports,
    routes,
    dhcp,
    chains,
    rules,
    port_groups,
    ip_addr_groups,
    mirrors,
    load_balancers,
    pools,
    health_monitors,
    hosts,
    tunnel_zones,
    traces,
    health,
    cluster,
    placement_api,
)

_DESCRIPTION = """\
The tessera REST API: virtual bridges, routers, ports, routes, firewall chains and rules,
DHCP, port and address groups, port mirrors, load balancers, hosts, bindings and tunnel
zones.

Every error is `{"message": "..."}`. A create returns 201 with the full object; update
is `PUT` of the whole object as `GET` returned it (read-only fields are ignored);
deletes keep referential integrity (cascading, clearing or removing references).
"""


def _operation_id(route: APIRoute) -> str:
    return route.name


def _route_templates(app: FastAPI) -> list[str]:
    api = [
        API_PREFIX + r.path
        for module in _RESOURCES
        for r in module.router.routes
        if isinstance(r, APIRoute)
    ]
    return [*api, *(r.path for r in app.routes if isinstance(r, Route | APIRoute))]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def add_links(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI links from each create to what uses its answer's `id`: `POST /bridges`
    names the bridge that `GET`/`PUT`/`DELETE /bridges/{bridge_id}` and
    `POST /bridges/{bridge_id}/ports` act on, and so on for every kind whose path
    parameter is `<kind>_id` (a DHCP host's `mac` likewise). A client generator, or a
    stateful fuzzer such as schemathesis, can then chain real calls."""
    operations = [
        (method, op) for ops in schema.get("paths", {}).values() for method, op in ops.items()
    ]
    for method, op in operations:
        if method != "post":
            continue
        created = op.get("responses", {}).get("201", {})
        ref = created.get("content", {}).get("application/json", {}).get("schema", {})
        kind = ref.get("$ref", "").rsplit("/", 1)[-1]
        if not kind:
            continue
        params = {f"{_snake(kind)}_id": "$response.body#/id"}
        if kind == "DhcpHost":
            params = {"mac": "$response.body#/mac_addr"}
        links: dict[str, Any] = {}
        for _, other in operations:
            named = {p["name"] for p in other.get("parameters", ()) if p.get("in") == "path"}
            for param, expression in params.items():
                if param in named and other is not op:
                    links[other["operationId"]] = {
                        "operationId": other["operationId"],
                        "parameters": {param: expression},
                    }
        if links:
            created["links"] = links
    return schema


def _route_methods(app: FastAPI) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """Each route's path (as a regex) and methods, for the `Allow` header of a 405."""
    routes: list[tuple[str, set[str]]] = [
        (API_PREFIX + r.path, r.methods or set())
        for module in _RESOURCES
        for r in module.router.routes
        if isinstance(r, APIRoute)
    ]
    routes += [(r.path, r.methods or set()) for r in app.routes if isinstance(r, Route | APIRoute)]
    return [(compile_path(path)[0], frozenset(methods)) for path, methods in routes]


def create_app(
    nsdb: Nsdb,
    services: ClusterServices | None = None,
    placement: PlacementBackend | None = None,
) -> FastAPI:
    """The API over `nsdb`. `services`, when this process takes part in the cluster's
    leader election, is reported by the health endpoint and `/metrics`. `placement`
    reaches Cassandra for /placement (without it, those answer 503)."""
    metrics = ApiMetrics()
    instrumented = RecordingNsdb(nsdb, metrics.nsdb_latency, metrics.nsdb_errors)
    app = FastAPI(
        title="tessera",
        version=__version__,
        description=_DESCRIPTION,
        generate_unique_id_function=_operation_id,
    )
    app.state.nsdb = nsdb
    app.state.store = TopologyStore(instrumented)
    app.state.services = services
    app.state.metrics = metrics
    errors.install(app)
    placement_api.install(app, placement or PlacementBackend())

    api = APIRouter(
        prefix=API_PREFIX,
        responses=errors.ERROR_RESPONSES,
        generate_unique_id_function=_operation_id,
    )
    for module in _RESOURCES:
        api.include_router(module.router)
    app.include_router(api)

    collector = TopologyCollector(instrumented, (lambda: services.is_leader) if services else None)
    metrics.registry.register(collector)
    app.state.topology_collector = collector

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.route_methods = functools.cache(lambda: _route_methods(app))
    plain_openapi = app.openapi

    def openapi_with_links() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_wait(add_links(plain_openapi()), API_PREFIX)
        return app.openapi_schema

    app.openapi = openapi_with_links  # type: ignore[method-assign]
    templates = RouteTemplates(lambda: _route_templates(app))
    app.add_middleware(MetricsMiddleware, metrics=metrics, templates=templates)
    app.state.waiter = RealizationWaiter(instrumented)
    app.add_middleware(WaitMiddleware, waiter=app.state.waiter, prefix=API_PREFIX)
    return app
