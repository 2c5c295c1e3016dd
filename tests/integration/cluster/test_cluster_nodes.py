"""Three `tessera cluster serve` processes on one ZooKeeper, with an add-on package
installed beside tessera (tests/data/addon_pkg, pip-installed into a directory on the
nodes' PYTHONPATH): per-service leadership, spread over the nodes; an add-on running on
its leader and shown in status; a crashing service restarted with back-off while the
others keep their leaders; failover of one singleton within the session timeout + 2 s
while another keeps its leader; a service disabled on a node never led there.

The tests share one cluster and run in file order; the last one kills nodes.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
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

from support.local import TESSERA, free_port
from support.wait import wait_until
from tessera.cluster.services import STATUS_TABLE
from tessera.nsdb.base import Nsdb
from tessera.nsdb.zkserver import ZookeeperServer
from tessera.nsdb.zookeeper import ZookeeperNsdb

pytestmark = [pytest.mark.zookeeper, pytest.mark.slow]

ADDON_SRC = Path(__file__).resolve().parents[2] / "data" / "addon_pkg"
SESSION_TIMEOUT = 2.0
RESTART_INITIAL, RESTART_MAX = 0.25, 2.0
SINGLETONS = ("beacon", "crasher", "host-liveness")
NAMES = ("n1", "n2", "n3")
DISABLED_ON = {"n3": "beacon"}


class Node:
    def __init__(self, name: str, config: Path, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [TESSERA, "cluster", "serve", "--config", str(config), "--name", name,
                "--listen", f"127.0.0.1:{self.port}"]  # fmt: skip
        if name in DISABLED_ON:
            argv += ["--disable", DISABLED_ON[name]]
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=5.0)
        assert response.status_code == 200, response.text
        return response.text if path == "/metrics" else response.json()

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


class Cluster:
    def __init__(self, nsdb: Nsdb, url: str, nodes: dict[str, Node], env: dict[str, str]) -> None:
        self.nsdb = nsdb
        self.url = url
        self.nodes = nodes
        self.env = env
        # Every (node, service) ever seen leading, to prove a disabled service never led.
        self.seen_leading: set[tuple[str, str]] = set()

    def status(self) -> dict[str, dict[str, dict[str, Any]]]:
        """node → service → its published status."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for node, raw in self.nsdb.state_get(STATUS_TABLE).items():
            services = {s["name"]: s for s in json.loads(raw)["services"]}
            out[node] = services
            self.seen_leading |= {(node, s) for s, v in services.items() if v["role"] == "leader"}
        return out

    def leaders(self, among: tuple[str, ...] | None = None) -> dict[str, list[str]]:
        status = self.status()
        return {
            svc: sorted(
                n for n, s in status.items()
                if (among is None or n in among) and s.get(svc, {}).get("role") == "leader"
            )
            for svc in SINGLETONS
        }  # fmt: skip

    def settled(self) -> dict[str, str] | None:
        """service → leader once every singleton has one leader, spread one per node,
        every node publishing and every API ready; else None."""
        alive = tuple(n for n, node in self.nodes.items() if node.proc.poll() is None)
        status = self.status()
        if set(status) != set(alive):
            return None
        leaders = self.leaders(alive)
        if any(len(who) != 1 for who in leaders.values()):
            return None
        if sorted(who[0] for who in leaders.values()) != sorted(alive):
            return None  # not spread yet: some node leads two
        if not all(s["api"]["ready"] for s in status.values()):
            return None
        return {svc: who[0] for svc, who in leaders.items()}


@pytest.fixture(scope="module")
def addon_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The add-on package, really installed by pip into a directory of its own (the
    nodes get it on PYTHONPATH; this venv is left untouched)."""
    base = tmp_path_factory.mktemp("addon")
    src, target = base / "src", base / "site"
    shutil.copytree(ADDON_SRC, src)  # pip builds in the source tree: keep ours clean
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(target), str(src)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert (target / "tessera_test_addon-1.0.dist-info" / "entry_points.txt").is_file()
    return target


@pytest.fixture(scope="module")
def cluster(
    zk_server: ZookeeperServer, addon_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    root = f"/cluster-{uuid.uuid4().hex}"
    url = f"zk://{zk_server.address}{root}"
    work = tmp_path_factory.mktemp("cluster")
    config = work / "cluster.toml"
    config.write_text(
        f"""
[node]
nsdb = "{url}"
session_timeout = {SESSION_TIMEOUT}

[cluster]
spread_delay = 0.3
rebalance_interval = 1.0
restart_initial = {RESTART_INITIAL}
restart_max = {RESTART_MAX}

