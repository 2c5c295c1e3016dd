"""Load balancer resources (contract §3, issue 15): `/load_balancers`, `/pools`,
`/pool_members`, `/vips`, `/health_monitors`: CRUD, validation, integrity (both
backends where it is the store's transactions that matter)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from api_helpers import Api

from tessera.model import HealthMonitor, PoolMember
from tessera.nsdb.store import TopologyStore
from tessera.nsdb.store import load_balancers as store_lb

Obj = dict[str, Any]


def _lb(api: Api) -> tuple[Obj, Obj]:
    router = api.router(name="r")
    return router, api.post("/load_balancers", {"router_id": router["id"]})


def _topology(api: Api) -> dict[str, Obj]:
    """A router's load balancer with a monitored pool of two members behind one VIP."""
    router, lb = _lb(api)
    hm = api.post("/health_monitors", {"delay": 2, "timeout": 1, "max_retries": 2})
    pool = api.post("/pools", {"load_balancer_id": lb["id"], "health_monitor_id": hm["id"]})
    m1 = api.post(
        "/pool_members", {"pool_id": pool["id"], "address": "10.0.0.11", "protocol_port": 80}
    )
    m2 = api.post(
        "/pool_members",
        {"pool_id": pool["id"], "address": "10.0.0.12", "protocol_port": 80, "weight": 3},
    )
    vip = api.post(
        "/vips",
        {"load_balancer_id": lb["id"], "pool_id": pool["id"], "address": "203.0.113.10",
         "protocol_port": 80, "session_persistence": "SOURCE_IP"},
    )  # fmt: skip
    return {"router": router, "lb": lb, "hm": hm, "pool": pool, "m1": m1, "m2": m2, "vip": vip}


def test_crud_of_every_kind_follows_the_conventions(api: Api) -> None:
    t = _topology(api)
    lb, hm, pool, m1, m2, vip = t["lb"], t["hm"], t["pool"], t["m1"], t["m2"], t["vip"]
    assert lb == {"id": lb["id"], "router_id": t["router"]["id"], "admin_state_up": True}
    assert hm == {
        "id": hm["id"], "type": "TCP", "delay": 2, "timeout": 1, "max_retries": 2,
        "admin_state_up": True, "status": "ACTIVE",
    }  # fmt: skip
    assert pool == {
        "id": pool["id"], "load_balancer_id": lb["id"], "health_monitor_id": hm["id"],
        "protocol": "TCP", "lb_method": "ROUND_ROBIN", "admin_state_up": True, "status": "ACTIVE",
    }  # fmt: skip
    assert m1["weight"] == 1 and m2["weight"] == 3 and m1["status"] == "ACTIVE"
    assert vip["session_persistence"] == "SOURCE_IP" and vip["admin_state_up"] is True
    for path, obj in (
        ("/load_balancers", lb), ("/health_monitors", hm), ("/pools", pool), ("/vips", vip),
    ):  # fmt: skip
        assert api.get(f"{path}/{obj['id']}") == obj
        assert api.get(path) == [obj]
    assert api.get("/pool_members") == sorted([m1, m2], key=lambda m: m["id"])
    # The sub-collections.
    assert api.get(f"/load_balancers/{lb['id']}/pools") == [pool]
    assert api.get(f"/load_balancers/{lb['id']}/vips") == [vip]
    assert api.get(f"/pools/{pool['id']}/pool_members") == api.get("/pool_members")
    assert api.get(f"/pools/{pool['id']}/vips") == [vip]
    # Updates: PUT of the whole object as GET returned it.
    changed = api.put(f"/pool_members/{m1['id']}", {**m1, "weight": 5, "admin_state_up": False})
    assert changed == {**m1, "weight": 5, "admin_state_up": False}
    changed = api.put(
        f"/vips/{vip['id']}", {**vip, "session_persistence": None, "protocol_port": 8080}
    )
    assert changed == {**vip, "session_persistence": None, "protocol_port": 8080}
    changed = api.put(f"/health_monitors/{hm['id']}", {**hm, "delay": 10, "timeout": 10})
    assert changed == {**hm, "delay": 10, "timeout": 10}
    changed = api.put(f"/pools/{pool['id']}", {**pool, "health_monitor_id": None})
    assert changed == {**pool, "health_monitor_id": None}
    changed = api.put(f"/load_balancers/{lb['id']}", {**lb, "admin_state_up": False})
    assert changed == {**lb, "admin_state_up": False}
    # Deletes; a second delete, a GET and a PUT of what is gone are 404.
    for path, obj in (("/vips", vip), ("/pool_members", m2), ("/health_monitors", hm)):
        api.delete(f"{path}/{obj['id']}")
        api.get(f"{path}/{obj['id']}", status=404)
        api.delete(f"{path}/{obj['id']}", status=404)
        api.put(f"{path}/{obj['id']}", obj, status=404)


