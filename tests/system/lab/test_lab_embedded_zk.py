"""`tessera lab up --cluster-nodes 3 --embedded-zookeeper`: the lab starts no ZooKeeper of
its own; its three cluster nodes each run a member of the NSDB's ensemble (node 1 serves
the lab's API), and the agents and the CLI use the ensemble's connect string.

One lab for the module, two hosts, a VM on each on one bridge. In order: the ensemble is
the nodes' (one leader, two followers, each member the child of its node) and the VMs
ping; node 2 is killed with SIGKILL (its member dies with it) and the VMs still ping
and the API (node 1) still takes writes, then `lab up` restarts it; `lab up` refuses
what an ensemble cannot do.
Teardown: `lab down` leaves no process (JVMs included), namespace or file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lab_helpers import Lab, Snapshot, require_agent, root_missing, tessera

from support.wait import wait_until

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)


def _naming(directory: Path) -> list[int]:
    """Live processes whose command line names something under `directory` (the nodes
    their config files, the JVMs their zoo.cfg)."""
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


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_agent()
    before = Snapshot.take()
    made = Lab()
    directory = made.dir
    try:
        made.up("--hosts", "2", "--cluster-nodes", "3", "--embedded-zookeeper")
        lan = made.create("/bridges", {"name": "lan"})["id"]
        for name, host, address in (("vm1", "h1", "10.0.0.10/24"), ("vm2", "h2", "10.0.0.20/24")):
            port = made.create(f"/bridges/{lan}/ports")["id"]
            made.cmd("vm", "add", name, "--host", host, "--port", port, "--ip", address, timeout=90)
        yield made
    finally:
        with contextlib.suppress(AssertionError, KeyError):  # an `up` that failed
            made.pids |= {m["pid"] for m in made.status()["nsdb"]["members"] if m["pid"]}
        made.down()
        left = _naming(directory)
        for pid in left:  # not to outlive the test; reported below
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert left == [], f"processes left behind: {left}"
        made.assert_gone(before)


def _mode(address: str) -> str:
    """A member's mode (`leader`, `follower`) by ZooKeeper's `srvr`."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=2.0) as sock:
        sock.sendall(b"srvr")
        answer = b"".join(iter(lambda: sock.recv(4096), b"")).decode()
    return answer.split("Mode: ")[1].split()[0]


def _ppid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("PPid:\t")[1].split()[0])


def _pings(lab: Lab) -> bool:
    return lab.exec("vm1", "ping", "-c", "2", "-W", "2", "10.0.0.20", check=False).returncode == 0


def test_the_cluster_nodes_are_the_ensemble_and_vms_ping(lab: Lab) -> None:
    status: dict[str, Any] = lab.status()
    nsdb = status["nsdb"]
    members = nsdb["members"]
    assert nsdb["embedded"] and nsdb["pid"] is None
    assert [m["node"] for m in members] == [f"{lab.name}-c{k}" for k in (1, 2, 3)]
    assert nsdb["url"] == "zk://" + ",".join(m["address"] for m in members) + "/tessera"
    assert not (lab.dir / "zookeeper").exists()  # no ZooKeeper of the lab's own
    # Each member is the child of its node; node 1 is the lab's API process.
    nodes = [status["api"]["pid"], *(n["pid"] for n in status["cluster_nodes"])]
    assert [_ppid(m["pid"]) for m in members] == nodes
    assert sorted(_mode(m["address"]) for m in members) == ["follower", "follower", "leader"]
    # Ports below the ephemeral range, data under the lab's directory.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(int(m["address"].rpartition(":")[2]) < low for m in members)
    assert all((lab.dir / f"zookeeper-c{k}" / "zoo.cfg").is_file() for k in (1, 2, 3))
    # The CLI on the lab's NSDB sees the three nodes.
    cluster = tessera("cluster", "status", "--nsdb", nsdb["url"]).stdout
    assert all(f"{lab.name}-c{k}" in cluster for k in (1, 2, 3)), cluster
    assert _pings(lab)


def _created_bridge(lab: Lab) -> bool:
    """A bridge made through the lab's API; False for a 503 (the ensemble electing)."""
    assert lab.api_url is not None
    answer = httpx.post(f"{lab.api_url}/bridges", json={"name": "after-kill"}, timeout=10.0)
    if answer.status_code == 503:
        return False
    assert answer.status_code == 201, answer.text
    return True


def test_a_killed_node_takes_its_member_and_the_lab_carries_on(lab: Lab) -> None:
    status = lab.status()
    victim = next(n for n in status["cluster_nodes"] if n["name"] == f"{lab.name}-c2")
    member = next(m for m in status["nsdb"]["members"] if m["node"] == victim["name"])
    os.kill(victim["pid"], signal.SIGKILL)
    killed = time.monotonic()
    # Its member dies with it (parent-death signal), leaving a quorum of two.
    wait_until(
        lambda: not Path(f"/proc/{member['pid']}").exists(), 5.0, what="the member of c2 gone"
    )
    wait_until(lambda: _created_bridge(lab), 10.0, interval=0.2, what="a write after the kill")
    assert time.monotonic() - killed < 10.0
    assert _pings(lab)
    names = {b["name"] for b in lab.get("/bridges")}
    assert "after-kill" in names
    assert [m["pid"] is None for m in lab.status()["nsdb"]["members"]] == [False, True, False]
    # `lab up` again restarts the node, whose member rejoins the ensemble.
    lab.up()
    members = lab.status()["nsdb"]["members"]
    assert all(m["pid"] for m in members), members

    def modes() -> list[str] | None:
        try:
            return sorted(_mode(m["address"]) for m in members)
        except (OSError, IndexError):  # not serving yet
            return None

    wait_until(modes, 20.0, interval=0.2, what="three members serving")
    assert modes() == ["follower", "follower", "leader"]


def test_up_refuses_what_an_embedded_ensemble_cannot_do(lab: Lab) -> None:
    other = Lab()
    even = tessera(
        "lab", "up", "--name", other.name, "--cluster-nodes", "2", "--embedded-zookeeper",
        check=False,
    )  # fmt: skip
    assert even.returncode != 0 and "odd number of cluster nodes" in even.stderr, even.stderr
    both = tessera(
        "lab", "up", "--name", other.name, "--cluster-nodes", "3", "--embedded-zookeeper",
        "--nsdb", "zk://127.0.0.1:2181/tessera", check=False,
    )  # fmt: skip
    assert both.returncode != 0 and "exclude each other" in both.stderr, both.stderr
    assert not other.dir.exists()  # refused before anything was made
    grow = lab.cmd("up", "--cluster-nodes", "5", check=False)
    assert grow.returncode != 0 and "cannot grow or shrink" in grow.stderr, grow.stderr
    assert "Traceback" not in even.stderr + both.stderr + grow.stderr
