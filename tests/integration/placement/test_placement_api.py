"""The placement REST API against a real Cassandra: OpenStack Placement's shapes,
generations and 409 on a stale one, allocations per consumer, candidates, and clear
errors (400/404/409/422, and 503 without Cassandra)."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from tessera.api.app import create_app
from tessera.cassandra.cluster import CassandraCluster
from tessera.nsdb.memory import MemoryNsdb
from tessera.placement.backend import PlacementBackend

P = "/api/v1/placement"


@pytest.fixture(scope="module")
def client(cassandra_node: CassandraCluster) -> Iterator[TestClient]:
    backend = PlacementBackend(cassandra_node.addresses, f"api_{uuid.uuid4().hex[:10]}")
    nsdb = MemoryNsdb()
    with TestClient(create_app(nsdb, placement=backend)) as c:
        yield c
    backend.close()
    nsdb.close()


def _provider(client: TestClient, vcpus: int = 8, traits: tuple[str, ...] = ()) -> dict[str, Any]:
    r = client.post(f"{P}/resource_providers", json={"name": f"rp-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 200, r.text
    rp = r.json()
    inv = {"VCPU": {"total": vcpus}, "MEMORY_MB": {"total": 16384, "reserved": 512}}
    r = client.put(
        f"{P}/resource_providers/{rp['uuid']}/inventories",
        json={"resource_provider_generation": rp["generation"], "inventories": inv},
    )
    assert r.status_code == 200, r.text
    generation = r.json()["resource_provider_generation"]
    if traits:
        r = client.put(
            f"{P}/resource_providers/{rp['uuid']}/traits",
            json={"resource_provider_generation": generation, "traits": list(traits)},
        )
        assert r.status_code == 200, r.text
    got: dict[str, Any] = client.get(f"{P}/resource_providers/{rp['uuid']}").json()
    return got


@pytest.mark.cassandra
def test_provider_inventory_generation_and_stale_409(client: TestClient) -> None:
    rp = _provider(client)
    assert rp["generation"] == 1
    assert rp["inventories"]["VCPU"]["total"] == 8
    assert rp["inventories"]["MEMORY_MB"]["reserved"] == 512
    r = client.get(f"{P}/resource_providers/{rp['uuid']}/inventories")
    assert r.json()["resource_provider_generation"] == 1
    stale = client.put(
        f"{P}/resource_providers/{rp['uuid']}/inventories",
        json={"resource_provider_generation": 0, "inventories": {"VCPU": {"total": 4}}},
    )
    assert stale.status_code == 409
    assert "generation" in stale.json()["message"]
    listed = client.get(f"{P}/resource_providers", params={"name": rp["name"]}).json()
    assert [p["uuid"] for p in listed["resource_providers"]] == [rp["uuid"]]
    dup = client.post(f"{P}/resource_providers", json={"name": rp["name"]})
    assert dup.status_code == 409


@pytest.mark.cassandra
def test_allocations_candidates_and_traits(client: TestClient) -> None:
    assert client.put(f"{P}/traits/CUSTOM_API_TEST").status_code in (201, 204)
    assert "CUSTOM_API_TEST" in client.get(f"{P}/traits").json()["traits"]
    rp = _provider(client, vcpus=4, traits=("HW_NIC_SRIOV", "CUSTOM_API_TEST"))
    r = client.get(
        f"{P}/allocation_candidates",
        params={"resources": "VCPU:2,MEMORY_MB:2048", "required": "CUSTOM_API_TEST"},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["allocation_requests"] == [
        {"allocations": {rp["uuid"]: {"resources": {"VCPU": 2, "MEMORY_MB": 2048}}}}
    ]
    assert body["provider_summaries"][rp["uuid"]]["resources"]["VCPU"] == {"capacity": 4, "used": 0}

    consumer = str(uuid.uuid4())
    alloc = {"allocations": {rp["uuid"]: {"resources": {"VCPU": 3, "MEMORY_MB": 1024}}}}
    assert client.put(f"{P}/allocations/{consumer}", json=alloc).status_code == 204
    got = client.get(f"{P}/allocations/{consumer}").json()
    assert got["allocations"][rp["uuid"]]["resources"] == {"VCPU": 3, "MEMORY_MB": 1024}
    usages = client.get(f"{P}/resource_providers/{rp['uuid']}/usages").json()["usages"]
    assert usages == {"MEMORY_MB": 1024, "VCPU": 3}
    # No room for 2 more VCPUs on it now: no candidate, and a direct claim is a 409.
    r = client.get(
        f"{P}/allocation_candidates",
        params={"resources": "VCPU:2", "required": "CUSTOM_API_TEST"},
    )
    assert r.json()["allocation_requests"] == []
    other = str(uuid.uuid4())
    too_much = {"allocations": {rp["uuid"]: {"resources": {"VCPU": 2}}}}
    r = client.put(f"{P}/allocations/{other}", json=too_much)
    assert r.status_code == 409 and "no room" in r.json()["message"]
    # An inventory below the usage is refused; a provider with allocations stays.
    gen = client.get(f"{P}/resource_providers/{rp['uuid']}").json()["generation"]
    r = client.put(
        f"{P}/resource_providers/{rp['uuid']}/inventories",
        json={"resource_provider_generation": gen, "inventories": {"VCPU": {"total": 2}}},
    )
    assert r.status_code == 409
    assert client.delete(f"{P}/resource_providers/{rp['uuid']}").status_code == 409
    assert client.delete(f"{P}/allocations/{consumer}").status_code == 204
    assert client.delete(f"{P}/allocations/{consumer}").status_code == 404
    assert client.get(f"{P}/allocations/{consumer}").json() == {"allocations": {}}
    assert client.delete(f"{P}/resource_providers/{rp['uuid']}").status_code == 204
    assert client.get(f"{P}/resource_providers/{rp['uuid']}").status_code == 404


@pytest.mark.cassandra
def test_a_put_replaces_allocations_and_a_failed_one_keeps_the_old(client: TestClient) -> None:
    a, b = _provider(client, vcpus=4), _provider(client, vcpus=4)
    consumer = str(uuid.uuid4())

    def put(allocs: dict[str, int]) -> Any:
        body = {"allocations": {p: {"resources": {"VCPU": n}} for p, n in allocs.items()}}
        return client.put(f"{P}/allocations/{consumer}", json=body)

    def used(rp: dict[str, Any]) -> int:
        usages = client.get(f"{P}/resource_providers/{rp['uuid']}/usages").json()["usages"]
        return int(usages.get("VCPU", 0))

    assert put({a["uuid"]: 3}).status_code == 204
    # Growing on the same provider counts what the consumer holds as its own: 3 -> 4
    # fits in 4, and the usage is 4, not 7.
    assert put({a["uuid"]: 4}).status_code == 204
    assert (used(a), used(b)) == (4, 0)
    # Moving to b frees a.
    assert put({b["uuid"]: 2}).status_code == 204
    assert (used(a), used(b)) == (0, 2)
    # A replacement that cannot fit (5 on b) changes nothing, not even the part that fit.
    assert put({a["uuid"]: 1, b["uuid"]: 5}).status_code == 409
    assert (used(a), used(b)) == (0, 2)
    got = client.get(f"{P}/allocations/{consumer}").json()["allocations"]
    assert {p: v["resources"] for p, v in got.items()} == {b["uuid"]: {"VCPU": 2}}
    assert client.delete(f"{P}/allocations/{consumer}").status_code == 204
    assert (used(a), used(b)) == (0, 0)


@pytest.mark.cassandra
def test_scheduled_request_is_recorded(client: TestClient) -> None:
    _provider(client, vcpus=2, traits=("CUSTOM_API_TEST",))
    r = client.post(
        f"{P}/requests",
        json={"resources": {"VCPU": 2}, "required": ["CUSTOM_API_TEST"], "weigher": "pack"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["state"] == "placed" and body["allocation"] == {"VCPU": 2}
    record = client.get(f"{P}/requests/{body['consumer']}").json()
    assert record["providers"] == [body["provider"]]
    assert record["resources"] == {"VCPU": 2}
    r = client.post(f"{P}/requests", json={"resources": {"VCPU": 100000}})
    assert r.status_code == 409 and "no resource provider" in r.json()["message"]


@pytest.mark.cassandra
def test_custom_resource_classes(client: TestClient) -> None:
    name = f"CUSTOM_BM_{uuid.uuid4().hex[:6].upper()}"
    assert client.put(f"{P}/resource_classes/{name}", json={"discrete": True}).status_code == 201
    assert client.put(f"{P}/resource_classes/{name}", json={"discrete": True}).status_code == 204
    assert client.put(f"{P}/resource_classes/{name}", json={"discrete": False}).status_code == 409
    assert client.get(f"{P}/resource_classes/{name}").json() == {"name": name, "discrete": True}
    names = [c["name"] for c in client.get(f"{P}/resource_classes").json()["resource_classes"]]
    assert {"VCPU", "MEMORY_MB", "DISK_GB", name} <= set(names)
    assert client.put(f"{P}/resource_classes/VCPU2").status_code == 400
    assert client.delete(f"{P}/resource_classes/VCPU").status_code == 400
    assert client.delete(f"{P}/resource_classes/{name}").status_code == 204
    assert client.get(f"{P}/resource_classes/{name}").status_code == 404


@pytest.mark.cassandra
@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("get", "/resource_providers/not-a-uuid", None, 404),
        ("get", f"/resource_providers/{uuid.UUID(int=7)}", None, 404),
        ("get", "/allocation_candidates?resources=VCPU", None, 400),
        ("get", "/allocation_candidates?resources=vcpu:1", None, 400),
        ("get", "/allocation_candidates", None, 422),
        ("post", "/resource_providers", {"name": ""}, 422),
        ("post", "/resource_providers", {"name": "x", "color": "red"}, 422),
        ("put", f"/allocations/{uuid.UUID(int=8)}", {"allocations": {}}, 400),
        (
            "put",
            f"/allocations/{uuid.UUID(int=8)}",
            {"allocations": {str(uuid.UUID(int=9)): {"resources": {"VCPU": 1}}}},
            404,
        ),
        ("post", "/requests", {"resources": {"VCPU": 0}}, 400),
        ("put", "/traits/NOT_CUSTOM", None, 400),
    ],
)
def test_bad_input_is_a_clear_4xx(
    client: TestClient, method: str, path: str, body: Any, status: int
) -> None:
    r = client.request(method.upper(), P + path, json=body)
    assert r.status_code == status, r.text
    assert r.json()["message"]


def test_without_cassandra_every_placement_call_is_503() -> None:
    nsdb = MemoryNsdb()
    with TestClient(create_app(nsdb)) as c:
        for path in ("/resource_providers", "/traits", "/allocation_candidates?resources=VCPU:1"):
            r = c.get(P + path)
            assert r.status_code == 503
            assert "--cassandra" in r.json()["message"]
    nsdb.close()
