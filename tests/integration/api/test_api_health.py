"""`/health` tells the truth within a second: a ZooKeeper frozen by SIGSTOP keeps its
TCP connection open (the client still says "connected" for seconds), so only a request
the server must answer shows it is gone."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.wait import wait_until

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from tessera.api.app import create_app
from tessera.nsdb.memory import MemoryNsdb
from tessera.nsdb.zkserver import ZookeeperServer
from tessera.nsdb.zookeeper import ZookeeperNsdb

WITHIN = 1.0  # seconds: a load balancer's probe must get its answer in this time


def _timed_health(client: TestClient) -> tuple[float, int, dict[str, object]]:
    start = time.monotonic()
    response = client.get("/api/v1/health")
    return time.monotonic() - start, response.status_code, response.json()


def _stopped(pid: int) -> bool:
    """Every thread of `pid` is stopped: `kill` returns before a thread running on
    another CPU has stopped, and that thread could still answer one more request."""
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # the thread ended
        if state not in ("T", "t"):
            return False
    return True


def _freeze(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: _stopped(pid), timeout=5)


@pytest.fixture
def frozen(private_zk: ZookeeperServer) -> Iterator[tuple[ZookeeperServer, int]]:
    """The test's own ZooKeeper and its pid; whatever happens, it is resumed after."""
    pid = private_zk.pid
    assert pid is not None
    try:
        yield private_zk, pid
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.zookeeper
def test_health_is_503_within_a_second_while_zookeeper_is_frozen(
    frozen: tuple[ZookeeperServer, int],
) -> None:
    server, pid = frozen
    nsdb = ZookeeperNsdb(server.address, "/api-health")
    try:
        with TestClient(create_app(nsdb)) as client:
            elapsed, status, body = _timed_health(client)
            assert status == 200 and body["nsdb_connected"] is True, body

            _freeze(pid)
            for _ in range(3):  # every probe, not only the first, answers in time
                elapsed, status, body = _timed_health(client)
                assert elapsed < WITHIN, f"health took {elapsed:.2f}s"
                assert status == 503, body
                assert body["nsdb_connected"] is False and body["status"] == "unavailable"
                assert "NSDB" in str(body["message"])

            os.kill(pid, signal.SIGCONT)
            wait_until(lambda: client.get("/api/v1/health").status_code == 200, timeout=10)
            assert client.get("/api/v1/health").json()["nsdb_connected"] is True
    finally:
        nsdb.close()


def test_health_is_503_within_a_second_while_the_memory_store_is_stuck() -> None:
    """The memory backend's equivalent of a frozen server: a writer holding its lock."""
    nsdb = MemoryNsdb()
    release = threading.Event()
    held = threading.Event()

    def stuck_writer() -> None:
        with nsdb.store.lock:
            held.set()
            release.wait(10)

    try:
        with TestClient(create_app(nsdb)) as client:
            assert client.get("/api/v1/health").status_code == 200
            writer = threading.Thread(target=stuck_writer, daemon=True)
            writer.start()
            assert held.wait(5)
            elapsed, status, body = _timed_health(client)
            assert elapsed < WITHIN and status == 503 and body["nsdb_connected"] is False
            release.set()
            writer.join(5)
            assert client.get("/api/v1/health").json()["nsdb_connected"] is True
    finally:
        release.set()
        nsdb.close()
