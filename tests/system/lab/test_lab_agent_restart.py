"""An agent restart and a MAC on the move, in a 3-host lab with the eBPF datapath.

    bridge A 10.7.1.0/24 -- router (10.7.1.1 | 10.7.2.1) -- bridge B 10.7.2.0/24
      a1 10.7.1.10 (h1)                                     b1 10.7.2.10 (h2)
                                                            new destinations (h2)
    bridge C 10.7.3.0/24: c1 10.7.3.1 (h1); MAC_M 10.7.3.2 on h2, then h3, then h2

A stopped agent (SIGTERM, as for an upgrade) must leave its host forwarding exactly as a
killed one does: an iperf3 stream routed from h1 to h2 through `lab agent stop h1`, 3 s,
`lab agent start h1` keeps its rate, and a new flow works within a second of the new
agent running. The stream is paced (`-b`), so that a slow interval means packets stood
still, not that the shared CPU was busy elsewhere; it lasts long enough to cover the
moment the old agent's NSDB session expires (what it learned then goes, and the new
agent must answer for its VMs). Only `tessera agent --cleanup` removes the datapath.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator

import pytest
from lab_helpers import (
    BPF_PINS,
    Lab,
    Snapshot,
    agent_status,
    env,
    require_agent,
    root_missing,
)

from support.local import TESSERA
from support.wait import wait_until
from tessera.lab import names

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

MAC_M = "02:00:00:07:03:02"
STREAM_SECONDS = 16  # stop at ~3 s, start at ~6 s, the old session expires ~10 s later
RATE = "400M"  # paced well below what the lab forwards, even on a busy machine


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_agent()
    for tool in ("iperf3", "ping", "clang", "bpftool", "tc"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            pytest.skip(f"{tool} not installed")
    before = Snapshot.take()
    the_lab = Lab()
    try:
        the_lab.up("--hosts", "3", "--datapath", "ebpf")
        _topology(the_lab)
        yield the_lab
    finally:
        the_lab.down()
        the_lab.assert_gone(before)


def _topology(lab: Lab) -> None:
    a = lab.create("/bridges", {"name": "a"})["id"]
    b = lab.create("/bridges", {"name": "b"})["id"]
    r = lab.create("/routers", {"name": "r"})["id"]
    for bridge, net in ((a, "10.7.1"), (b, "10.7.2")):
        port = lab.create(
            f"/routers/{r}/ports",
            {"port_address": f"{net}.1", "network_address": f"{net}.0", "network_length": 24},
        )["id"]
        lab.create(
            f"/routers/{r}/routes",
            {
                "src_network_addr": "0.0.0.0", "src_network_length": 0,
                "dst_network_addr": f"{net}.0", "dst_network_length": 24,
                "type": "Normal", "next_hop_port": port, "weight": 100,
            },
        )  # fmt: skip
        interior = lab.create(f"/bridges/{bridge}/ports")["id"]
        lab.create(f"/ports/{interior}/link", {"peer_id": port})
    lab.create("/bridges", {"name": "c"})
    _vm(lab, "a1", "h1", "a", "10.7.1.10/24", gw="10.7.1.1")
    _vm(lab, "b1", "h2", "b", "10.7.2.10/24", gw="10.7.2.1")


def _bridge(lab: Lab, name: str) -> str:
    found = [b["id"] for b in lab.get("/bridges") if b["name"] == name]
    assert len(found) == 1, found
    return str(found[0])


def _vm(
    lab: Lab, name: str, host: str, bridge: str, ip: str, gw: str | None = None,
    mac: str | None = None,
) -> str:  # fmt: skip
    """A VM on a new port of `bridge`; returns the port id."""
    port = str(lab.create(f"/bridges/{_bridge(lab, bridge)}/ports")["id"])
    options = ["--ip", ip] + (["--gw", gw] if gw else []) + (["--mac", mac] if mac else [])
    lab.cmd("vm", "add", name, "--host", host, "--port", port, *options, timeout=90)
    return port


def _in_vm(lab: Lab, vm: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Straight into the VM's namespace (no CLI start-up in the way of a timing)."""
    return subprocess.run(
        ["ip", "netns", "exec", names.netns(lab.name, vm), *argv],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _agent_running(lab: Lab, host: str) -> bool:
    """The (new) agent answers on its control socket: it has started."""
    host_id = names.host_id(lab.name, names.host_index(host) or 0)
    pid_file = lab.dir / f"agent-{host}.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        return _runs(pid) and agent_status(host_id)["host_id"] == host_id
    except (OSError, ValueError, KeyError):
        return False


def _runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _lab_exec(lab: Lab, vm: str, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [TESSERA, "lab", "exec", "--name", lab.name, vm, "--", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_an_agent_stop_or_kill_and_start_keeps_traffic_and_new_flows_work(
    lab: Lab, how: str
) -> None:
    new_ip = {"stop": "10.7.2.21", "kill": "10.7.2.22"}[how]
    _vm(lab, f"n{how}", "h2", "b", f"{new_ip}/24", gw="10.7.2.1")
    ping = _in_vm(lab, "a1", "ping", "-c", "3", "-W", "2", "10.7.2.10")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    server = _lab_exec(lab, "b1", "iperf3", "-s", "-1", "-B", "10.7.2.10")
    try:
        wait_until(
            lambda: "5201" in _in_vm(lab, "b1", "ss", "-Hltn").stdout,
            timeout=15,
            what="the iperf3 server",
        )
        client = _lab_exec(
            lab, "a1", "iperf3", "-c", "10.7.2.10", "-t", str(STREAM_SECONDS), "-i", "0.5",
            "-b", RATE, "--json", "--connect-timeout", "3000",
        )  # fmt: skip
        time.sleep(3)
        if how == "stop":
            assert "stopped" in lab.cmd("agent", "stop", "h1").stdout
        else:
            pid = int((lab.dir / "agent-h1.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not _runs(pid), timeout=10, what="the killed agent to be gone")
        time.sleep(3)
        lab.cmd("agent", "start", "h1")
        wait_until(
            lambda: _agent_running(lab, "h1"), timeout=30, interval=0.02, what="the new agent of h1"
        )
        # A destination nobody has sent to: a new flow on h1 (and an ARP by the router).
        first = _in_vm(lab, "a1", "ping", "-i", "0.1", "-w", "1", new_ip)
        assert first.returncode == 0, f"no new flow within 1 s of the start:\n{first.stdout}"
        out, err = client.communicate(timeout=STREAM_SECONDS + 60)
        assert client.returncode == 0, err + out[-2000:]
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate(timeout=10)
    rates = [i["sum"]["bits_per_second"] for i in json.loads(out)["intervals"]]
    median = statistics.median(rates)
    slow = [(k * 0.5, round(r / 1e6)) for k, r in enumerate(rates) if r < median / 2]
    assert not slow, f"intervals (start s, Mbit/s) below half the median {median / 1e6:.0f}: {slow}"


def test_a_mac_that_reappears_behind_another_port_is_learned_there(lab: Lab) -> None:
    """VM m (MAC_M) goes away with its port; a VM with the same MAC on a new port of
    another host must be reachable from c1, whose ARP cache still says MAC_M."""
    bridge = _bridge(lab, "c")
    _vm(lab, "c1", "h1", "c", "10.7.3.1/24")
    old_port = _vm(lab, "m", "h2", "c", "10.7.3.2/24", mac=MAC_M)
    assert _in_vm(lab, "c1", "ping", "-c", "2", "-W", "2", "10.7.3.2").returncode == 0

    def mac_port() -> str | None:
        for entry in lab.get(f"/bridges/{bridge}/mac_table"):
            if entry["mac_addr"] == MAC_M:
                return str(entry["port_id"])
        return None

    assert wait_until(lambda: mac_port() == old_port, what="MAC_M learned on m's port")

    # Unbound (the VM is deleted; its port stays): MAC_M moves to a new port on h3.
    lab.cmd("vm", "del", "m")
    assert mac_port() is None  # forgotten with the binding
    moved = _vm(lab, "m2", "h3", "c", "10.7.3.2/24", mac=MAC_M)
    _reachable(lab, "c1", "10.7.3.2")
    assert wait_until(lambda: mac_port() == moved, what="MAC_M learned on the new port")

    # Deleted with its port: MAC_M comes back on yet another port, on h2.
    lab.cmd("vm", "del", "m2")
    with lab.api() as client:
        assert client.delete(f"ports/{moved}").status_code == 204
    assert mac_port() is None
    back = _vm(lab, "m3", "h2", "c", "10.7.3.2/24", mac=MAC_M)
    _reachable(lab, "c1", "10.7.3.2")
    assert wait_until(lambda: mac_port() == back, what="MAC_M learned on the third port")


def _reachable(lab: Lab, vm: str, ip: str) -> None:
    """c1 still maps the address to MAC_M: no ARP, the unicast itself must find it."""
    neighbours = _in_vm(lab, vm, "ip", "neigh", "show", ip).stdout
    assert MAC_M in neighbours, neighbours
    ping = _in_vm(lab, vm, "ping", "-c", "3", "-i", "0.5", "-w", "5", ip)
    assert "bytes from" in ping.stdout, ping.stdout


def test_a_stop_leaves_the_datapath_and_only_cleanup_removes_it(lab: Lab) -> None:
    host_id = names.host_id(lab.name, 3)
    pins = BPF_PINS / host_id
    ns = names.netns(lab.name, "h3")
    assert "stopped" in lab.cmd("agent", "stop", "h3").stdout
    assert pins.is_dir() and _links(ns) >= {"vxlan0", "tsmiss0", "tsmiss1"}
    assert "pref 1000" in _tc_filters(ns, "vxlan0")
    cleanup = _cleanup(ns, host_id)
    assert cleanup.returncode == 0, cleanup.stderr
    assert "removed device vxlan0" in cleanup.stdout, cleanup.stdout
    assert not pins.exists()
    assert not _links(ns) & {"vxlan0", "tsmiss0", "tsmiss1"}
    for link in _links(ns) - {"lo", names.HOST_UPLINK}:
        assert "clsact" not in _qdiscs(ns, link), link
    again = _cleanup(ns, host_id)
    assert again.returncode == 0 and "no datapath to remove" in again.stdout
    lab.cmd("agent", "start", "h3")  # and it comes back as it was
    wait_until(lambda: pins.is_dir() and "vxlan0" in _links(ns), what="h3's datapath again")


def _cleanup(ns: str, host_id: str) -> subprocess.CompletedProcess[str]:
    """`tessera agent --cleanup` as `lab down` runs it: nsenter keeps bpffs visible."""
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns}", "--", TESSERA, "agent", "--cleanup",
         "--host-id", host_id],
        capture_output=True, text=True, timeout=60, env=env(), check=False,
    )  # fmt: skip


def _links(ns: str) -> set[str]:
    out = subprocess.run(
        ["ip", "-n", ns, "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _tc_filters(ns: str, dev: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "tc", "filter", "show", "dev", dev, "ingress"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip


def _qdiscs(ns: str, dev: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", dev],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
