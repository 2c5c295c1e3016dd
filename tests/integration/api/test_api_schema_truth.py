"""What the OpenAPI schema says is what the server does (issue 13, item 7): formats
and patterns declared, JSON types taken as declared, `Allow` complete on a 405, links
from each create to what uses its id."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from api_helpers import Api


def _schema(api: Api) -> dict[str, Any]:
    schema: dict[str, Any] = api.get("/openapi.json")
    return schema


def test_ids_addresses_and_macs_declare_their_format(api: Api) -> None:
    schema = _schema(api)
    bridge = schema["components"]["schemas"]["Bridge"]["properties"]
    assert bridge["id"]["format"] == "uuid" and "pattern" in bridge["id"]
    port = schema["components"]["schemas"]["Port"]["properties"]
    address = next(s for s in port["port_address"]["anyOf"] if s.get("type") == "string")
    assert address["format"] == "ipv4" and "pattern" in address
    mac = next(s for s in port["port_mac"]["anyOf"] if s.get("type") == "string")
    assert "pattern" in mac
    # optional fields of create bodies keep the declaration (`id` was a plain string)
    create = schema["components"]["schemas"]["BridgeCreate"]["properties"]["id"]
    assert any(s.get("format") == "uuid" for s in create["anyOf"])
    params = schema["paths"]["/api/v1/bridges/{bridge_id}/dhcp_subnets/{subnet}"]["get"]
    by_name = {p["name"]: p["schema"] for p in params["parameters"]}
    assert by_name["bridge_id"]["format"] == "uuid"
    assert by_name["subnet"]["pattern"].endswith("_(3[0-2]|[12]?[0-9])$")


def test_a_create_links_to_the_operations_on_what_it_made(api: Api) -> None:
    created = _schema(api)["paths"]["/api/v1/routers/{router_id}/ports"]["post"]["responses"]
    links = created["201"]["links"]
    assert links["get_port"]["parameters"] == {"port_id": "$response.body#/id"}
    assert {"update_port", "delete_port", "link_port"} <= set(links)


def test_a_uuid_in_another_spelling_is_refused_as_the_schema_says(api: Api) -> None:
    bridge = api.bridge()
    for spelling in (bridge["id"].replace("-", ""), "{" + bridge["id"] + "}"):
        api.get(f"/bridges/{spelling}", status=404)
        assert "is not a UUID" in api.post("/bridges", {"id": spelling}, status=422)
    api.get(f"/bridges/{bridge['id'].upper()}")  # either case, as the pattern says


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"vlan_id": "5"}, "vlan_id: Input should be a valid integer (not a string)"),
        ({"vlan_id": True}, "vlan_id: Input should be a valid integer (not a boolean)"),
        ({"admin_state_up": 0}, "admin_state_up: Input should be a valid boolean"),
        ({"admin_state_up": "yes"}, "admin_state_up: Input should be a valid boolean"),
    ],
)
def test_json_types_are_not_coerced(api: Api, body: dict[str, Any], fragment: str) -> None:
    bridge = api.bridge()
    assert fragment in api.post(f"/bridges/{bridge['id']}/ports", body, status=422)
    api.post(f"/bridges/{bridge['id']}/ports", {"vlan_id": 5.0})  # 5.0 is a JSON integer


def test_nested_json_types_are_not_coerced(api: Api) -> None:
    bridge = api.bridge()
    port = api.bridge_port(bridge)
    body = {"to_port_id": port["id"], "conditions": [{"inv_nw_src": 1}]}
    assert "conditions[0].inv_nw_src" in api.post("/mirrors", body, status=422)


def test_a_405_allows_every_method_of_the_path(api: Api) -> None:
    path = f"/api/v1/bridges/{uuid.uuid4()}"
    for method in ("PATCH", "POST", "OPTIONS"):
        response = api.http.request(method, path)
        assert response.status_code == 405
        assert response.headers["allow"] == "DELETE, GET, PUT"
        assert "only DELETE, GET, PUT" in response.json()["message"]
    assert api.http.request("DELETE", "/api/v1/bridges").headers["allow"] == "GET, POST"


def test_strings_are_checked_as_sent_not_as_stripped(api: Api) -> None:
    """The model strips white space around strings; the schema's `maxLength` and
    `pattern` speak of the string as sent (found by schemathesis on ZooKeeper: a
    257-character name with white space around it was stored)."""
    long = "   " + "a" * 254
    assert "at most 255 characters" in api.post("/chains", {"name": long}, status=422)
    assert api.post("/chains", {"name": "  a  "})["name"] == "a"  # no pattern: stripped
    spaced = f" {uuid.uuid4()}"
    assert "white space" in api.post("/chains", {"id": spaced}, status=422)


def test_every_pattern_compiles_where_schema_validators_read_it(api: Api) -> None:
    """A pattern a validator cannot compile is ignored or refused by it (Rust's regex,
    behind schemathesis's jsonschema_rs, refuses a class naming surrogates): the schema
    then stops saying what the server refuses."""
    import jsonschema_rs

    patterns: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                patterns.add(node["pattern"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(_schema(api))
    assert len(patterns) > 3
    for pattern in patterns:
        jsonschema_rs.validator_for({"type": "string", "pattern": pattern})  # raises if not
    name = _schema(api)["components"]["schemas"]["BridgeCreate"]["properties"]["name"]
    text = jsonschema_rs.validator_for({"type": "string", "pattern": name["pattern"]})
    assert text.is_valid("web \u00e9t\u00e9") and not text.is_valid("a\u0002b")
