"""Three `tessera cluster serve --embedded-zookeeper` processes, configured as an operator
would (docs/embedded-zookeeper.md: one config file per node, only the id, ports and data
directory differing on one machine), are the whole deployment: their ZooKeeper members
form the NSDB's ensemble and the nodes a cluster on it.

The file shares one cluster (three JVMs of 256 MB at most and three nodes) and runs in
order: the first test checks the formed cluster, the second kills the node leading the
janitor with SIGKILL, as a crash would, and checks that its ZooKeeper member died with
it, that the janitor moved to a survivor within the session timeout + 2 s and that the
survivors' APIs keep taking writes. Teardown checks that no process is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.local import TESSERA
from support.wait import wait_until
from tessera.nsdb.zkserver import is_zookeeper

pytestmark = [pytest.mark.zookeeper, pytest.mark.slow]

NAMES = ("n1", "n2", "n3")
SESSION_TIMEOUT = 3.0  # the nodes' NSDB sessions; the ensemble's minimum is 2 ticks (1 s)
JANITOR = "host-liveness"
FORM_TIMEOUT = 60.0  # three JVMs and three nodes starting at once on a busy machine


def _free_ports(count: int) -> list[int]:
    """`count` different free ports below the ephemeral range (as the operator's guide
    says: a member that is down must find its ports free again, and the survivors keep
    calling it from ephemeral source ports). All bound at once, so none is picked
    twice."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = random.sample(range(max(1024, low - 12000), low), 300)
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for port in candidates:
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
            if len(ports) == count:
                return ports
    raise AssertionError(f"fewer than {count} free ports below {low}")