def test_a_client_chooses_the_id_or_the_server_does(api: Api) -> None:
    router = api.router()
    chosen = str(uuid.uuid4())
    lb = api.post("/load_balancers", {"id": chosen, "router_id": router["id"]})
    assert lb["id"] == chosen
    message = api.post("/health_monitors", {"id": chosen}, status=409)
    assert chosen in message


@pytest.mark.parametrize(
    "path",
    ["/load_balancers", "/pools", "/pool_members", "/vips", "/health_monitors"],
)
def test_unknown_ids_are_404_and_unsupported_methods_405(api: Api, path: str) -> None:
    missing = uuid.uuid4()
    assert "does not exist" in api.get(f"{path}/{missing}", status=404)
    api.get(f"{path}/not-a-uuid", status=404)
    api.delete(f"{path}/{missing}", status=404)
    response = api.http.request("PATCH", f"/api/v1{path}/{missing}", json={})
    assert response.status_code == 405
    assert response.headers["Allow"] == "DELETE, GET, PUT"
    response = api.http.request("DELETE", f"/api/v1{path}")
    assert response.status_code == 405 and response.headers["Allow"] == "GET, POST"


def test_sub_collections_of_a_missing_parent_are_404(api: Api) -> None:
    missing = uuid.uuid4()
    for path in (
        f"/load_balancers/{missing}/pools", f"/load_balancers/{missing}/vips",
        f"/pools/{missing}/pool_members", f"/pools/{missing}/vips",
    ):  # fmt: skip
        assert "does not exist" in api.get(path, status=404)


def test_status_is_read_only_to_clients(api: Api) -> None:
    _, lb = _lb(api)
    hm = api.post("/health_monitors", {"status": "INACTIVE"})
    pool = api.post("/pools", {"load_balancer_id": lb["id"], "status": "INACTIVE"})
    body = {"pool_id": pool["id"], "address": "10.0.0.11", "protocol_port": 80}
    member = api.post("/pool_members", {**body, "status": "INACTIVE"})
    assert hm["status"] == pool["status"] == member["status"] == "ACTIVE"
    assert api.put(f"/pool_members/{member['id']}", {**member, "status": "INACTIVE"}) == member
    assert api.put(f"/pools/{pool['id']}", {**pool, "status": "INACTIVE"}) == pool
    assert api.put(f"/health_monitors/{hm['id']}", {**hm, "status": "INACTIVE"}) == hm
    message = api.post("/pool_members", {**body, "status": "DOWN"}, status=422)
    assert message.startswith("status: "), message


def test_internal_code_writes_status_through_the_store(any_api: Api) -> None:
    """The health-monitor service's way: `TopologyStore.set_status`; a client's later
    PUT keeps the status the service wrote."""
    api = any_api
    t = _topology(api)
    store = TopologyStore(api.nsdb)
    member = t["m1"]
    assert store.set_status(PoolMember, member["id"], "INACTIVE") is True
    assert store.set_status(PoolMember, member["id"], "INACTIVE") is False  # already so
    assert store.set_status(PoolMember, str(uuid.uuid4()), "INACTIVE") is False  # gone
    assert api.get(f"/pool_members/{member['id']}")["status"] == "INACTIVE"
    updated = api.put(f"/pool_members/{member['id']}", {**member, "weight": 7})
    assert updated["status"] == "INACTIVE" and updated["weight"] == 7
    assert store.set_status(HealthMonitor, t["hm"]["id"], "INACTIVE") is True
    assert api.get(f"/health_monitors/{t['hm']['id']}")["status"] == "INACTIVE"


