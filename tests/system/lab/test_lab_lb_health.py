"""Load balancer health monitoring in a lab of two cluster nodes (each an API server
running the health monitor) and two hosts: member servers in VMs behind a router, a
TCP health monitor, a VIP a client VM connects to.

    client 10.0.2.10 (h2) -- bridge b2 -- router r -- bridge b1 -- srv1 10.0.1.10 (h1)
                                          VIP 10.0.9.100:8080       srv2 10.0.1.11 (h2)
                                          probe port 169.254.17.45/30 (bound on the
                                          leader's host, to its probe namespace)

A stopped server's member is marked INACTIVE within delay x max_retries (+ slack) and
gets no new connections through the VIP; started again, it is ACTIVE. The node leading
`health-monitor` is killed: the other node takes over, binds the probe port on its own
host, and a further stop is detected. A probe namespace deleted by hand is made again.
The load balancer deleted, the probe port and the
leader's probe namespace go; `lab down` leaves no probe namespace or link (also not the
killed node's).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lab_helpers import Lab, add_route, env, lab_up, root_missing, tessera

from support.local import TESSERA
from support.wait import wait_until
from tessera.api.server import ZK_SESSION_TIMEOUT
from tessera.cluster.health_plumbing import probe_port_id
from tessera.lab import names

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

DELAY, TIMEOUT, RETRIES = 1, 1, 3
SLACK = 4.0  # a pass over the NSDB, the write, the API read
VIP, PORT = "10.0.9.100", 8080
SERVERS = {"srv1": ("h1", "10.0.1.10"), "srv2": ("h2", "10.0.1.11")}
# A server that answers each connection with its name and closes it.
SERVER = (
    "import socket, sys\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {PORT}))\n"
    "s.listen(64)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.sendall(sys.argv[1].encode() + b'\\n')\n"
    "    c.close()\n"
)


class Net:
    """The lab, its topology's ids, and the member servers (stopped and started)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.api = lab.api_url or ""
        self.router = ""
        self.lb = ""
        self.members: dict[str, str] = {}  # server name → member id
        self.servers: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        self.servers[name] = subprocess.Popen(
            [TESSERA, "lab", "exec", "--name", self.lab.name, name, "--",
             sys.executable, "-c", SERVER, name],
            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: self.connect(name) == [name], what=f"{name} serving")

    def stop(self, name: str) -> None:
        proc = self.servers.pop(name)
        proc.terminate()
        proc.wait(10)

    def connect(self, vm: str, address: str | None = None, count: int = 1) -> list[str]:
        """`count` TCP connections from `vm`, one after the other (to a server's own
        address by default); the name of the server that answered each, '' for none."""
        address = address or SERVERS[vm][1]
        probe = (
            "import socket\n"
            f"for _ in range({count}):\n"
            "    try:\n"
            f"        with socket.create_connection(('{address}', {PORT}), timeout=2) as c:\n"
            "            print(c.recv(64).decode().strip() or '-')\n"
            "    except OSError:\n"
            "        print('-')\n"
        )
        out = self.lab.exec(vm, sys.executable, "-c", probe, check=False).stdout.split()
        return [name if name != "-" else "" for name in out]

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.api}{path}", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def status(self, server: str) -> str:
        return str(self.get(f"/pool_members/{self.members[server]}")["status"])

    def probe_host(self) -> str | None:
        return self.get(f"/ports/{probe_port_id(self.router)}").get("host_id")

    def probe_port_gone(self) -> bool:
        url = f"{self.api}/ports/{probe_port_id(self.router)}"
        return httpx.get(url, timeout=10).status_code == 404