def _processes_naming(directory: Path) -> list[int]:
    """Every live process whose command line names something under `directory` (the
    nodes name their config files there, the JVMs their zoo.cfg)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            if (
                state not in ("Z", "X")
                and str(directory).encode() in (entry / "cmdline").read_bytes()
            ):
                found.append(int(entry.name))
    return found


class Node:
    """One `tessera cluster serve` process and the ZooKeeper member it runs."""

    def __init__(self, name: str, config: Path, zk_dir: Path, api_port: int, log: Path) -> None:
        self.name = name
        self.config = config
        self.zk_config = zk_dir / "zoo.cfg"
        self.zk_pid_file = zk_dir / "zookeeper.pid"
        self.url = f"http://127.0.0.1:{api_port}/api/v1"
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [TESSERA, "cluster", "serve", "--config", str(config), "--embedded-zookeeper"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def zk_pid(self) -> int | None:
        """The pid of this node's ZooKeeper member while it runs."""
        try:
            pid = int(self.zk_pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if is_zookeeper(pid, self.zk_config) else None

    def role(self, service: str) -> str | None:
        """This node's role in `service` by its own API; None if it does not answer."""
        try:
            answer = httpx.get(f"{self.url}/cluster/services", timeout=2.0)
        except httpx.HTTPError:
            return None
        if answer.status_code != 200:
            return None
        roles = {s["name"]: s["role"] for s in answer.json()["services"]}
        return roles.get(service)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Cluster:
    def __init__(self, work: Path, nodes: dict[str, Node], nsdb_url: str) -> None:
        self.work = work
        self.nodes = nodes
        self.nsdb_url = nsdb_url

    def janitor_leaders(self) -> list[str]:
        return sorted(
            n.name for n in self.nodes.values() if n.alive and n.role(JANITOR) == "leader"
        )

    def logs(self) -> str:
        parts = []
        for node in self.nodes.values():
            parts.append(f"== node {node.name}\n{node.log.read_text(errors='replace')[-3000:]}")
            zk_log = node.zk_config.with_name("zookeeper.log")
            with contextlib.suppress(OSError):
                tail = zk_log.read_text(errors="replace")[-1500:]
                parts.append(f"== zookeeper of {node.name}\n{tail}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("embedded-cluster")
    ports = _free_ports(4 * len(NAMES))
    zk_ports = [ports[i : i + 3] for i in range(0, 3 * len(NAMES), 3)]
    api_ports = ports[3 * len(NAMES) :]
    peers = ", ".join(f'"127.0.0.1:{c}:{p}:{e}"' for c, p, e in zk_ports)
    nodes: dict[str, Node] = {}
    try:
        for i, name in enumerate(NAMES, start=1):
            zk_dir = work / name / "zookeeper"
            config = work / name / "cluster.toml"
            config.parent.mkdir()
            # The whole deployment in the file; --embedded-zookeeper on the command line
            # (either is enough). node.nsdb is left to its default: the node then uses
            # the ensemble, every member's client address.
            config.write_text(
                f"""
[node]
name = "{name}"
session_timeout = {SESSION_TIMEOUT}

[cluster]
spread_delay = 0.2

[zookeeper]
enabled = true
id = {i}
peers = [{peers}]
data_dir = "{zk_dir}"
client_port = {zk_ports[i - 1][0]}

[services.api]
listen = "127.0.0.1:{api_ports[i - 1]}"

[services.host-liveness]
full_pass_interval = 2.0
"""
            )
            nodes[name] = Node(name, config, zk_dir, api_ports[i - 1], work / f"{name}.log")
        connect = ",".join(f"127.0.0.1:{c}" for c, _, _ in zk_ports)
        made = Cluster(work, nodes, f"zk://{connect}/tessera")
        try:
            wait_until(
                lambda: all(n.ready() for n in nodes.values()) and made.janitor_leaders(),
                FORM_TIMEOUT,
                interval=0.2,
                what="three nodes serving their API and a janitor leader",
            )
        except AssertionError:
            print(made.logs())
            raise
        yield made
    finally:
        for node in nodes.values():
            node.stop()
        # The nodes stop their members on the way out; whatever is left is a leak
        # (killed here so that it does not outlive the test, then reported).
        left = _processes_naming(work)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert left == [], f"processes left behind: {left}"


def _status(cluster: Cluster) -> dict[str, Any]:
    """`tessera cluster status --json` on the ensemble, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    out = subprocess.run(
        [TESSERA, "cluster", "status", "--json", "--nsdb", cluster.nsdb_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


def _mode(node: Node) -> str:
    """The node's ZooKeeper member's mode (`leader`, `follower`), by `srvr`."""
    config = node.zk_config.read_text()
    port = int(next(ln for ln in config.splitlines() if ln.startswith("clientPort="))[11:])
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
        sock.sendall(b"srvr")
        answer = b"".join(iter(lambda: sock.recv(4096), b"")).decode()
    return answer.split("Mode: ")[1].split()[0]


def _write_then_read(writer: Node, reader: Node) -> None:
    """A bridge created through one node's API is read through another's."""
    name = f"br-{uuid.uuid4().hex[:8]}"
    created = httpx.post(f"{writer.url}/bridges", json={"name": name}, timeout=10.0)
    assert created.status_code == 201, f"{created.status_code} {created.text}"
    bridge_id = created.json()["id"]
    read = httpx.get(f"{reader.url}/bridges/{bridge_id}", timeout=10.0)
    assert read.status_code == 200, f"{read.status_code} {read.text}"
    assert read.json()["name"] == name


def _wrote_then_read(writer: Node, reader: Node) -> bool:
    """`_write_then_read`, False for an answer that says the NSDB is unavailable."""
    try:
        _write_then_read(writer, reader)
    except AssertionError as exc:
        if "503" in str(exc) or "unavailable" in str(exc).lower():
            return False
        raise
    return True


def test_three_embedded_members_make_one_cluster(cluster: Cluster) -> None:
    n1, n2, n3 = (cluster.nodes[n] for n in NAMES)
    # Each node runs a member of one ensemble: one leader, two followers.
    modes = []
    for node in cluster.nodes.values():
        pid = node.zk_pid()
        assert pid is not None, node.name
        assert f"PPid:\t{node.proc.pid}\n" in Path(f"/proc/{pid}/status").read_text()
        config = node.zk_config.read_text()
        assert config.count("server.") == 3 and "forceSync=yes" in config
        assert "tickTime=500" in config
        modes.append(_mode(node))
    assert sorted(modes) == ["follower", "follower", "leader"]
    # One database: a write through any node's API is read through the others'.
    _write_then_read(n1, n2)
    _write_then_read(n2, n3)
    _write_then_read(n3, n1)
    # The whole cluster, read from the ensemble by the CLI.
    status = _status(cluster)
    assert sorted(n["node"] for n in status["nodes"]) == list(NAMES)
    assert status["leaders"][JANITOR] == cluster.janitor_leaders()
    assert len(status["leaders"][JANITOR]) == 1


def test_killing_the_janitor_node_takes_its_member_and_moves_the_janitor(
    cluster: Cluster,
) -> None:
    (leader_name,) = wait_until(cluster.janitor_leaders, 10, what="one janitor leader")
    victim = cluster.nodes[leader_name]
    survivors = [n for n in cluster.nodes.values() if n is not victim]
    zk_pid = victim.zk_pid()
    assert zk_pid is not None

    victim_mode = f"its member was the ensemble's {_mode(victim)}"
    killed_at = time.monotonic()
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(5)
    # Its ZooKeeper member dies with it: a JVM left running would hold the node's ports
    # and keep serving an ensemble its node has left.
    try:
        wait_until(
            lambda: not is_zookeeper(zk_pid, victim.zk_config),
            5.0,
            what=f"the killed node's ZooKeeper (pid {zk_pid}) gone",
        )
    finally:
        if is_zookeeper(zk_pid, victim.zk_config):
            os.kill(zk_pid, signal.SIGKILL)

    # The survivors' APIs take writes at once, long before the dead node's session
    # ends (a write may meet the ensemble's own election, about half a second: 503).
    first, second = survivors
    wait_until(lambda: _wrote_then_read(first, second), 2.0, what="a write after the kill")
    assert time.monotonic() - killed_at < SESSION_TIMEOUT

    # The janitor moves to a survivor within the session timeout + 2 s.
    try:
        (heir,) = wait_until(
            lambda: [n.name for n in survivors if n.role(JANITOR) == "leader"],
            SESSION_TIMEOUT + 10.0,
            interval=0.05,
            what="a new janitor leader",
        )
    except AssertionError:
        print(cluster.logs())
        raise
    took = time.monotonic() - killed_at
    # (the slowest case: the node's member led the ensemble, whose other two members
    # elect a leader first, and that leader then times the dead node's session out)
    assert took <= SESSION_TIMEOUT + 2.0, f"failover took {took:.1f}s ({victim_mode})"
    assert heir != victim.name

    # The two surviving members are a quorum: the survivors' APIs take writes and read
    # each other's.
    _write_then_read(first, second)
    _write_then_read(second, first)

    def without_victim() -> dict[str, Any] | None:
        answer = _status(cluster)
        return answer if len(answer["nodes"]) == 2 else None

    status = wait_until(
        without_victim,
        SESSION_TIMEOUT + 5.0,
        interval=0.5,
        what="status without the killed node",
    )
    assert sorted(n["node"] for n in status["nodes"]) == sorted(n.name for n in survivors)
    assert status["leaders"][JANITOR] == [heir]