[services.host-liveness]
full_pass_interval = 2.0
"""
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TESSERA_NSDB", "PYTHONPATH")}
    env.update(PYTHONPATH=str(addon_path), TESSERA_CLUSTER_CONFIG="/nonexistent/ignored.toml")
    nodes = {name: Node(name, config, env, work / f"{name}.log") for name in NAMES}
    nsdb = ZookeeperNsdb(zk_server.address, root)
    made = Cluster(nsdb, url, nodes, env)
    try:
        yield made
    finally:
        for node in nodes.values():
            node.stop()
        nsdb.close()


def _logs(cluster: Cluster) -> str:
    return "\n".join(f"== {n.name}\n{n.log.read_text()[-3000:]}" for n in cluster.nodes.values())


def _settle(cluster: Cluster) -> dict[str, str]:
    try:
        return wait_until(cluster.settled, timeout=40, interval=0.1, what="a settled cluster")
    except AssertionError:
        print(_logs(cluster))
        raise


def test_an_addon_runs_on_its_leader_and_shows_in_status(cluster: Cluster) -> None:
    leaders = _settle(cluster)
    beacon_node = cluster.nodes[leaders["beacon"]]
    assert beacon_node.name != "n3"  # disabled there
    # The add-on ran where the election put it.
    wait_until(lambda: cluster.nsdb.state_get("addon_beacon").get("runner") == beacon_node.name)

    # This node's view over the REST API, and its metrics (the add-on's own included).
    mine = {s["name"]: s for s in beacon_node.get("/api/v1/cluster/services")["services"]}
    assert mine["beacon"]["role"] == "leader" and mine["beacon"]["ready"]
    assert mine["api"]["role"] == "active"
    metrics = beacon_node.get("/metrics")
    assert 'tessera_cluster_service_leader{service="beacon"} 1.0' in metrics
    assert 'tessera_cluster_service_up{service="beacon"} 1.0' in metrics
    assert "tessera_test_beacon_runs_total 1.0" in metrics
    n3 = {s["name"]: s for s in cluster.nodes["n3"].get("/api/v1/cluster/services")["services"]}
    assert n3["beacon"]["role"] == "disabled" and not n3["beacon"]["enabled"]

    # The whole cluster's view, read from the NSDB by the CLI.
    env = {**cluster.env, "TESSERA_NSDB": cluster.url}
    out = subprocess.run(
        [TESSERA, "cluster", "status", "--json"], env=env, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["leaders"]["beacon"] == [beacon_node.name]
    assert sorted(n["node"] for n in answer["nodes"]) == list(NAMES)
    table = subprocess.run(
        [TESSERA, "cluster", "status"], env=env, capture_output=True, text=True, timeout=30
    )
    assert table.returncode == 0, table.stderr
    assert f"beacon: {beacon_node.name}" in table.stdout


def test_a_crashing_service_restarts_with_back_off_and_others_keep_their_leaders(
    cluster: Cluster,
) -> None:
    leaders = _settle(cluster)
    crasher = leaders["crasher"]

    def starts() -> list[float]:
        """Start times of the crasher in its current term on its leader (a pause longer
        than any back-off separates terms; each term's back-off starts afresh)."""
        entries = cluster.nsdb.state_get("addon_crasher")
        mine = sorted((int(k.split()[1]), float(v)) for k, v in entries.items()
                      if k.split()[0] == crasher)  # fmt: skip
        times = [t for _, t in mine]
        breaks = [i for i in range(1, len(times)) if times[i] - times[i - 1] > RESTART_MAX + 1]
        return times[breaks[-1] :] if breaks else times

    # Back-off 0.25, 0.5, 1, 2, 2... : five starts take about 3.75 s.
    wait_until(lambda: len(starts()) >= 5, timeout=15, what="five starts of the crasher")
    times = starts()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    expected = [min(RESTART_MAX, RESTART_INITIAL * 2**i) for i in range(len(gaps))]
    for gap, want in zip(gaps, expected, strict=True):
        assert want * 0.9 <= gap <= want + 1.5, (gaps, expected)
    assert gaps[2] > 2 * gaps[0]

    status = cluster.status()[crasher]["crasher"]
    assert status["role"] == "leader" and status["restarts"] >= 4
    assert status["last_error"].startswith("RuntimeError: crash number")
    # Crashing cost no leadership: every singleton is where it was.
    assert {svc: who for svc, who in cluster.leaders().items()} == {
        svc: [node] for svc, node in leaders.items()
    }
    metrics = cluster.nodes[crasher].get("/metrics")
    counter = 'tessera_cluster_service_restarts_total{service="crasher"}'
    restarts = [line for line in metrics.splitlines() if line.startswith(counter)]
    assert restarts and float(restarts[0].split()[-1]) >= 4


def test_killing_a_leader_moves_only_its_service_and_a_disabled_service_never_leads(
    cluster: Cluster,
) -> None:
    leaders = _settle(cluster)
    victim = leaders["beacon"]
    heir = next(n for n in NAMES if n not in (victim, "n3"))
    others = {svc: node for svc, node in leaders.items() if node != victim}
    assert others  # spread: some singleton is led elsewhere

    killed_at = time.monotonic()
    cluster.nodes[victim].kill()

    def heir_leads() -> bool:
        leaders_now = cluster.leaders((heir, "n3"))
        for svc, node in others.items():  # the other singletons keep their leaders
            assert leaders_now[svc] in ([node], []), (svc, leaders_now)
            assert cluster.status()[node][svc]["role"] == "leader"
        return leaders_now["beacon"] == [heir]

    wait_until(heir_leads, timeout=SESSION_TIMEOUT + 8, interval=0.05, what="a new beacon leader")
    took = time.monotonic() - killed_at
    assert took <= SESSION_TIMEOUT + 2.0, f"failover took {took:.1f}s"
    wait_until(lambda: cluster.nsdb.state_get("addon_beacon").get("runner") == heir)

    # The last node where beacon may run dies too: n3 takes every other singleton but
    # never beacon, disabled there.
    cluster.nodes[heir].kill()
    wait_until(
        lambda: cluster.leaders() == {"beacon": [], "crasher": ["n3"], "host-liveness": ["n3"]},
        timeout=SESSION_TIMEOUT + 8,
        what="n3 leading all it may",
    )
    deadline = time.monotonic() + SESSION_TIMEOUT + 1.0
    while time.monotonic() < deadline:
        assert cluster.leaders()["beacon"] == []
        time.sleep(0.1)
    assert ("n3", "beacon") not in cluster.seen_leading
    assert cluster.nsdb.state_get("addon_beacon")["runner"] == heir
    assert cluster.status()["n3"]["beacon"]["role"] == "disabled"
