"""Cluster services in-process: leader-only services, failover, the liveness janitor."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient  # conftest imported it already, warnings hushed

from support.wait import wait_until
from tessera.api.app import create_app
from tessera.cluster import (
    ClusterServices,
    DisabledService,
    HostLivenessJanitor,
    ServiceContext,
    Timing,
)
from tessera.model import Host, new_id
from tessera.nsdb.base import Nsdb
from tessera.nsdb.store import TopologyStore


class Recorder:
    """A service that records which process runs it, and can be made to fail."""

    name = "recorder"
    redundancy = "singleton"

    def __init__(self, name: str = "recorder") -> None:
        self.name = name
        self.running = threading.Event()
        self.starts = 0
        self.fail_next = False

    def run(self, ctx: ServiceContext) -> None:
        self.starts += 1
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        self.running.set()
        try:
            ctx.stop.wait()
        finally:
            self.running.clear()


@pytest.fixture
def cluster(nsdb_factory: Any) -> Iterator[list[ClusterServices]]:
    made: list[ClusterServices] = []
    yield made
    for services in made:
        services.stop()


def _member(
    cluster: list[ClusterServices], nsdb: Nsdb, name: str, *services: Any
) -> ClusterServices:
    timing = Timing(spread_delay=0.0, rebalance_interval=0.0, restart_initial=0.05)
    member = ClusterServices(nsdb, name, list(services), timing=timing)
    member.start()
    cluster.append(member)
    return member


def test_services_run_only_on_the_leader_and_fail_over(
    nsdb_factory: Any, cluster: list[ClusterServices]
) -> None:
    r1, r2 = Recorder(), Recorder()
    first_nsdb = nsdb_factory()
    first = _member(cluster, first_nsdb, "api-1", r1)
    wait_until(r1.running.is_set)
    second = _member(cluster, nsdb_factory(), "api-2", r2)
    wait_until(lambda: second.leader() == "api-1")
    assert first.is_leader and not second.is_leader and not r2.running.is_set()
    first_nsdb.close()  # the leader's process dies: its session ends
    wait_until(r2.running.is_set)
    assert second.is_leader and not r1.running.is_set()
    assert second.leader() == "api-2"


def test_a_failing_service_is_restarted_while_leading(
    nsdb_factory: Any, cluster: list[ClusterServices]
) -> None:
    rec = Recorder()
    rec.fail_next = True
    member = _member(cluster, nsdb_factory(), "api-1", rec)
    wait_until(rec.running.is_set)
    assert rec.starts == 2 and member.is_leader and member.terms == 1


def test_janitor_follows_agent_sessions(nsdb_factory: Any, cluster: list[ClusterServices]) -> None:
    api_nsdb = nsdb_factory()
    api = TopologyStore(api_nsdb)
    _member(cluster, api_nsdb, "api-1", HostLivenessJanitor(api_nsdb))
    agent_nsdb = nsdb_factory()
    host_id = new_id()
    TopologyStore(agent_nsdb).register_host(host_id, "h1", ["198.18.0.1"])
    wait_until(lambda: api.get(Host, host_id).alive)
    agent_nsdb.close()
    wait_until(lambda: not api.get(Host, host_id).alive)
    TopologyStore(nsdb_factory()).register_host(host_id, "h1", ["198.18.0.1"])
    wait_until(lambda: api.get(Host, host_id).alive)


def test_janitor_repairs_what_changed_while_none_ran(
    nsdb_factory: Any, cluster: list[ClusterServices]
) -> None:
    api_nsdb = nsdb_factory()
    api = TopologyStore(api_nsdb)
    ghost, live = new_id(), new_id()
    agent = nsdb_factory()
    TopologyStore(agent).register_host(ghost, "ghost", [])
    TopologyStore(nsdb_factory()).register_host(live, "live", [])
    agent.close()  # no janitor yet: the stored host still says alive
    api.set_host_alive(live, False)  # and this one wrongly says dead
    assert api.get(Host, ghost).alive and not api.get(Host, live).alive
    _member(cluster, api_nsdb, "api-1", HostLivenessJanitor(api_nsdb))
    wait_until(lambda: not api.get(Host, ghost).alive and api.get(Host, live).alive)


def test_janitor_keeps_working_after_failover(
    nsdb_factory: Any, cluster: list[ClusterServices]
) -> None:
    n1, n2 = nsdb_factory(), nsdb_factory()
    _member(cluster, n1, "api-1", HostLivenessJanitor(n1))
    second = _member(cluster, n2, "api-2", HostLivenessJanitor(n2))
    api = TopologyStore(n2)
    n1.close()
    wait_until(lambda: second.is_leader)
    agent = nsdb_factory()
    host_id = new_id()
    TopologyStore(agent).register_host(host_id, "h", [])
    wait_until(lambda: api.get(Host, host_id).alive)
    agent.close()
    wait_until(lambda: not api.get(Host, host_id).alive)


def test_janitor_ends_alive_after_an_agent_session_expiry(
    nsdb_factory: Any, cluster: list[ClusterServices]
) -> None:
    """The agent's session expires (a partition) and its client re-creates the entry on
    a new session: whatever the janitor saw in between, the host ends alive."""
    api_nsdb = nsdb_factory()
    api = TopologyStore(api_nsdb)
    _member(cluster, api_nsdb, "api-1", HostLivenessJanitor(api_nsdb, full_pass_interval=60))
    agent = nsdb_factory()
    host_id = new_id()
    TopologyStore(agent).register_host(host_id, "h", [])
    wait_until(lambda: api.get(Host, host_id).alive)
    seen: list[bool] = []
    api_nsdb.watch_object(
        "hosts", host_id, lambda ev: seen.append(ev.value.alive) if ev.value else None
    )
    wait_until(lambda: seen)
    agent.expire_session()  # type: ignore[attr-defined]
    wait_until(lambda: host_id in api.live_hosts())
    wait_until(lambda: api.get(Host, host_id).alive and seen[-1])


def test_the_api_lists_this_nodes_services(
    nsdb_factory: Any, cluster: list[ClusterServices]
) -> None:
    nsdb = nsdb_factory()
    timing = Timing(spread_delay=0.0, rebalance_interval=0.0, restart_initial=0.05)
    rec = Recorder("job")
    member = ClusterServices(
        nsdb, "node-1", [rec], timing=timing, disabled=[DisabledService("other", "singleton")]
    )
    member.start()
    cluster.append(member)
    wait_until(rec.running.is_set)
    with TestClient(create_app(nsdb, member)) as client:
        body = client.get("/api/v1/cluster/services").json()
        assert body["node"] == "node-1"
        roles = {s["name"]: (s["role"], s["enabled"], s["ready"]) for s in body["services"]}
        assert roles == {"job": ("leader", True, True), "other": ("disabled", False, False)}
        health = client.get("/api/v1/health").json()
        assert health["leader"] and health["leader_id"] == "node-1"


def test_an_api_outside_a_cluster_node_has_no_services(api: Any) -> None:
    message = api.get("/cluster/services", status=404)
    assert "not part of a cluster node" in message