def test_deleting_a_pool_removes_its_members_and_vips(any_api: Api) -> None:
    api = any_api
    t = _topology(api)
    other = api.post("/pools", {"load_balancer_id": t["lb"]["id"]})
    kept = api.post(
        "/pool_members", {"pool_id": other["id"], "address": "10.0.0.11", "protocol_port": 80}
    )
    api.delete(f"/pools/{t['pool']['id']}")
    assert api.get("/pool_members") == [kept]
    assert api.get("/vips") == []
    assert api.get("/pools") == [other]
    assert api.get(f"/health_monitors/{t['hm']['id']}") == t["hm"]
    assert api.get(f"/load_balancers/{t['lb']['id']}") == t["lb"]


def test_deleting_a_load_balancer_removes_its_pools_members_and_vips(any_api: Api) -> None:
    api = any_api
    t = _topology(api)
    api.delete(f"/load_balancers/{t['lb']['id']}")
    for path in ("/load_balancers", "/pools", "/pool_members", "/vips"):
        assert api.get(path) == [], path
    assert api.get("/health_monitors") == [t["hm"]]
    assert api.get(f"/routers/{t['router']['id']}") == t["router"]
    # The router may have a load balancer again.
    api.post("/load_balancers", {"router_id": t["router"]["id"]})


def test_deleting_the_router_deletes_its_load_balancer(any_api: Api) -> None:
    api = any_api
    t = _topology(api)
    api.delete(f"/routers/{t['router']['id']}")
    for path in ("/load_balancers", "/pools", "/pool_members", "/vips"):
        assert api.get(path) == [], path


def test_deleting_a_health_monitor_clears_the_pools_naming_it(any_api: Api) -> None:
    api = any_api
    t = _topology(api)
    api.delete(f"/health_monitors/{t['hm']['id']}")
    assert api.get(f"/pools/{t['pool']['id']}") == {**t["pool"], "health_monitor_id": None}
    assert len(api.get("/pool_members")) == 2 and len(api.get("/vips")) == 1


def test_one_load_balancer_per_router(any_api: Api) -> None:
    api = any_api
    router, lb = _lb(api)
    message = api.post("/load_balancers", {"router_id": router["id"]}, status=409)
    assert f"router {router['id']} already has load balancer {lb['id']}" in message
    second = api.post("/load_balancers", {"router_id": api.router()["id"]})
    message = api.put(
        f"/load_balancers/{second['id']}", {**second, "router_id": router["id"]}, status=409
    )
    assert "at most one load balancer" in message
    assert len(api.get("/load_balancers")) == 2


def test_a_vip_pool_must_belong_to_the_vip_load_balancer(any_api: Api) -> None:
    api = any_api
    t = _topology(api)
    _, other_lb = _lb(api)
    foreign = api.post("/pools", {"load_balancer_id": other_lb["id"]})
    body = {"load_balancer_id": t["lb"]["id"], "pool_id": foreign["id"], "address": "203.0.113.11",
            "protocol_port": 80}  # fmt: skip
    message = api.post("/vips", body, status=400)
    assert f"pool {foreign['id']} belongs to load balancer {other_lb['id']}" in message, message
    vip = t["vip"]
    api.put(f"/vips/{vip['id']}", {**vip, "pool_id": foreign["id"]}, status=400)
    api.put(f"/vips/{vip['id']}", {**vip, "load_balancer_id": other_lb["id"]}, status=400)
    moved = api.put(
        f"/vips/{vip['id']}", {**vip, "load_balancer_id": other_lb["id"], "pool_id": foreign["id"]}
    )
    assert api.get(f"/load_balancers/{other_lb['id']}/vips") == [moved]
    # A pool stays in its load balancer (its VIPs name it).
    message = api.put(
        f"/pools/{foreign['id']}", {**foreign, "load_balancer_id": t["lb"]["id"]}, status=400
    )
    assert "load_balancer_id of pool" in message and "cannot be changed" in message


