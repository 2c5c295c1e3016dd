"""The lab's side of placement without root or Cassandra: the inventory each host
reports, the API's placement config, when Cassandra may be given, the checks of
`vm add --schedule`, and registering and scheduling against a fake placement API (the
real one is tested in tests/integration/placement and, with a lab, in
tests/system/lab/test_lab_schedule.py)."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.client.rest import ApiClient
from tessera.cluster import config as cluster_config
from tessera.lab import api, hosts, names, services, state, vms
from tessera.lab import cassandra as lab_cassandra
from tessera.lab import placement as lab_placement
from tessera.lab.errors import LabError
from tessera.lab.state import LabState
from tessera.placement import report
from tessera.placement.model import Inventory


@pytest.fixture
def labs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(state.LAB_DIR_ENV, str(tmp_path))
    return tmp_path


def _lab(**fields: Any) -> LabState:
    lab = LabState(name="pl", index=4, api_port=18181, **fields)
    lab.hosts = [hosts.host_state(lab, k) for k in (1, 2)]
    return lab


# -- what each host reports ------------------------------------------------------------


def test_the_inventory_is_the_labs_or_this_machines_as_nova_reports_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    machine = {"VCPU": {"total": 2}, "MEMORY_MB": {"total": 7936}, "DISK_GB": {"total": 50}}
    monkeypatch.setattr(report, "local_inventory", lambda: machine)
    derived = lab_placement.inventory(_lab(cassandra_nodes=1))
    assert derived == {
        "VCPU": {"total": 2, "allocation_ratio": 4.0},
        "MEMORY_MB": {"total": 7936, "reserved": 512},
    }
    assert lab_placement.describe_inventory(derived) == (
        "VCPU 8 (2 x 4), MEMORY_MB 7424 (7936 - 512)"
    )
    given = lab_placement.inventory(_lab(cassandra_nodes=1, host_vcpus=3, host_ram_mb=1024))
    assert given == {"VCPU": {"total": 3}, "MEMORY_MB": {"total": 1024}}
    assert lab_placement.describe_inventory(given) == "VCPU 3, MEMORY_MB 1024"
    # A machine too small to spare 512 MB reserves nothing.
    machine["MEMORY_MB"] = {"total": 900}
    assert lab_placement.inventory(_lab())["MEMORY_MB"] == {"total": 900, "reserved": 0}


def test_every_api_node_of_a_lab_with_cassandra_serves_placement(labs_dir: Path) -> None:
    for lab in (_lab(cassandra_nodes=2), _lab(cassandra_nodes=3, cluster_nodes=3)):
        lab.dir.mkdir(parents=True, exist_ok=True)
        for k in range(1, lab.cluster_nodes + 1):
            path = services._write_node_config(lab, k)
            given = cluster_config.validate(cluster_config.load(path), str(path))
            assert given["services"]["api"] == {
                "cassandra": lab_cassandra.node_addresses(lab),
                "cassandra_keyspace": "tessera",
            }
            assert lab_cassandra.node_addresses(lab)[0] == "127.0.4.2"
    plain = _lab()
    path = services._write_node_config(plain, 1)
    given = cluster_config.validate(cluster_config.load(path), str(path))
    assert "api" not in given.get("services", {})


def test_cassandra_is_given_when_the_lab_is_made_and_never_after() -> None:
    lab = _lab()
    lab_cassandra.check_count(lab, 1, new=True)
    with pytest.raises(LabError, match=r"runs without Cassandra.*lab down --name pl"):
        lab_cassandra.check_count(lab, 1)
    lab_cassandra.check_count(lab, 0)
    lab_cassandra.check_count(lab, None)
    with pytest.raises(LabError, match="cannot grow or shrink"):
        lab_cassandra.check_count(_lab(cassandra_nodes=1), 2)


# -- vm add --schedule: the checks before anything is made -----------------------------


def test_a_vm_names_its_host_or_is_scheduled_and_only_with_cassandra() -> None:
    lab = _lab(cassandra_nodes=1)
    vms.check_placement(lab, "h1", None)
    vms.check_placement(lab, None, vms.Schedule(2, 2048))
    with pytest.raises(LabError, match="--host hK, or let placement choose one with --schedule"):
        vms.check_placement(lab, None, None)
    with pytest.raises(LabError, match="--schedule and --host exclude each other"):
        vms.check_placement(lab, "h1", vms.Schedule())
    with pytest.raises(LabError, match="--schedule needs placement, which needs Cassandra"):
        vms.check_placement(_lab(), None, vms.Schedule())
    with pytest.raises(LabError, match="at least 1"):
        vms.check_placement(lab, None, vms.Schedule(0, 512))


def test_vm_add_refuses_before_making_anything(labs_dir: Path) -> None:
    lab = _lab()
    with pytest.raises(LabError, match="needs Cassandra"):
        vms.add(lab, "v1", None, "6e1f7b6e-0000-4000-8000-000000000000", schedule=vms.Schedule())
    assert lab.vms == {} and not (lab.dir / state.STATE_FILE).exists()


# -- against a fake placement API ------------------------------------------------------


class FakePlacement:
    """Enough of /placement for the lab: providers with generations, inventories,
    traits, aggregates; requests and allocations answered as told."""

    def __init__(self) -> None:
        self.providers: dict[str, dict[str, Any]] = {}
        self.writes: list[str] = []
        self.deleted: list[str] = []
        self.request_answer: tuple[int, dict[str, Any]] = (409, {"message": "no room"})
        self.requests: list[dict[str, Any]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1/placement")
        body = json.loads(request.content) if request.content else None
        if request.method != "GET":
            self.writes.append(f"{request.method} {path}")
        rp = re.fullmatch(r"/resource_providers/([^/]+)(/\w+)?", path)
        if path == "/resource_providers" and request.method == "GET":
            return httpx.Response(200, json={"resource_providers": list(self.providers.values())})
        if path == "/resource_providers" and request.method == "POST":
            made = {"uuid": body["uuid"], "name": body["name"], "generation": 0, "traits": [],
                    "aggregates": [], "inventories": {}, "usages": {}}  # fmt: skip
            self.providers[body["uuid"]] = made
            return httpx.Response(200, json=made)
        if rp is not None:
            p = self.providers.get(rp.group(1))
            if p is None:
                return httpx.Response(404, json={"message": "no resource provider"})
            if request.method == "GET":
                return httpx.Response(200, json=p)
            if rp.group(2) is None:
                p["name"] = body["name"]
                p["generation"] += 1
                return httpx.Response(200, json=p)
            if body["resource_provider_generation"] != p["generation"]:
                return httpx.Response(409, json={"message": "generation conflict"})
            what = rp.group(2)[1:]
            if what == "inventories":
                p[what] = {k: Inventory.from_json(v).to_json() for k, v in body[what].items()}
                p["usages"] = {k: p["usages"].get(k, 0) for k in p[what]}
            else:
                p[what] = sorted(body[what])
            p["generation"] += 1
            return httpx.Response(200, json={"resource_provider_generation": p["generation"]})
        if path.startswith("/traits/CUSTOM_") and request.method == "PUT":
            return httpx.Response(204)
        if path == "/requests":
            self.requests.append(body)
            status, answer = self.request_answer
            return httpx.Response(status, json=answer)
        if path.startswith("/allocations/") and request.method == "DELETE":
            self.deleted.append(path.rpartition("/")[2])
            return httpx.Response(204)
        return httpx.Response(404, json={"message": f"unknown {request.method} {path}"})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakePlacement:
    placement = FakePlacement()

    @contextlib.contextmanager
    def client(lab: LabState, timeout: httpx.Timeout = api.TIMEOUT) -> Iterator[ApiClient]:
        made = ApiClient(lab.api_url or "", transport=httpx.MockTransport(placement.handle))
        try:
            yield made
        finally:
            made.close()

    monkeypatch.setattr(api, "client", client)
    return placement


def test_hosts_register_once_keep_their_traits_and_join_the_labs_aggregate(
    fake: FakePlacement,
) -> None:
    lab = _lab(cassandra_nodes=1, host_vcpus=2, host_ram_mb=2048)
    assert lab_placement.register_hosts(lab) == ["h1", "h2"]
    aggregate = names.placement_aggregate("pl")
    for host in lab.hosts:
        p = fake.providers[host.host_id]
        assert p["name"] == host.name and p["aggregates"] == [aggregate]
        assert {k: v["total"] for k, v in p["inventories"].items()} == {
            "VCPU": 2,
            "MEMORY_MB": 2048,
        }
    # Again: nothing written.
    fake.writes.clear()
    assert lab_placement.register_hosts(lab) == []
    assert fake.writes == []
    # A trait a user gave h1 stays when the lab's inventory changes.
    fake.providers[lab.hosts[0].host_id]["traits"] = ["CUSTOM_FAST"]
    lab.host_vcpus = 4
    assert lab_placement.register_hosts(lab) == ["h1", "h2"]
    h1 = fake.providers[lab.hosts[0].host_id]
    assert h1["traits"] == ["CUSTOM_FAST"] and h1["inventories"]["VCPU"]["total"] == 4
    assert h1["aggregates"] == [aggregate]
    # A host added later is registered by the next `up`.
    lab.hosts.append(hosts.host_state(lab, 3))
    assert lab_placement.register_hosts(lab) == ["h3"]


def test_placement_not_answering_is_one_clear_line(fake: FakePlacement) -> None:
    lab = _lab(cassandra_nodes=1)

    def unavailable(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"message": "placement is not configured"})

    fake.handle = unavailable  # type: ignore[method-assign]
    with pytest.raises(LabError, match="host h1 cannot register in placement: placement is not"):
        lab_placement.register_hosts(lab)


def test_schedule_asks_for_the_labs_hosts_and_names_the_chosen_one(fake: FakePlacement) -> None:
    lab = _lab(cassandra_nodes=1)
    h2 = lab.hosts[1]
    fake.request_answer = (201, {"provider": h2.host_id, "allocation": {"VCPU": 2}})
    host, consumer, taken = lab_placement.schedule(lab, 2, 1024)
    assert host == h2 and taken == {"VCPU": 2}
    (asked,) = fake.requests
    assert asked == {
        "resources": {"VCPU": 2, "MEMORY_MB": 1024},
        "member_of": [names.placement_aggregate("pl")],
        "consumer": consumer,
    }
    assert fake.deleted == []


def test_no_room_says_what_is_used_where_and_claims_nothing(fake: FakePlacement) -> None:
    lab = _lab(cassandra_nodes=1, host_vcpus=2, host_ram_mb=2048)
    lab_placement.register_hosts(lab)
    for p in fake.providers.values():
        p["usages"] = {"VCPU": 2, "MEMORY_MB": 2048}
    with pytest.raises(LabError) as caught:
        lab_placement.schedule(lab, 2, 2048)
    assert caught.value.message == (
        "no host of lab pl has room for VCPU 2, MEMORY_MB 2048 (used/capacity: "
        "h1 MEMORY_MB 2048/2048, VCPU 2/2; h2 MEMORY_MB 2048/2048, VCPU 2/2); "
        "`tessera lab vm del` a scheduled VM or ask for less"
    )
    assert fake.deleted == []


def test_a_provider_that_is_no_host_of_the_lab_is_given_back(fake: FakePlacement) -> None:
    lab = _lab(cassandra_nodes=1)
    other = "11111111-2222-4333-8444-555555555555"
    fake.request_answer = (201, {"provider": other, "allocation": {"VCPU": 1}})
    with pytest.raises(LabError, match=f"chose resource provider {other}, no host of lab pl"):
        lab_placement.schedule(lab, 1, 512)
    assert fake.deleted == [fake.requests[0]["consumer"]]


def test_a_request_whose_answer_is_lost_is_given_back(fake: FakePlacement) -> None:
    lab = _lab(cassandra_nodes=1)
    handle = fake.handle

    def lost(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/requests"):
            handle(request)
            raise httpx.ReadTimeout("timed out", request=request)
        return handle(request)

    fake.handle = lost  # type: ignore[method-assign]
    with pytest.raises(Exception, match="timed out"):
        lab_placement.schedule(lab, 1, 512)
    assert fake.deleted == [fake.requests[0]["consumer"]]
