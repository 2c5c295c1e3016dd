"""A cluster node in-process on the memory NSDB: services by redundancy, back-off,
readiness, spreading leadership, status, and the embedded ZooKeeper's wiring."""

from __future__ import annotations

import itertools
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.wait import wait_until
from tessera.cluster import ClusterServices, ServiceContext, Timing
from tessera.cluster import config as cfg
from tessera.cluster.node import ServeError, build_services, embedded_zookeeper
from tessera.cluster.services import (
    FOLLOWER,
    LEADER,
    STATUS_TABLE,
    ServiceCollector,
    read_cluster_status,
)
from tessera.nsdb.memory import MemoryNsdb, MemoryStore

FAST = Timing(spread_delay=0.0, rebalance_interval=0.0, restart_initial=0.05, restart_max=0.4)


class Worker:
    """A service that runs until stopped; `fail` makes each run raise at once."""

    def __init__(self, name: str, redundancy: str = "singleton", fail: bool = False) -> None:
        self.name = name
        self.redundancy = redundancy
        self.fail = fail
        self.ready_when_started = not fail
        self.starts: list[float] = []
        self.running = threading.Event()

    def run(self, ctx: ServiceContext) -> None:
        self.starts.append(time.monotonic())
        if self.fail:
            raise RuntimeError(f"crash {len(self.starts)}")
        self.running.set()
        try:
            ctx.stop.wait()
        finally:
            self.running.clear()


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    yield MemoryStore()


@pytest.fixture
def nodes() -> Iterator[list[ClusterServices]]:
    made: list[ClusterServices] = []
    yield made
    for node in made:
        node.stop()
        node.nsdb.close()


def _node(
    nodes: list[ClusterServices], store: MemoryStore, name: str, *services: Any, **kw: Any
) -> ClusterServices:
    node = ClusterServices(MemoryNsdb(store), name, list(services), timing=kw.pop("timing", FAST))
    node.start()
    nodes.append(node)
    return node


def test_every_node_services_run_everywhere_singletons_once(
    store: MemoryStore, nodes: list[ClusterServices]
) -> None:
    a_api, b_api = Worker("web", "every-node"), Worker("web", "every-node")
    a_job, b_job = Worker("job"), Worker("job")
    a = _node(nodes, store, "a", a_api, a_job)
    b = _node(nodes, store, "b", b_api, b_job)
    wait_until(lambda: a_api.running.is_set() and b_api.running.is_set())
    wait_until(lambda: a_job.running.is_set())
    wait_until(lambda: b.runner("job").role == FOLLOWER)
    assert not b_job.running.is_set() and b.leader("job") == "a"
    assert a.runner("web").role == "active" and a.is_leader and not b.is_leader


def test_a_failing_service_backs_off_and_keeps_the_other_leaderships(
    store: MemoryStore, nodes: list[ClusterServices]
) -> None:
    crash, steady = Worker("crash", fail=True), Worker("steady")
    node = _node(nodes, store, "a", crash, steady)
    wait_until(lambda: len(crash.starts) >= 5, timeout=10)
    gaps = [b - a for a, b in itertools.pairwise(crash.starts)][:4]
    for gap, want in zip(gaps, [0.05, 0.1, 0.2, 0.4], strict=True):
        assert gap >= want * 0.9, gaps
    status = {s["name"]: s for s in node.status()}
    assert status["crash"]["role"] == LEADER and status["crash"]["restarts"] >= 4
    assert status["crash"]["last_error"].startswith("RuntimeError: crash")
    assert not status["crash"]["ready"]
    assert status["steady"]["role"] == LEADER and status["steady"]["ready"]
    assert node.runner("crash").terms == 1 and steady.running.is_set()


