"""`/mirrors` and the mirror lists of ports, bridges and routers (contract §3)."""

from __future__ import annotations

import uuid
from typing import Any

from api_helpers import Api


def _setup(api: Api) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    bridge = api.bridge(name="b")
    return bridge, api.bridge_port(bridge), api.bridge_port(bridge)


def test_mirror_crud_follows_the_conventions(api: Api) -> None:
    _, src, dst = _setup(api)
    body = {
        "name": "tap",
        "tenant_id": "acme",
        "to_port_id": dst["id"],
        "conditions": [{"nw_proto": 6, "tp_dst": {"start": 80, "end": 80}}, {"dl_type": 2054}],
    }
    mirror = api.post("/mirrors", body)
    assert mirror["to_port_id"] == dst["id"] and mirror["name"] == "tap"
    assert [c["nw_proto"] for c in mirror["conditions"]] == [6, None]
    assert mirror["conditions"][0]["fragment_policy"] == "header"  # the rule default
    assert api.get(f"/mirrors/{mirror['id']}") == mirror
    assert api.get("/mirrors") == [mirror]
    assert api.get("/mirrors?tenant_id=other") == []

    body = {**mirror, "conditions": [], "to_port_id": src["id"]}
    changed = api.put(f"/mirrors/{mirror['id']}", body)
    assert changed["conditions"] == [] and changed["to_port_id"] == src["id"]
    api.delete(f"/mirrors/{mirror['id']}")
    api.get(f"/mirrors/{mirror['id']}", status=404)
    api.delete(f"/mirrors/{mirror['id']}", status=404)
    api.put(f"/mirrors/{uuid.uuid4()}", changed, status=404)


def test_mirror_references_must_exist(api: Api) -> None:
    bridge, _, dst = _setup(api)
    missing = str(uuid.uuid4())
    assert "to_port_id: this field is required" in api.post("/mirrors", {}, status=422)
    assert "to_port_id: no port" in api.post("/mirrors", {"to_port_id": bridge["id"]}, status=400)
    for field in ("port_group", "ip_addr_group_src", "ip_addr_group_dst"):
        body = {"to_port_id": dst["id"], "conditions": [{"nw_proto": 1}, {field: missing}]}
        assert f"conditions[1].{field}: no" in api.post("/mirrors", body, status=400)
    body = {"to_port_id": dst["id"], "conditions": [{"in_ports": [missing]}]}
    assert "conditions[0].in_ports: no port" in api.post("/mirrors", body, status=400)
    body = {"to_port_id": dst["id"], "conditions": [{"nw_src_length": 8}]}
    assert "nw_src_length needs nw_src_address" in api.post("/mirrors", body, status=400)
    body = {"to_port_id": dst["id"], "conditions": [{"bogus": 1}]}
    assert "unknown field" in api.post("/mirrors", body, status=422)
    assert api.get("/mirrors") == []


def test_devices_and_ports_carry_mirror_lists(api: Api) -> None:
    bridge, src, dst = _setup(api)
    router = api.router()
    assert bridge["inbound_mirror_ids"] == [] and src["outbound_mirror_ids"] == []
    m1 = api.post("/mirrors", {"to_port_id": dst["id"]})
    m2 = api.post("/mirrors", {"to_port_id": dst["id"]})
    both = [m1["id"], m2["id"]]
    port = api.put(f"/ports/{src['id']}", {**src, "inbound_mirror_ids": both})
    assert port["inbound_mirror_ids"] == both
    bridge = api.put(f"/bridges/{bridge['id']}", {**bridge, "outbound_mirror_ids": [m2["id"]]})
    assert bridge["outbound_mirror_ids"] == [m2["id"]]
    router = api.post("/routers", {"inbound_mirror_ids": [m1["id"]]})
    assert api.get(f"/routers/{router['id']}")["inbound_mirror_ids"] == [m1["id"]]

    message = api.put(f"/ports/{src['id']}", {**port, "outbound_mirror_ids": [src["id"]]}, 400)
    assert message == f"outbound_mirror_ids: no mirror {src['id']} exists"

    api.delete(f"/mirrors/{m1['id']}")  # leaves every list naming it
    assert api.get(f"/ports/{src['id']}")["inbound_mirror_ids"] == [m2["id"]]
    assert api.get(f"/routers/{router['id']}")["inbound_mirror_ids"] == []
    assert api.get(f"/bridges/{bridge['id']}")["outbound_mirror_ids"] == [m2["id"]]


def test_deleting_the_target_port_deletes_the_mirror_and_its_uses(api: Api) -> None:
    _, src, dst = _setup(api)
    mirror = api.post("/mirrors", {"to_port_id": dst["id"]})
    api.put(f"/ports/{src['id']}", {**src, "outbound_mirror_ids": [mirror["id"]]})
    api.delete(f"/ports/{dst['id']}")
    api.get(f"/mirrors/{mirror['id']}", status=404)
    assert api.get(f"/ports/{src['id']}")["outbound_mirror_ids"] == []


def test_conditions_lose_deleted_objects_but_a_mirror_is_never_widened(api: Api) -> None:
    bridge, src, dst = _setup(api)
    other = api.bridge_port(bridge)
    group = api.post("/port_groups", {})
    conditions = [
        {"in_ports": [src["id"], other["id"]]},
        {"port_group": group["id"]},
        {"in_ports": [other["id"]], "nw_proto": 17},
    ]
    mirror = api.post("/mirrors", {"to_port_id": dst["id"], "conditions": conditions})
    api.delete(f"/ports/{other['id']}")  # leaves the first list, takes the third condition
    left = api.get(f"/mirrors/{mirror['id']}")["conditions"]
    assert [(c["in_ports"], c["port_group"]) for c in left] == [
        ([src["id"]], None),
        ([], group["id"]),
    ]
    api.delete(f"/port_groups/{group['id']}")
    assert len(api.get(f"/mirrors/{mirror['id']}")["conditions"]) == 1
    api.delete(f"/ports/{src['id']}")  # its last condition goes: the mirror goes too
    api.get(f"/mirrors/{mirror['id']}", status=404)
