"""Load balancer objects: the values and rules the model refuses on its own (the rules
that need other objects are the store's, tested through the API)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tessera.model import (
    KINDS,
    HealthMonitor,
    LoadBalancer,
    Pool,
    PoolMember,
    Router,
    StoredObject,
    Vip,
    new_id,
)
from tessera.model.text import STORED_CONTEXT
from tessera.model.types import RULE_ERROR


def member(**extra: Any) -> PoolMember:
    return PoolMember.model_validate(
        {"pool_id": new_id(), "address": "10.0.0.10", "protocol_port": 80, **extra}
    )


def vip(**extra: Any) -> Vip:
    fields = {"load_balancer_id": new_id(), "pool_id": new_id(), "address": "203.0.113.1"}
    return Vip.model_validate({**fields, "protocol_port": 443, **extra})


def error_types(exc: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    return {e["type"] for e in exc.value.errors()}


def test_the_kinds_are_registered_with_their_references() -> None:
    for cls in (LoadBalancer, Pool, PoolMember, Vip, HealthMonitor):
        assert KINDS[cls.kind] is cls
    refs = {
        (cls.kind, r.field): (r.targets, r.on_delete) for cls in KINDS.values() for r in cls.refs
    }
    assert refs[("load_balancers", "router_id")] == ((Router.kind,), "cascade")
    assert refs[("pools", "load_balancer_id")] == (("load_balancers",), "cascade")
    assert refs[("pools", "health_monitor_id")] == (("health_monitors",), "nullify")
    assert refs[("pool_members", "pool_id")] == (("pools",), "cascade")
    assert refs[("vips", "pool_id")] == (("pools",), "cascade")
    assert refs[("vips", "load_balancer_id")] == (("load_balancers",), "cascade")


def test_defaults_are_midonets() -> None:
    lb = LoadBalancer(router_id=new_id())
    assert lb.admin_state_up is True
    pool = Pool(load_balancer_id=lb.id)
    assert (pool.protocol, pool.lb_method, pool.status, pool.health_monitor_id) == (
        "TCP", "ROUND_ROBIN", "ACTIVE", None,
    )  # fmt: skip
    assert (member().weight, member().status, member().admin_state_up) == (1, "ACTIVE", True)
    assert vip().session_persistence is None
    hm = HealthMonitor()
    assert (hm.type, hm.delay, hm.timeout, hm.max_retries, hm.status) == ("TCP", 5, 3, 3, "ACTIVE")


@pytest.mark.parametrize(
    ("cls", "field"),
    [(Pool, "status"), (PoolMember, "status"), (HealthMonitor, "status")],
)
def test_status_is_server_owned(cls: type[StoredObject], field: str) -> None:
    assert field in cls.read_only and field in cls.independent_fields


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"weight": 0}, "weight"), ({"weight": -3}, "weight"), ({"weight": 257}, "weight"),
        ({"protocol_port": 0}, "protocol_port"), ({"protocol_port": 65536}, "protocol_port"),
        ({"address": "10.0.0.300"}, "address"), ({"status": "DOWN"}, "status"),
    ],
)  # fmt: skip
def test_member_values_out_of_range_are_refused(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        member(**fields)
    assert [e["loc"] for e in exc.value.errors()] == [(field,)]
    assert RULE_ERROR not in error_types(exc)  # a schema violation: 422 in a request


@pytest.mark.parametrize(
    "address",
    ["0.0.0.0", "0.1.2.3", "127.0.0.1", "224.0.0.1", "239.1.1.1", "240.0.0.1", "255.255.255.255"],
)
def test_member_and_vip_addresses_are_usable_unicast(address: str) -> None:
    for make in (member, vip):
        with pytest.raises(ValidationError, match="a usable unicast IPv4 address is needed") as exc:
            make(address=address)
        assert error_types(exc) == {RULE_ERROR}  # the schema cannot state it: a 400


def test_usable_addresses_pass_and_stored_ones_are_read_back_as_they_are() -> None:
    for address in ("10.0.0.1", "192.0.2.255", "223.255.255.254", "1.0.0.0"):
        assert member(address=address).address == address
    data = {"pool_id": new_id(), "address": "127.0.0.1", "protocol_port": 80}
    assert PoolMember.model_validate(data, context=STORED_CONTEXT).address == "127.0.0.1"


def test_only_tcp_round_robin_and_source_ip_persistence() -> None:
    lb = new_id()
    for fields in ({"protocol": "UDP"}, {"protocol": "HTTP"}, {"lb_method": "LEAST_CONNECTIONS"}):
        with pytest.raises(ValidationError):
            Pool.model_validate({"load_balancer_id": lb, **fields})
    with pytest.raises(ValidationError):
        vip(session_persistence="HTTP_COOKIE")
    assert vip(session_persistence="SOURCE_IP").session_persistence == "SOURCE_IP"
    with pytest.raises(ValidationError):
        HealthMonitor.model_validate({"type": "HTTP"})
    with pytest.raises(ValidationError):
        Vip.model_validate({"load_balancer_id": lb, "address": "203.0.113.1", "protocol_port": 80})


@pytest.mark.parametrize(
    "fields",
    [{"delay": 0}, {"timeout": 0}, {"max_retries": 0}, {"max_retries": 11}, {"delay": 3601}],
)
def test_health_monitor_values_out_of_range_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        HealthMonitor.model_validate(fields)


def test_a_health_monitor_timeout_is_at_most_its_delay() -> None:
    assert HealthMonitor(delay=4, timeout=4).timeout == 4
    with pytest.raises(ValidationError, match="timeout 5 is longer than delay 4"):
        HealthMonitor(delay=4, timeout=5)
    hm = HealthMonitor(delay=4, timeout=2)
    with pytest.raises(ValidationError, match="longer than delay"):
        hm.model_copy(update={"delay": 1})


def test_status_copies_validate_only_the_status() -> None:
    m = member()
    down = m.model_copy(update={"status": "INACTIVE"})
    assert down.status == "INACTIVE" and down.model_dump(exclude={"status"}) == m.model_dump(
        exclude={"status"}
    )
    with pytest.raises(ValidationError):
        m.model_copy(update={"status": "DOWN"})
