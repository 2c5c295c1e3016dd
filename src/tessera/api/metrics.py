"""Prometheus metrics of one API server, in a registry of its own (so several apps can
live in one process, as in tests): requests by route template and status, request
latency, NSDB operation latency and errors, topology object counts, leadership."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tessera.model import KINDS
from tessera.nsdb.base import Nsdb
from tessera.nsdb.errors import NsdbError

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_COUNT_TTL = 5.0  # object counts list the whole topology: at most once per this many s

# The `*_created` timestamps only double every family's size; nothing here reads them.
disable_created_metrics()


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tessera_api_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tessera_api_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.nsdb_latency = Histogram(
            "tessera_nsdb_operation_duration_seconds",
            "Time of one NSDB operation issued by the API",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.nsdb_errors = Counter(
            "tessera_nsdb_operation_errors",
            "NSDB operations that failed, by error",
            ["operation", "error"],
            registry=self.registry,
        )


class TopologyCollector(Collector):
    """Object counts by kind, NSDB connectivity and cluster leadership, at scrape time."""

    def __init__(
        self, nsdb: Nsdb, is_leader: Callable[[], bool] | None, count_ttl: float = _COUNT_TTL
    ) -> None:
        self.nsdb = nsdb
        self.is_leader = is_leader
        self.count_ttl = count_ttl
        self._counts: dict[str, int] = {}
        self._counted_at = float("-inf")

    def describe(self) -> Iterator[Metric]:
        # Registering must not touch the NSDB: name the families without values.
        yield GaugeMetricFamily("tessera_topology_objects", "Objects by kind", labels=["kind"])
        yield GaugeMetricFamily("tessera_nsdb_connected", "1 while the NSDB is reachable")
        yield GaugeMetricFamily("tessera_cluster_leader", "1 while this server leads")

    def _refresh(self) -> None:
        if time.monotonic() - self._counted_at < self.count_ttl or not self.nsdb.connected:
            return
        try:
            self._counts = {kind: len(self.nsdb.list(kind)) for kind in KINDS}
            self._counted_at = time.monotonic()
        except NsdbError as exc:
            log.info("cannot count topology objects: %s", exc)

    def collect(self) -> Iterator[Metric]:
        self._refresh()
        counts = GaugeMetricFamily("tessera_topology_objects", "Objects by kind", labels=["kind"])
        for kind, count in sorted(self._counts.items()):
            counts.add_metric([kind], count)
        yield counts
        yield GaugeMetricFamily(
            "tessera_nsdb_connected",
            "1 while the NSDB is reachable",
            value=int(self.nsdb.connected),
        )
        leader = bool(self.is_leader and self.is_leader())
        yield GaugeMetricFamily(
            "tessera_cluster_leader", "1 while this server leads", value=int(leader)
        )


class RouteTemplates:
    """Maps a request path to its route template (`/api/v1/ports/{port_id}`), the label
    that keeps metrics' cardinality bounded. FastAPI no longer exposes the full template
    of a route inside included routers, so paths are matched against the app's own
    OpenAPI paths (computed once, when first needed)."""

    def __init__(self, templates: Callable[[], list[str]]) -> None:
        self._source = templates
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None

    def __call__(self, path: str) -> str:
        if self._compiled is None:
            self._compiled = [(compile_path(t)[0], t) for t in self._source()]
        for regex, template in self._compiled:
            if regex.match(path):
                return template
        return "unmatched"


class MetricsMiddleware:
    """Counts and times every request by its route template, and is the last line of
    defence: an exception nothing else handled is logged and answered with a JSON 503
    (the contract allows no 500), never a bare traceback."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, templates: RouteTemplates) -> None:
        self.app = app
        self.metrics = metrics
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if status:
                raise  # the response has started: nothing sensible can be sent now
            status = 503
            await _send_json(
                send,
                503,
                {
                    "message": "the server failed to handle this request (an internal error, "
                    "logged on the server); try again"
                },
            )
        finally:
            template = self.templates(str(scope.get("path", "")))
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
