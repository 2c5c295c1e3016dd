"""Every error is one readable `{"message"}` with the contract's status: 404 unknown id,
400/422 malformed or dangling, 409 conflicts, 503 NSDB down, never a 500."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from api_helpers import Api

from tessera.model import new_id
from tessera.nsdb.store import TopologyStore

_SAMPLE = {"subnet": "10.0.0.0_24", "mac": "02:00:00:00:00:01", "addr": "10.0.0.1"}


def _fill(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: _SAMPLE.get(m.group(1), new_id()), path)


def test_every_path_with_an_unknown_id_is_404(api: Api) -> None:
    paths = api.get("/openapi.json")["paths"]
    checked = 0
    for template, ops in paths.items():
        if "{" not in template or template.startswith("/api/v1/placement/"):
            continue  # placement is 503 without Cassandra (tests/integration/placement)
        url = _fill(template)
        for method in ("get", "delete"):
            if method in ops:
                message = api.call(method.upper(), url, status=404)
                assert "does not exist" in message or "no " in message or "not " in message
                checked += 1
    assert checked >= 35


def test_malformed_ids_are_404_not_422(api: Api) -> None:
    for path in ("/bridges/not-a-uuid", "/ports/1", "/rules/%20", "/hosts/x/ports"):
        api.get(path, status=404)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "b", "colour": "red"}, "colour: unknown field"),
        ({"name": 5}, "name: Input should be a valid string"),
        ({"admin_state_up": "maybe"}, "admin_state_up"),
        ({"inbound_filter_id": "nope"}, "inbound_filter_id: 'nope' is not a UUID"),
        ({"name": "x" * 300}, "name: String should have at most 255 characters"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_malformed_bodies_are_422_naming_the_field(api: Api, body: Any, fragment: str) -> None:
    assert fragment in api.post("/bridges", body, status=422)


def test_bodies_that_are_not_json_or_missing_are_422(api: Api) -> None:
    bad = api.http.post(
        "/api/v1/bridges", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 422 and "not valid JSON" in bad.json()["message"]
    missing = api.http.post("/api/v1/bridges")
    assert missing.status_code == 422 and "body is missing" in missing.json()["message"]
    bridge = api.bridge()
    api.call("POST", f"/ports/{api.bridge_port(bridge)['id']}/link", None, status=422)


def test_invalid_objects_are_400_with_the_models_reason(api: Api) -> None:
    router, chain, bridge = api.router(), api.post("/chains", {}), api.bridge()
    outside = {"port_address": "10.0.1.1", "network_address": "10.0.0.0", "network_length": 24}
    assert "is not in 10.0.0.0/24" in api.post(
        f"/routers/{router['id']}/ports", outside, status=400
    )
    rules = f"/chains/{chain['id']}/rules"
    assert "needs jump_chain_id" in api.post(rules, {"type": "jump"}, status=400)
    assert "nat_targets" in api.post(rules, {"type": "dnat"}, status=400)
    assert "fragment_policy" in api.post(
        rules,
        {"type": "drop", "tp_src": {"start": 1, "end": 2}, "fragment_policy": "nonheader"},
        status=400,
    )
    assert "greater than end" in api.post(
        rules, {"type": "drop", "tp_src": {"start": 9, "end": 2}}, status=400
    )
    subnet = {"subnet_prefix": "10.0.0.0", "subnet_length": 24, "default_gateway": "10.1.0.1"}
    assert "default_gateway" in api.post(
        f"/bridges/{bridge['id']}/dhcp_subnets", subnet, status=400
    )
    assert "Normal route needs next_hop_port" in api.post(
        f"/routers/{router['id']}/routes",
        {"dst_network_addr": "0.0.0.0", "dst_network_length": 0},
        status=400,
    )


def test_references_to_missing_objects_are_400(api: Api) -> None:
    missing = new_id()
    bridge, router, chain = api.bridge(), api.router(), api.post("/chains", {})
    port = api.bridge_port(bridge)
    host_id = new_id()
    TopologyStore(api.nsdb).register_host(host_id, "h", [])
    cases = [
        ("/bridges", {"inbound_filter_id": missing}, "inbound_filter_id"),
        (f"/bridges/{bridge['id']}/ports", {"outbound_filter_id": missing}, "outbound_filter_id"),
        (f"/chains/{chain['id']}/rules", {"type": "drop", "in_ports": [missing]}, "in_ports"),
        (
            f"/chains/{chain['id']}/rules",
            {"type": "jump", "jump_chain_id": missing},
            "jump_chain_id",
        ),
        (f"/chains/{chain['id']}/rules", {"type": "drop", "port_group": missing}, "port_group"),
        (
            f"/routers/{router['id']}/routes",
            {"dst_network_addr": "0.0.0.0", "dst_network_length": 0, "next_hop_port": missing},
            "next_hop_port",
        ),
        (f"/ports/{port['id']}/link", {"peer_id": missing}, "peer_id"),
        (f"/hosts/{host_id}/ports", {"port_id": missing, "interface_name": "tap0"}, "port_id"),
        (
            f"/port_groups/{api.post('/port_groups', {})['id']}/ports",
            {"port_id": missing},
            "port_id",
        ),
        (
            f"/tunnel_zones/{api.post('/tunnel_zones', {})['id']}/hosts",
            {"host_id": missing, "ip_address": "198.18.0.1"},
            "host_id",
        ),
    ]
    for path, body, field in cases:
        message = api.call("POST", path, body, status=400)
        assert message.startswith(field) and missing in message, message
    # Nothing was written by any of them.
    assert api.get(f"/chains/{chain['id']}/rules") == [] and len(api.get("/ports")) == 1


def test_unknown_parents_are_404(api: Api) -> None:
    missing = new_id()
    api.post(f"/bridges/{missing}/ports", {}, status=404)
    api.post(
        f"/routers/{missing}/ports",
        {"port_address": "10.0.0.1", "network_address": "10.0.0.0", "network_length": 24},
        status=404,
    )
    api.post(
        f"/routers/{missing}/routes",
        {"dst_network_addr": "0.0.0.0", "dst_network_length": 0, "type": "BlackHole"},
        status=404,
    )
    api.post(f"/chains/{missing}/rules", {"type": "drop"}, status=404)
    api.post(
        f"/bridges/{missing}/dhcp_subnets",
        {"subnet_prefix": "10.0.0.0", "subnet_length": 24},
        status=404,
    )
    api.post(f"/hosts/{missing}/ports", {"port_id": missing, "interface_name": "tap0"}, status=404)
    api.post(f"/port_groups/{missing}/ports", {"port_id": missing}, status=404)
    api.post(f"/ip_addr_groups/{missing}/ip_addrs", {"addr": "10.0.0.1"}, status=404)


def test_requests_contradicting_the_path_or_fixed_fields_are_400(api: Api) -> None:
    bridge, other, router = api.bridge(), api.bridge(), api.router()
    assert "device_id" in api.post(
        f"/bridges/{bridge['id']}/ports", {"device_id": other["id"]}, status=400
    )
    api.post(f"/bridges/{bridge['id']}/ports", {"type": "Router"}, status=422)
    chain = api.post("/chains", {})
    assert "largest valid position is 1" in api.post(
        f"/chains/{chain['id']}/rules", {"type": "drop", "position": 2}, status=400
    )
    port = api.bridge_port(bridge, vlan_id=3)
    assert "vlan_id" in api.put(f"/ports/{port['id']}", {**port, "vlan_id": 4}, status=400)
    rp = api.router_port(router, "10.0.0.1")
    assert "port_address" in api.put(
        f"/ports/{rp['id']}", {**rp, "port_address": "10.0.0.9"}, status=400
    )
    subnet = api.post(
        f"/bridges/{bridge['id']}/dhcp_subnets", {"subnet_prefix": "10.0.0.0", "subnet_length": 24}
    )
    assert "subnet_prefix" in api.put(
        f"/bridges/{bridge['id']}/dhcp_subnets/10.0.0.0_24",
        {**subnet, "subnet_prefix": "10.0.1.0"},
        status=400,
    )
    host_id = new_id()
    TopologyStore(api.nsdb).register_host(host_id, "h", [])
    bad_name = {"port_id": port["id"], "interface_name": "a/b"}
    assert "interface_name: an interface name cannot contain '/'" in api.post(
        f"/hosts/{host_id}/ports", bad_name, status=422
    )


def test_conflicts_are_409(api: Api) -> None:
    bridge, router = api.bridge(), api.router()
    api.bridge_port(bridge, vlan_id=7)
    assert "VLAN 7" in api.post(f"/bridges/{bridge['id']}/ports", {"vlan_id": 7}, status=409)
    a, b = api.bridge_port(bridge), api.router_port(router, "10.0.0.1")
    c = api.router_port(api.router(), "10.0.1.1")
    api.post(f"/ports/{a['id']}/link", {"peer_id": b["id"]}, status=201)
    assert "already linked" in api.post(f"/ports/{c['id']}/link", {"peer_id": b["id"]}, status=409)
    host_id = new_id()
    TopologyStore(api.nsdb).register_host(host_id, "h", [])
    d, e = api.bridge_port(bridge), api.bridge_port(bridge)
    api.post(f"/hosts/{host_id}/ports", {"port_id": d["id"], "interface_name": "tap0"})
    assert "tap0" in api.post(
        f"/hosts/{host_id}/ports", {"port_id": e["id"], "interface_name": "tap0"}, status=409
    )
    assert "linked" in api.post(
        f"/hosts/{host_id}/ports", {"port_id": a["id"], "interface_name": "tap1"}, status=409
    )
    subnets = f"/bridges/{bridge['id']}/dhcp_subnets"
    api.post(subnets, {"subnet_prefix": "10.0.0.0", "subnet_length": 24})
    api.post(subnets, {"subnet_prefix": "10.0.0.0", "subnet_length": 24}, status=409)
    group = api.post("/ip_addr_groups", {})
    api.post(f"/ip_addr_groups/{group['id']}/ip_addrs", {"addr": "10.0.0.1"})
    api.post(f"/ip_addr_groups/{group['id']}/ip_addrs", {"addr": "10.0.0.1"}, status=409)


def test_unsupported_methods_and_paths_answer_in_the_same_shape(api: Api) -> None:
    assert "PATCH" in api.call("PATCH", "/bridges", {}, status=405)
    assert "no such resource" in api.get("/nothing/here", status=404)


def test_an_nsdb_outage_is_503_quickly_and_heals(api: Api) -> None:
    bridge = api.bridge()
    api.nsdb.store.set_available(False)
    try:
        for method, path, body in (
            ("GET", "/bridges", None),
            ("GET", f"/bridges/{bridge['id']}", None),
            ("POST", "/bridges", {}),
            ("DELETE", f"/bridges/{bridge['id']}", None),
            ("GET", "/health", None),
        ):
            start = time.monotonic()
            message = api.call(method, path, body, status=503)
            assert "unavailable" in message or "unreachable" in message
            assert time.monotonic() - start < 2.0
        assert "unreachable" in api.get("/health", status=503)
    finally:
        api.nsdb.store.set_available(True)
    assert api.get("/bridges") == [bridge]


def test_an_unexpected_error_is_a_json_503_not_a_500(api: Api, monkeypatch: Any) -> None:
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(TopologyStore, "list", explode)
    message = api.get("/bridges", status=503)
    assert "internal error" in message and "a bug" not in message
