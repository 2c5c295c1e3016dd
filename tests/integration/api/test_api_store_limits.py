"""What the store refuses because of other objects or of the NSDB's size limits, through
the API on both backends (issue 13, items 3 and 6)."""

from __future__ import annotations

import pytest
from api_helpers import Api

from tessera.nsdb import codec


def test_an_object_too_large_for_the_nsdb_is_413_naming_the_limit_and_its_size(
    any_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit is lowered so that an object the model accepts (whatever its list
    limits) exceeds it; the real limit's effect on ZooKeeper is tested in
    tests/integration/nsdb/test_nsdb_ids_and_sizes.py."""
    api = any_api
    port = api.bridge_port(api.bridge())
    monkeypatch.setattr(codec, "MAX_OBJECT_BYTES", 1024)
    conditions = [{"nw_proto": 6, "tp_dst": {"start": p, "end": p}} for p in range(1, 33)]
    message = api.post("/mirrors", {"to_port_id": port["id"], "conditions": conditions}, 413)
    assert "above its limit of 1024 bytes (1 KiB) per object" in message, message
    assert "would take " in message and "mirror " in message
    assert api.get("/mirrors") == []
    api.get("/health")
    small = api.post("/mirrors", {"to_port_id": port["id"], "conditions": conditions[:3]})
    assert len(small["conditions"]) == 3


def test_router_port_macs_are_unique_in_the_cluster(any_api: Api) -> None:
    api = any_api
    r1, r2 = api.router(), api.router()
    mac = "02:aa:00:00:00:01"
    body = {"port_address": "10.0.0.1", "network_address": "10.0.0.0", "network_length": 24}
    first = api.post(f"/routers/{r1['id']}/ports", {**body, "port_mac": mac})
    for router, addr in ((r1, "10.0.1.1"), (r2, "10.0.0.1")):
        other = {**body, "port_address": addr, "network_address": addr, "port_mac": mac.upper()}
        message = api.post(f"/routers/{router['id']}/ports", other, status=409)
        assert f"port_mac {mac} is already the MAC of port {first['id']}" in message, message
    # An assigned MAC never collides; a different explicit one is fine.
    api.post(f"/routers/{r2['id']}/ports", body)
    api.post(f"/routers/{r2['id']}/ports", {**body, "port_address": "10.0.5.1",
                                           "network_address": "10.0.5.0",
                                           "port_mac": "02:aa:00:00:00:02"})  # fmt: skip
    # The MAC is free again once its port is deleted.
    api.delete(f"/ports/{first['id']}")
    api.post(f"/routers/{r1['id']}/ports", {**body, "port_mac": mac})


@pytest.mark.parametrize(
    ("existing", "new"),
    [
        (("10.0.0.1", 24), ("10.0.0.2", 24)),  # the same subnet
        (("10.0.0.1", 24), ("10.0.0.129", 25)),  # inside it
        (("10.0.0.1", 24), ("10.0.0.1", 16)),  # around it
    ],
)
def test_two_ports_of_one_router_cannot_share_a_subnet(
    any_api: Api, existing: tuple[str, int], new: tuple[str, int]
) -> None:
    api = any_api
    router, other_router = api.router(), api.router()
    held = api.router_port(router, *existing)
    addr, length = new
    body = {"port_address": addr, "network_address": addr, "network_length": length}
    message = api.post(f"/routers/{router['id']}/ports", body, status=409)
    assert f"router {router['id']} already has port {held['id']}" in message, message
    assert "overlaps" in message
    api.router_port(other_router, *new)  # another router may use it
    api.router_port(router, "10.1.0.1", 24)  # a disjoint subnet is fine
    assert len(api.get(f"/routers/{router['id']}/ports")) == 2


def test_dhcp_subnets_of_one_bridge_cannot_overlap(any_api: Api) -> None:
    api = any_api
    bridge, other_bridge = api.bridge(), api.bridge()
    subnets = f"/bridges/{bridge['id']}/dhcp_subnets"
    api.post(subnets, {"subnet_prefix": "10.0.0.0", "subnet_length": 24})
    for prefix, length in (("10.0.0.128", 25), ("10.0.0.0", 16), ("10.0.0.0", 24)):
        message = api.post(subnets, {"subnet_prefix": prefix, "subnet_length": length}, 409)
        assert f"bridge {bridge['id']} already has DHCP subnet 10.0.0.0_24" in message, message
    api.post(
        f"/bridges/{other_bridge['id']}/dhcp_subnets",
        {"subnet_prefix": "10.0.0.128", "subnet_length": 25},
    )
    api.post(subnets, {"subnet_prefix": "10.0.1.0", "subnet_length": 24})
    assert [s["subnet_prefix"] for s in api.get(subnets)] == ["10.0.0.0", "10.0.1.0"]
