"""`?wait=true` on each NSDB backend (ZooKeeper included): agents on fake datapaths,
each with its own NSDB session and its real loop on a thread, and the API over another
session. When the answer comes, every concerned agent's cache already holds the change;
concurrent waiting writes to the same agents all end (no request hides another)."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from tessera.agent.agent import Agent
from tessera.api.app import create_app
from tessera.datapath.fake import FakeDatapath
from tessera.model import Bridge, Chain, Port
from tessera.nsdb.errors import NsdbError
from tessera.nsdb.realization import REALIZED
from tessera.nsdb.store.topology import TopologyStore


@dataclass
class Cloud:
    client: TestClient
    admin: TopologyStore
    agents: list[Agent]
    chain: str


@pytest.fixture
def cloud(nsdb_factory: Any) -> Iterator[Cloud]:
    admin = TopologyStore(nsdb_factory())
    chain = admin.create(Chain(name="fw"))
    lan = admin.create(Bridge(name="lan", inbound_filter_id=chain.id))
    other = admin.create(Bridge(name="other"))
    agents = []
    for i, bridge in enumerate((lan, lan, other), 1):
        host_id = str(uuid.uuid4())
        agent = Agent(host_id, nsdb_factory(), FakeDatapath(), name=f"h{i}", write_state=False)
        agent.start()
        agent.run_in_thread()
        agents.append(agent)
        port = admin.create(Port(device_id=bridge.id, type="Bridge"))
        admin.bind(host_id, port.id, f"vm{i}")
    try:
        with TestClient(create_app(nsdb_factory())) as client:
            yield Cloud(client, admin, agents, chain.id)
    finally:
        for agent in agents:
            agent.stop()


def _add_rule(cloud: Cloud, timeout: float = 20) -> Any:
    response = cloud.client.post(
        f"/api/v1/chains/{cloud.chain}/rules?wait=true&wait_timeout={timeout}",
        json={"type": "drop", "nw_proto": 6},
    )
    assert response.status_code == 201, response.text
    return response


def test_the_answer_comes_once_the_concerned_caches_hold_it(cloud: Cloud) -> None:
    h1, h2, h3 = cloud.agents
    response = _add_rule(cloud)
    rule = response.json()["id"]
    assert h1.cache.get("rules", rule) is not None
    assert h2.cache.get("rules", rule) is not None
    assert response.headers["x-tessera-realized"] == "2"
    assert h3.host_id not in cloud.admin.nsdb.state_get(REALIZED)
    timing = dict(
        part.strip().split(";dur=") for part in response.headers["server-timing"].split(",")
    )
    assert list(timing) == [
        "prepare", "write", "barrier", "walk", "request", "agents", "agent", "cleanup"
    ]  # fmt: skip
    assert all(float(ms) >= 0 for ms in timing.values())
    assert float(timing["agent"]) > 0  # the agents' reports carry their own time

    gone = cloud.client.delete(f"/api/v1/rules/{rule}?wait=true&wait_timeout=20")
    assert gone.status_code == 204, gone.text
    assert h1.cache.get("rules", rule) is None
    assert h2.cache.get("rules", rule) is None


def test_concurrent_waiting_writes_all_end(cloud: Cloud) -> None:
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: _add_rule(cloud), range(6)))
    rules = {r.json()["id"] for r in responses}
    for agent in cloud.agents[:2]:
        assert all(agent.cache.get("rules", r) is not None for r in rules)


def test_a_port_group_concerns_only_the_agents_that_reach_its_ports(cloud: Cloud) -> None:
    """The API finds concerned agents with the agents' own rule (`agent.reach`): a
    group of a port on `lan` concerns the two agents on `lan`, not the one on `other`."""
    h1, h2, h3 = cloud.agents
    port = next(iter(h1.cache.bound_ports()))
    response = cloud.client.post(
        "/api/v1/port_groups?wait=true&wait_timeout=20", json={"name": "web"}
    )
    assert response.status_code == 201, response.text
    group = response.json()["id"]
    # A group that lists no port is in nobody's closure.
    assert response.headers["x-tessera-realized"] == "0"
    added = cloud.client.post(
        f"/api/v1/port_groups/{group}/ports?wait=true&wait_timeout=20", json={"port_id": port}
    )
    assert added.status_code in (200, 201), added.text
    assert added.headers["x-tessera-realized"] == "2"
    assert h1.cache.get("port_groups", group) is not None
    assert h2.cache.get("port_groups", group) is not None
    assert h3.cache.get("port_groups", group) is None


def test_warming_loads_the_copy_before_any_waiting_write(nsdb_factory: Any) -> None:
    """The API service warms its waiter when it starts, so the first waiting write does
    not load the whole topology; a warm-up that cannot reach the NSDB only logs."""
    admin = TopologyStore(nsdb_factory())
    chain = admin.create(Chain(name="fw"))
    app = create_app(nsdb_factory())
    waiter = app.state.waiter
    assert waiter.feed.get((Chain.kind, chain.id)) is None
    waiter.warm().join(20)
    assert waiter.feed.get((Chain.kind, chain.id)) == chain
    later = admin.create(Chain(name="later"))
    with TestClient(app) as client:  # the copy follows what comes after
        r = client.post(f"/api/v1/chains/{later.id}/rules?wait=true", json={"type": "drop"})
        assert r.status_code == 201, r.text
    assert waiter.feed.get((Chain.kind, later.id)) is not None
    waiter.close()

    closed = nsdb_factory()
    closed.close()
    dead = create_app(closed).state.waiter
    dead.warm().join(20)  # no exception escapes the thread; the next write retries
    with pytest.raises(NsdbError):
        dead.prepare()