def test_references_must_exist_and_are_required(api: Api) -> None:
    t = _topology(api)
    missing = str(uuid.uuid4())
    vip = {"load_balancer_id": t["lb"]["id"], "pool_id": t["pool"]["id"], "address": "203.0.113.12",
           "protocol_port": 443}  # fmt: skip
    member = {"pool_id": t["pool"]["id"], "address": "10.0.0.13", "protocol_port": 80}
    cases: list[tuple[str, Obj, int, str]] = [
        ("/load_balancers", {}, 422, "router_id: this field is required"),
        ("/load_balancers", {"router_id": missing}, 400, "router_id: no router"),
        ("/load_balancers", {"router_id": t["lb"]["id"]}, 400, "router_id: no router"),
        ("/pools", {}, 422, "load_balancer_id: this field is required"),
        ("/pools", {"load_balancer_id": missing}, 400, "load_balancer_id: no load balancer"),
        ("/pools", {"load_balancer_id": t["lb"]["id"], "health_monitor_id": missing}, 400,
         "health_monitor_id: no health monitor"),
        ("/pool_members", {**member, "pool_id": missing}, 400, "pool_id: no pool"),
        ("/pool_members", {"pool_id": t["pool"]["id"], "address": "10.0.0.13"}, 422,
         "protocol_port: this field is required"),
        ("/vips", {k: v for k, v in vip.items() if k != "pool_id"}, 422,
         "pool_id: this field is required"),
        ("/vips", {**vip, "pool_id": None}, 422, "pool_id: "),
        ("/vips", {**vip, "pool_id": missing}, 400, "pool_id: no pool"),
        ("/vips", {**vip, "load_balancer_id": missing}, 400, "load_balancer_id: no load balancer"),
    ]  # fmt: skip
    for path, body, status, expected in cases:
        message = api.post(path, body, status=status)
        assert expected in message, (path, body, message)
    assert len(api.get("/vips")) == 1 and len(api.get("/pool_members")) == 2


def test_member_and_vip_address_port_pairs_are_unique(any_api: Api) -> None:
    api = any_api
    t = _topology(api)
    m1, vip = t["m1"], t["vip"]
    body = {"pool_id": t["pool"]["id"], "address": m1["address"], "protocol_port": 80}
    message = api.post("/pool_members", body, status=409)
    assert f"already has member {m1['id']} at 10.0.0.11:80" in message
    api.post("/pool_members", {**body, "protocol_port": 81})  # another port: another member
    api.put(f"/pool_members/{t['m2']['id']}", {**t["m2"], "address": m1["address"]}, status=409)
    body = {k: vip[k] for k in ("load_balancer_id", "pool_id", "address", "protocol_port")}
    message = api.post("/vips", body, status=409)
    assert f"already has VIP {vip['id']} at 203.0.113.10:80" in message


BAD_ADDRESSES = [
    ("0.0.0.0", "unspecified"),
    ("255.255.255.255", "broadcast"),
    ("224.0.0.5", "multicast"),
    ("239.255.255.250", "multicast"),
    ("127.0.0.1", "loopback"),
    ("240.0.0.1", "class E"),
]


@pytest.mark.parametrize(("address", "what"), BAD_ADDRESSES)
def test_member_and_vip_addresses_are_usable_unicast(api: Api, address: str, what: str) -> None:
    t = _topology(api)
    member = {"pool_id": t["pool"]["id"], "address": address, "protocol_port": 80}
    message = api.post("/pool_members", member, status=400)
    assert message.startswith(f"address: {address} is ") and what in message, message
    vip = {**member, "load_balancer_id": t["lb"]["id"]}
    assert what in api.post("/vips", vip, status=400)
    api.put(f"/pool_members/{t['m1']['id']}", {**t["m1"], "address": address}, status=400)
    api.put(f"/vips/{t['vip']['id']}", {**t["vip"], "address": address}, status=400)
    assert len(api.get("/pool_members")) == 2 and len(api.get("/vips")) == 1


