"""Prometheus `/metrics`: requests by route template and status, latency, NSDB operation
latency, object counts, connectivity and leadership."""

from __future__ import annotations

import re

from api_helpers import Api
from prometheus_client.parser import text_string_to_metric_families

from tessera.model import new_id


def _samples(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = api.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_are_counted_by_route_template_and_status(api: Api) -> None:
    api.http.app.state.topology_collector.count_ttl = 0.0
    bridge = api.bridge()
    api.bridge_port(bridge)
    api.bridge_port(bridge)
    api.get(f"/bridges/{new_id()}", status=404)
    api.get(f"/bridges/{bridge['id']}")
    api.get("/no/such/thing", status=404)
    s = _samples(api)
    requests = "tessera_api_requests_total"
    assert _value(s, requests, method="POST", route="/api/v1/bridges", status="201") == 1
    assert (
        _value(s, requests, method="POST", route="/api/v1/bridges/{bridge_id}/ports", status="201")
        == 2
    )
    assert _value(s, requests, method="GET", route="/api/v1/bridges/{bridge_id}", status="404") == 1
    assert _value(s, requests, method="GET", route="/api/v1/bridges/{bridge_id}", status="200") == 1
    assert _value(s, requests, method="GET", route="unmatched", status="404") == 1
    routes = {dict(labels).get("route") for name, labels in s if name == requests}
    assert not any(r and re.search(r"[0-9a-f]{8}-", r) for r in routes)  # no ids in labels
    latency = "tessera_api_request_duration_seconds_count"
    assert _value(s, latency, method="POST", route="/api/v1/bridges/{bridge_id}/ports") == 2
    assert _value(s, "tessera_nsdb_operation_duration_seconds_count", operation="commit") >= 3
    assert _value(s, "tessera_topology_objects", kind="bridges") == 1
    assert _value(s, "tessera_topology_objects", kind="ports") == 2
    assert _value(s, "tessera_nsdb_connected") == 1
    assert ("tessera_cluster_leader", ()) in s


def test_nsdb_errors_and_outages_are_visible(api: Api) -> None:
    api.get(f"/ports/{new_id()}", status=404)
    api.nsdb.store.set_available(False)
    try:
        api.get("/bridges", status=503)
        s = _samples(api)
    finally:
        api.nsdb.store.set_available(True)
    assert _value(s, "tessera_nsdb_operation_errors_total", operation="get", error="NotFound") == 1
    assert (
        _value(s, "tessera_nsdb_operation_errors_total", operation="list", error="Unavailable") == 1
    )
    assert _value(s, "tessera_nsdb_connected") == 0
    assert (
        _value(s, "tessera_api_requests_total", method="GET", route="/api/v1/bridges", status="503")
        == 1
    )
