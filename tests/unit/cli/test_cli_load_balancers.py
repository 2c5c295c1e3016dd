"""`tessera load-balancer|pool|pool-member|vip|health-monitor ...`: what each command
sends (the real API's answers are tested in tests/integration/cli)."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
from cli_fake_api import FakeApi
from cli_harness import Run

R = "11111111-1111-4111-8111-111111111111"  # a router
L = "22222222-2222-4222-8222-222222222222"  # a load balancer
P = "33333333-3333-4333-8333-333333333333"  # a pool
M = "44444444-4444-4444-8444-444444444444"  # a member
V = "55555555-5555-4555-8555-555555555555"  # a VIP
H = "66666666-6666-4666-8666-666666666666"  # a health monitor


def _sent(api: FakeApi, run: Run, args: str) -> tuple[str, str, Any]:
    out = run(*shlex.split(args))
    assert out.exit_code == 0, out.stderr
    sent = api.sent[-1]
    return sent.method, sent.path, sent.body


CREATES = [
    (f"load-balancer create --router {R}", "/load_balancers", {"router_id": R}),
    (f"load-balancer create --router-id {R} --down --id {L}", "/load_balancers",
     {"id": L, "router_id": R, "admin_state_up": False}),
    (f"pool create --load-balancer {L} --health-monitor {H} --protocol tcp "
     "--lb-method round_robin", "/pools",
     {"load_balancer_id": L, "health_monitor_id": H, "protocol": "TCP",
      "lb_method": "ROUND_ROBIN"}),
    (f"pool-member create --pool {P} --address 10.0.0.1 --port 80 --weight 2", "/pool_members",
     {"pool_id": P, "address": "10.0.0.1", "protocol_port": 80, "weight": 2}),
    (f"vip create --load-balancer {L} --pool {P} --address 203.0.113.1 --protocol-port 443 "
     "--session-persistence SOURCE_IP --up", "/vips",
     {"load_balancer_id": L, "pool_id": P, "address": "203.0.113.1", "protocol_port": 443,
      "session_persistence": "SOURCE_IP", "admin_state_up": True}),
    ("health-monitor create --type tcp --delay 10 --timeout 4 --max-retries 5", "/health_monitors",
     {"type": "TCP", "delay": 10, "timeout": 4, "max_retries": 5}),
    ("health-monitor create", "/health_monitors", {}),
]  # fmt: skip


@pytest.mark.parametrize(("args", "path", "body"), CREATES, ids=[c[0][:40] for c in CREATES])
def test_create_sends(api: FakeApi, run: Run, args: str, path: str, body: dict[str, Any]) -> None:
    assert _sent(api, run, args) == ("POST", path, body)


UPDATES = [
    ("/pool_members", M, {"pool_id": P, "address": "10.0.0.1", "protocol_port": 80, "weight": 1,
                          "status": "INACTIVE"},
     f"pool-member update {M} --weight 3 --down",
     {"pool_id": P, "address": "10.0.0.1", "protocol_port": 80, "weight": 3,
      "status": "INACTIVE", "admin_state_up": False}),
    ("/vips", V, {"pool_id": P, "session_persistence": "SOURCE_IP"},
     f"vip update {V} --session-persistence none", {"pool_id": P, "session_persistence": None}),
    ("/pools", P, {"load_balancer_id": L, "health_monitor_id": H},
     f"pool update {P} --health-monitor none", {"load_balancer_id": L, "health_monitor_id": None}),
    ("/health_monitors", H, {"delay": 5, "timeout": 3}, f"health-monitor update {H} --delay 9",
     {"delay": 9, "timeout": 3}),
    ("/load_balancers", L, {"router_id": R}, f"load-balancer update {L} --down",
     {"router_id": R, "admin_state_up": False}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("collection", "oid", "stored", "args", "expected"), UPDATES, ids=[u[3][:40] for u in UPDATES]
)
def test_update_puts_the_whole_object_with_the_changes(
    api: FakeApi,
    run: Run,
    collection: str,
    oid: str,
    stored: dict[str, Any],
    args: str,
    expected: dict[str, Any],
) -> None:
    api.add(collection, id=oid, **stored)
    assert _sent(api, run, args) == ("PUT", f"{collection}/{oid}", {"id": oid, **expected})


@pytest.mark.parametrize(
    ("args", "path"),
    [
        ("load-balancer list", "/load_balancers"),
        ("pool list", "/pools"),
        (f"pool list --load-balancer {L}", f"/load_balancers/{L}/pools"),
        ("pool-member list", "/pool_members"),
        (f"pool-member list --pool {P}", f"/pools/{P}/pool_members"),
        ("vip list", "/vips"),
        (f"vip list --pool {P}", f"/pools/{P}/vips"),
        (f"vip list --load-balancer {L}", f"/load_balancers/{L}/vips"),
        ("health-monitor list", "/health_monitors"),
        (f"vip show {V}", f"/vips/{V}"),
        (f"pool-members show {M}", f"/pool_members/{M}"),
        (f"health_monitor show {H}", f"/health_monitors/{H}"),
    ],
)
def test_reads_go_to_the_collection_or_the_parent(
    api: FakeApi, run: Run, args: str, path: str
) -> None:
    for collection, oid in (("/vips", V), ("/pool_members", M), ("/health_monitors", H)):
        api.add(collection, id=oid)
    assert _sent(api, run, args)[:2] == ("GET", path)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ("load-balancer create", ("a load balancer needs --router ROUTER_ID",)),
        ("pool create", ("a pool needs --load-balancer LB_ID",)),
        (f"pool-member create --pool {P} --address 10.0.0.1", ("--protocol-port N",)),
        (f"pool-member create --pool {P} --address 10.0.0.1 --port 80 --weight 0",
         ("--weight", "not in 1..256")),
        (f"vip create --load-balancer {L} --address 203.0.113.1 --port 80", ("--pool POOL_ID",)),
        (f"vip create --load-balancer {L} --pool {P} --address 203.0.113.1 --port 80 "
         "--session-persistence HTTP_COOKIE", ("--session-persistence", "SOURCE_IP")),
        (f"vip list --pool {P} --load-balancer {L}", ("not both",)),
        ("health-monitor create --max-retries 11", ("--max-retries", "not in 1..10")),
        ("health-monitor create --type HTTP", ("--type", "TCP")),
        (f"pool update {P} --lb-method LEAST_CONNECTIONS", ("--lb-method",)),
        ("vip show nope", ("not an id",)),
        (f"load-balancer update {L}", ("nothing to change",)),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line_and_send_nothing(
    api: FakeApi, run: Run, args: str, fragments: tuple[str, ...]
) -> None:
    run(*shlex.split(args)).assert_one_line_error(*fragments, code=2)
    assert api.writes() == []