def test_field_values_outside_the_schema_are_422(api: Api) -> None:
    t = _topology(api)
    pool, lb = t["pool"], t["lb"]
    member = {"pool_id": pool["id"], "address": "10.0.0.20", "protocol_port": 80}
    vip = {"load_balancer_id": lb["id"], "pool_id": pool["id"], "address": "203.0.113.20",
           "protocol_port": 80}  # fmt: skip
    cases: list[tuple[str, Obj, str]] = [
        ("/pool_members", {**member, "weight": 0}, "weight: "),
        ("/pool_members", {**member, "weight": -1}, "weight: "),
        ("/pool_members", {**member, "weight": 257}, "weight: "),
        ("/pool_members", {**member, "protocol_port": 0}, "protocol_port: "),
        ("/pool_members", {**member, "protocol_port": 65536}, "protocol_port: "),
        ("/pool_members", {**member, "address": "10.0.0.256"}, "address: "),
        ("/pool_members", {**member, "weight": "2"}, "weight: "),
        ("/vips", {**vip, "protocol_port": 0}, "protocol_port: "),
        ("/vips", {**vip, "session_persistence": "HTTP_COOKIE"}, "session_persistence: "),
        ("/vips", {**vip, "address": "203.0.113"}, "address: "),
        ("/pools", {"load_balancer_id": lb["id"], "protocol": "UDP"}, "protocol: "),
        ("/pools", {"load_balancer_id": lb["id"], "protocol": "HTTP"}, "protocol: "),
        ("/pools", {"load_balancer_id": lb["id"], "lb_method": "LEAST_CONNECTIONS"}, "lb_method: "),
        ("/health_monitors", {"type": "HTTP"}, "type: "),
        ("/health_monitors", {"delay": 0}, "delay: "),
        ("/health_monitors", {"timeout": 0}, "timeout: "),
        ("/health_monitors", {"max_retries": 0}, "max_retries: "),
        ("/health_monitors", {"max_retries": 11}, "max_retries: "),
        ("/health_monitors", {"bogus": 1}, "bogus: unknown field"),
    ]
    for path, body, expected in cases:
        message = api.post(path, body, status=422)
        assert message.startswith(expected), (path, body, message)
    api.put(f"/pool_members/{t['m1']['id']}", {**t["m1"], "weight": 0}, status=422)
    for path in ("/pool_members", "/vips", "/pools", "/health_monitors", "/load_balancers"):
        assert "must be a JSON object" in api.post(path, [], status=422)  # type: ignore[arg-type]


def test_a_health_monitor_timeout_may_not_exceed_its_delay(api: Api) -> None:
    message = api.post("/health_monitors", {"delay": 2, "timeout": 3}, status=400)
    assert "timeout 3 is longer than delay 2" in message, message
    hm = api.post("/health_monitors", {"delay": 3, "timeout": 3, "max_retries": 10})
    message = api.put(f"/health_monitors/{hm['id']}", {**hm, "delay": 1}, status=400)
    assert "timeout 3 is longer than delay 1" in message
    assert api.get(f"/health_monitors/{hm['id']}") == hm


def test_members_per_pool_and_vips_per_load_balancer_are_bounded(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limits are lowered to what the topology already holds (the real ones are
    1024 and 256, `model/limits.py`)."""
    monkeypatch.setattr(store_lb, "MAX_POOL_MEMBERS", 2)
    monkeypatch.setattr(store_lb, "MAX_LB_VIPS", 1)
    t = _topology(api)
    body = {"pool_id": t["pool"]["id"], "address": "10.0.0.13", "protocol_port": 80}
    message = api.post("/pool_members", body, status=400)
    assert f"pool {t['pool']['id']} already has 2 members, the most a pool may have" in message
    vip = {**body, "load_balancer_id": t["lb"]["id"], "address": "203.0.113.13"}
    assert "already has 1 VIP, the most" in api.post("/vips", vip, status=400)
    # Updating what is there stays possible at the limit.
    api.put(f"/pool_members/{t['m1']['id']}", {**t["m1"], "weight": 9})
    api.put(f"/vips/{t['vip']['id']}", {**t["vip"], "protocol_port": 81})
