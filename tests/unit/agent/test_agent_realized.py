"""`?wait=true` against agents running their real loops over an in-memory NSDB: the API
answers once every concerned agent has the change in its cache and its flows gone, and
only the concerned ones are asked."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from agent_harness import Cloud, Host

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from tessera.api.app import create_app
from tessera.model import Bridge, Chain
from tessera.nsdb.memory import MemoryNsdb
from tessera.nsdb.realization import REALIZED, decode_report


@dataclass
class Setup:
    cloud: Cloud
    client: TestClient
    chain: str
    h1: Host
    h2: Host
    h3: Host


@pytest.fixture
def setup(cloud: Cloud) -> Iterator[Setup]:
    h1, h2, h3 = (cloud.host(f"h{i}", f"198.18.0.{i}") for i in (1, 2, 3))
    chain = cloud.topo.create(Chain(name="fw"))
    shared = cloud.bridge("shared")
    cloud.topo.update(Bridge, shared.id, {"inbound_filter_id": chain.id})
    cloud.vm(h1, shared, "vm1", "02:00:00:00:00:01", "10.0.0.1")
    cloud.vm(h2, shared, "vm2", "02:00:00:00:00:02", "10.0.0.2")
    cloud.vm(h3, cloud.bridge("other"), "vm3", "02:00:00:00:00:03", "10.0.1.3")
    cloud.settle()
    for host in (h1, h2, h3):
        host.agent.run_in_thread()
    api_nsdb = MemoryNsdb(cloud.backend)
    with TestClient(create_app(api_nsdb)) as client:
        yield Setup(cloud, client, chain.id, h1, h2, h3)
    api_nsdb.close()


def _rule(s: Setup, query: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    response = s.client.post(
        f"/api/v1/chains/{s.chain}/rules{query}",
        json={"type": "drop", "nw_proto": 1},
        headers=headers or {},
    )
    return response.status_code, {**response.json(), "_headers": dict(response.headers)}


def test_wait_returns_once_concerned_agents_applied(setup: Setup) -> None:
    status, rule = _rule(setup, "?wait=true&wait_timeout=10")
    assert status == 201, rule
    # In the caches of the hosts that reach the chain the moment the answer comes...
    assert setup.h1.agent.cache.get("rules", rule["id"]) is not None
    assert setup.h2.agent.cache.get("rules", rule["id"]) is not None
    assert rule["_headers"]["x-tessera-realized"] == "2"
    reports = setup.cloud.admin.state_get(REALIZED)
    # ...and only they were asked: h3's bridge does not reach the chain.
    assert setup.h3.host_id not in reports
    assert {setup.h1.host_id, setup.h2.host_id} <= set(reports)


def test_header_asks_too_and_plain_writes_do_not_wait(setup: Setup) -> None:
    for query in ("", "?wait=false", "?wait_timeout=3"):
        status, _ = _rule(setup, query)
        assert status == 201
    assert setup.cloud.admin.state_get(REALIZED) == {}  # nobody was asked
    status, rule = _rule(setup, "", {"X-Tessera-Wait": "10"})
    assert status == 201
    assert rule["_headers"]["x-tessera-realized"] == "2"


def test_a_stuck_agent_times_out_with_504_and_the_write_stays(setup: Setup) -> None:
    # h2's loop stops (its session and liveness stay): it never applies anything.
    setup.h2.agent._stop.set()
    setup.h2.dp.wakeup()
    assert setup.h2.agent._thread is not None
    setup.h2.agent._thread.join(timeout=5)
    status, body = _rule(setup, "?wait=true&wait_timeout=0.5")
    assert status == 504
    assert body["hosts"] == [setup.h2.host_id]
    assert "h2" in body["message"] and "committed" in body["message"]
    # Where the wait went, for whoever looks into the late agent.
    phases = [p.split(";")[0].strip() for p in body["_headers"]["server-timing"].split(",")]
    assert phases[:2] == ["prepare", "write"] and "agents" in phases
    rules = setup.client.get(f"/api/v1/chains/{setup.chain}/rules").json()
    assert len(rules) == 1  # committed all the same
    h1 = decode_report(setup.cloud.admin.state_get(REALIZED)[setup.h1.host_id])
    assert h1 is not None and h1.seq >= 1


def test_a_dead_agent_is_not_waited_for(setup: Setup) -> None:
    setup.cloud.stop(setup.h2)  # its liveness goes with its session
    status, rule = _rule(setup, "?wait=true&wait_timeout=5")
    assert status == 201, rule
    assert rule["_headers"]["x-tessera-realized"] == "1"


@pytest.mark.parametrize(
    "query",
    ["?wait=maybe", "?wait=true&wait_timeout=-1", "?wait=true&wait_timeout=x", "?wait_timeout=601"],
)
def test_bad_wait_parameters_are_422(setup: Setup, query: str) -> None:
    status, body = _rule(setup, query)
    assert status == 422
    assert "wait" in body["message"]
    assert setup.client.get(f"/api/v1/chains/{setup.chain}/rules").json() == []