def _cluster(nsdb: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(
        tessera("cluster", "status", "--json", "--nsdb", nsdb).stdout
    )
    return answer


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    with lab_up("--hosts", "2", "--cluster-nodes", "2") as lab:
        n = Net(lab)
        try:
            _topology(n)
            yield n
        finally:
            for name in list(n.servers):
                n.stop(name)


def _topology(n: Net) -> None:
    lab = n.lab
    r = n.router = lab.create("/routers", {"name": "r"})["id"]
    for net_, vms in (("10.0.1", ("srv1", "srv2")), ("10.0.2", ("client",))):
        bridge = lab.create("/bridges", {"name": f"b-{net_}"})["id"]
        port = lab.create(
            f"/routers/{r}/ports",
            {"port_address": f"{net_}.1", "network_address": f"{net_}.0", "network_length": 24},
        )["id"]
        add_route(lab, r, f"{net_}.0", 24, port)
        interior = lab.create(f"/bridges/{bridge}/ports")["id"]
        with lab.api() as client:
            linked = client.post(f"ports/{interior}/link", json={"peer_id": port})
        assert linked.status_code in (200, 201, 204), linked.text
        for vm in vms:
            host, address = SERVERS.get(vm, ("h2", f"{net_}.10"))
            vm_port = lab.create(f"/bridges/{bridge}/ports")["id"]
            lab.cmd(
                "vm", "add", vm, "--host", host, "--port", vm_port,
                "--ip", f"{address}/24", "--gw", f"{net_}.1", timeout=90,
            )  # fmt: skip
    for name in SERVERS:
        n.start(name)
    lb = n.lb = lab.create("/load_balancers", {"router_id": r})["id"]
    hm = lab.create(
        "/health_monitors",
        {"type": "TCP", "delay": DELAY, "timeout": TIMEOUT, "max_retries": RETRIES},
    )["id"]
    pool = lab.create(
        "/pools", {"load_balancer_id": lb, "health_monitor_id": hm, "protocol": "TCP"}
    )["id"]
    for name, (_, address) in SERVERS.items():
        n.members[name] = lab.create(
            "/pool_members", {"pool_id": pool, "address": address, "protocol_port": PORT}
        )["id"]
    lab.create(
        "/vips", {"load_balancer_id": lb, "pool_id": pool, "address": VIP, "protocol_port": PORT}
    )
    wait_until(n.probe_host, timeout=30, what="the probe port bound")


def _served(n: Net, count: int) -> set[str]:
    return set(n.connect("client", VIP, count))


def _stop_and_see_inactive(n: Net, name: str) -> None:
    n.stop(name)
    stopped = time.monotonic()
    wait_until(
        lambda: n.status(name) == "INACTIVE",
        timeout=DELAY * RETRIES + SLACK + 10,
        interval=0.2,
        what=f"{name} INACTIVE",
    )
    took = time.monotonic() - stopped
    assert took <= DELAY * RETRIES + SLACK, f"{name} marked INACTIVE after {took:.1f}s"


def test_a_stopped_server_is_inactive_and_gets_no_new_connections(net: Net) -> None:
    assert {net.status(s) for s in SERVERS} == {"ACTIVE"}
    assert _served(net, 16) == {"srv1", "srv2"}  # both take connections (2^-15 to fail)
    _stop_and_see_inactive(net, "srv1")
    assert net.status("srv2") == "ACTIVE"
    assert _served(net, 12) == {"srv2"}
    net.start("srv1")
    wait_until(lambda: net.status("srv1") == "ACTIVE", timeout=DELAY + SLACK, interval=0.2)
    wait_until(lambda: _served(net, 16) == {"srv1", "srv2"}, timeout=10, what="srv1 chosen again")


def test_a_probe_namespace_removed_by_hand_is_made_again(net: Net) -> None:
    nsdb = net.lab.status()["nsdb"]["url"]
    leader = _cluster(nsdb)["leaders"]["health-monitor"][0]
    prefix = names.health_netns_prefix(net.lab.name, int(leader.rpartition("-c")[2]))
    (probe_ns,) = [ns for ns in net.lab.namespaces() if ns.startswith(prefix)]
    before = Path("/run/netns", probe_ns).stat().st_ino
    subprocess.run(["ip", "netns", "delete", probe_ns], check=True)

    def remade() -> bool:
        try:
            return Path("/run/netns", probe_ns).stat().st_ino != before
        except OSError:
            return False

    wait_until(remade, timeout=15, what="the probe namespace made again")
    _stop_and_see_inactive(net, "srv1")
    net.start("srv1")
    wait_until(lambda: net.status("srv1") == "ACTIVE", timeout=DELAY + SLACK, interval=0.2)


def test_monitoring_goes_on_from_the_other_node_when_its_leader_is_killed(net: Net) -> None:
    status = net.lab.status()
    nsdb = status["nsdb"]["url"]
    leaders = wait_until(lambda: _cluster(nsdb)["leaders"].get("health-monitor"))
    assert len(leaders) == 1
    victim = leaders[0]
    pids = {f"{net.lab.name}-c1": status["api"]["pid"]}
    pids |= {n["name"]: n["pid"] for n in status["cluster_nodes"]}
    net.lab.pids |= set(pids.values())
    node = int(victim.rpartition("-c")[2])
    old_host = net.probe_host()
    assert old_host == names.host_id(net.lab.name, names.health_probe_host(node, 2))
    os.kill(pids[victim], signal.SIGKILL)
    killed = time.monotonic()

    def new_leader() -> str | None:
        who: list[str] = _cluster(nsdb)["leaders"].get("health-monitor") or []
        return who[0] if who and victim not in who else None

    survivor = wait_until(new_leader, timeout=ZK_SESSION_TIMEOUT + 10, what="a new leader")
    assert time.monotonic() - killed < ZK_SESSION_TIMEOUT + 6
    net.api = next(n["api"] for n in _cluster(nsdb)["nodes"] if n["node"] == survivor)
    wait_until(lambda: net.probe_host() not in (None, old_host), what="the probe port moved")

    _stop_and_see_inactive(net, "srv2")
    assert net.status("srv1") == "ACTIVE"
    assert _served(net, 12) == {"srv1"}
    net.start("srv2")
    wait_until(lambda: net.status("srv2") == "ACTIVE", timeout=DELAY + SLACK, interval=0.2)
    # Only the survivor's probe namespace is in use; the victim's goes with `lab down`.
    prefix = names.health_netns_prefix(net.lab.name, int(survivor.rpartition("-c")[2]))
    assert any(ns.startswith(prefix) for ns in net.lab.namespaces())


def test_the_probe_port_and_namespace_go_with_the_load_balancer(net: Net) -> None:
    nsdb = net.lab.status()["nsdb"]["url"]
    leader = _cluster(nsdb)["leaders"]["health-monitor"][0]
    prefix = names.health_netns_prefix(net.lab.name, int(leader.rpartition("-c")[2]))
    assert any(ns.startswith(prefix) for ns in net.lab.namespaces())
    assert httpx.delete(f"{net.api}/load_balancers/{net.lb}", timeout=10).status_code == 204
    wait_until(net.probe_port_gone, what="the probe port deleted")
    wait_until(
        lambda: not any(ns.startswith(prefix) for ns in net.lab.namespaces()),
        what="the leader's probe namespace removed",
    )