def test_leadership_spreads_by_resigning_the_newest(
    store: MemoryStore, nodes: list[ClusterServices]
) -> None:
    """One node took all three singletons; a newcomer queued for them takes one as soon
    as the first rebalances, and the services led longest stay where they were."""
    timing = Timing(spread_delay=0.0, rebalance_interval=0.2, restart_initial=0.05)
    a = _node(nodes, store, "a", Worker("s1"), Worker("s2"), Worker("s3"), timing=timing)
    wait_until(lambda: sorted(a.leads()) == ["s1", "s2", "s3"])
    newest = max(a.singletons, key=lambda r: r.since_monotonic).name
    b = _node(nodes, store, "b", Worker("s1"), Worker("s2"), Worker("s3"), timing=FAST)
    wait_until(lambda: len(b.leads()) == 1, timeout=10)
    assert b.leads() == [newest] and len(a.leads()) == 2
    assert a.rebalance_once(MemoryNsdb(store).state_get(STATUS_TABLE)) is None  # balanced


def test_a_disabled_service_is_listed_never_run(
    store: MemoryStore, nodes: list[ClusterServices]
) -> None:
    conf = cfg.build(
        overrides={"services": {"api": {"enabled": False}, "host-liveness": {"enabled": False}}}
    )
    nsdb = MemoryNsdb(store)
    node = build_services(conf, nsdb, "n1")
    nodes.append(node)
    node.start()
    assert node.runners == []
    roles = {s["name"]: (s["role"], s["enabled"], s["redundancy"]) for s in node.status()}
    assert roles["host-liveness"] == ("disabled", False, "singleton")
    assert roles["api"] == ("disabled", False, "every-node")
    published = wait_until(lambda: read_cluster_status(nsdb))
    assert [p["node"] for p in published] == ["n1"]
    assert {s["name"]: s["role"] for s in published[0]["services"]}["api"] == "disabled"
    metrics = {m.name: m for m in ServiceCollector(node).collect()}
    assert all(s.value == 0 for s in metrics["tessera_cluster_service_enabled"].samples)


def test_two_live_nodes_cannot_share_a_name(store: MemoryStore) -> None:
    first = ClusterServices(MemoryNsdb(store), "same", [], timing=FAST)
    first.start()
    try:
        second = ClusterServices(MemoryNsdb(store), "same", [], timing=FAST, claim_wait=0.2)
        with pytest.raises(ValueError, match="another live cluster node is named 'same'"):
            second.start()
        second.stop()  # as the node does on its way out: the first's entry stays
        assert "same" in MemoryNsdb(store).state_get(STATUS_TABLE)
    finally:
        first.stop()
    assert "same" not in MemoryNsdb(store).state_get(STATUS_TABLE)  # withdrawn on stop


def test_unknown_services_are_refused(store: MemoryStore) -> None:
    conf = cfg.build(overrides={"services": {"nosuch": {"enabled": True}}})
    with pytest.raises(ServeError, match="unknown service nosuch"):
        build_services(conf, MemoryNsdb(store), "n1")


def test_embedded_zookeeper_is_started_with_the_configured_member_and_stopped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[Any] = []

    class FakeZk:
        def __init__(self, **kw: Any) -> None:
            calls.append(("init", kw))
            self.connect_string = "127.0.0.1:2999"
            self.alive = True

        def supervise(self) -> None:
            calls.append("supervise")

        def stop(self) -> None:
            calls.append("stop")

    module = types.ModuleType("tessera.cluster.embedded_zk")
    module.EmbeddedZooKeeper = FakeZk  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tessera.cluster.embedded_zk", module)
    peers = ["127.0.0.1:2999:2888:3888", "127.0.0.2:2999:2888:3888"]
    conf = cfg.build(
        overrides={
            "zookeeper": {
                "enabled": True, "id": 2, "peers": peers,
                "data_dir": str(tmp_path), "client_port": 2999,
            }
        }
    )  # fmt: skip
    with embedded_zookeeper(conf) as connect:
        assert connect == "127.0.0.1:2999"
        assert calls == [
            ("init", {"node_id": 2, "peers": peers, "data_dir": tmp_path, "client_port": 2999}),
            "supervise",
        ]
    assert calls[-1] == "stop"
    with embedded_zookeeper(cfg.build()) as connect:
        assert connect is None
