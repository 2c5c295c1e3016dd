"""Two real `python -m tessera.api` processes on one ZooKeeper: both serve the API, one
leads the cluster services; killing the leader hands the role over within seconds and
the host-liveness janitor keeps working."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.local import free_port
from support.wait import wait_until
from tessera.api.server import ZK_SESSION_TIMEOUT
from tessera.model import new_id
from tessera.nsdb.store import TopologyStore
from tessera.nsdb.zkserver import ZookeeperServer
from tessera.nsdb.zookeeper import ZookeeperNsdb

pytestmark = [pytest.mark.zookeeper, pytest.mark.slow]

FAILOVER = ZK_SESSION_TIMEOUT + 6.0  # session expiry, then election and start-up slack


class ApiProcess:
    def __init__(self, nsdb_url: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api/v1"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tessera.api", "--nsdb", nsdb_url,
                 "--listen", f"127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def health(self) -> dict[str, Any] | None:
        try:
            response = httpx.get(f"{self.url}/health", timeout=2.0)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=5.0)
        assert response.status_code == 200, response.text
        return response.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[ApiProcess]]:
    made: list[ApiProcess] = []
    yield made
    for p in made:
        p.stop()


def test_two_servers_share_the_api_and_fail_over(
    zk_server: ZookeeperServer, processes: list[ApiProcess], tmp_path: Path
) -> None:
    root = f"/procs-{uuid.uuid4().hex}"
    url = f"zk://{zk_server.address}{root}"
    processes += [ApiProcess(url, tmp_path / f"api{i}.log") for i in range(2)]
    for p in processes:
        wait_until(p.health, timeout=30)
    wait_until(lambda: sum(bool(h and h["leader"]) for h in (p.health() for p in processes)) == 1)
    leader = next(p for p in processes if (p.health() or {}).get("leader"))
    follower = next(p for p in processes if p is not leader)
    assert follower.health()["leader_id"] == leader.health()["leader_id"]  # type: ignore[index]

    # Both serve the same topology.
    created = httpx.post(f"{follower.url}/bridges", json={"name": "shared"}, timeout=5.0)
    assert created.status_code == 201
    assert leader.get(f"/bridges/{created.json()['id']}")["name"] == "shared"

    agent_nsdb = ZookeeperNsdb(zk_server.address, root)
    try:
        host_id = new_id()
        TopologyStore(agent_nsdb).register_host(host_id, "h1", ["198.18.0.1"])
        wait_until(lambda: follower.get(f"/hosts/{host_id}")["alive"])

        killed_at = time.monotonic()
        leader.kill()
        wait_until(lambda: (follower.health() or {}).get("leader"), timeout=FAILOVER)
        took = time.monotonic() - killed_at
        assert took < FAILOVER, f"failover took {took:.1f}s"

        # The janitor now runs in the survivor: the agent's death is noticed.
        agent_nsdb.close()
        wait_until(lambda: not follower.get(f"/hosts/{host_id}")["alive"], timeout=10)
        agent_nsdb = ZookeeperNsdb(zk_server.address, root)
        TopologyStore(agent_nsdb).register_host(host_id, "h1", ["198.18.0.1"])
        wait_until(lambda: follower.get(f"/hosts/{host_id}")["alive"], timeout=10)
    finally:
        agent_nsdb.close()

    # A clean stop (SIGTERM) ends the leader's session at once: no session-expiry wait.
    third = ApiProcess(url, tmp_path / "api3.log")
    processes.append(third)
    wait_until(third.health, timeout=30)
    assert not third.health()["leader"]  # type: ignore[index]
    stopped_at = time.monotonic()
    follower.stop()
    assert follower.proc.returncode == 0, follower.log.read_text()[-2000:]
    wait_until(lambda: (third.health() or {}).get("leader"), timeout=FAILOVER)
    assert time.monotonic() - stopped_at < ZK_SESSION_TIMEOUT
