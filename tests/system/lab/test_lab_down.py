"""`tessera lab down` leaves nothing behind: not after a full lab, not after a lab whose
`up` was killed half way, not when the lab's state file and pid files are lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from lab_helpers import Lab, Snapshot, env, require_agent, root_missing, tessera

from support.local import TESSERA
from support.wait import wait_until
from tessera.lab import names
from tessera.lab.state import lab_dir
from tessera.model import Host, Port, TunnelZone
from tessera.nsdb.connect import open_nsdb
from tessera.nsdb.store import TopologyStore
from tessera.nsdb.zkserver import ZookeeperServer

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)


def _port(lab: Lab) -> str:
    bridge = lab.create("/bridges", {"name": "down"})
    return str(lab.create(f"/bridges/{bridge['id']}/ports")["id"])


def test_down_removes_every_process_namespace_link_and_pin() -> None:
    require_agent()
    before = Snapshot.take()
    lab = Lab()
    try:
        lab.up("--hosts", "2")
        lab.cmd("vm", "add", "vm1", "--host", "h1", "--port", _port(lab), "--ip", "10.1.0.1/24")
        # A long name: its cable's name is shortened with a hash, and must go too.
        long_name = "Web-Server-Number-2"
        lab.cmd("vm", "add", long_name, "--host", "h2", "--port", _port(lab), "--ip", "10.1.0.2/24")
        assert names.netns(lab.name, long_name) in lab.namespaces()
        # A process a user left running in a VM would keep its namespace alive.
        sleeper = subprocess.Popen(
            [TESSERA, "lab", "exec", "--name", lab.name, "vm1", "--", "sleep", "300"], env=env()
        )
        wait_until(lambda: _in_namespace(sleeper.pid, lab, "vm1"), what="the sleeper to run in vm1")
        status = lab.status()
        assert len(lab.namespaces()) == 5  # underlay, 2 hosts, 2 VMs
        lab.pids |= {h["agent_pid"] for h in status["hosts"]}
        lab.pids |= {status["api"]["pid"], status["nsdb"]["pid"], status["relay_pid"]}
        if status["datapath"] == "ebpf":
            assert any((names.host_id(lab.name, 1) in p) for p in Snapshot.take().pins)
        out = lab.down()
        assert out.stdout.strip().endswith(f"lab {lab.name}: down")
        assert sleeper.wait(timeout=10) != 0  # ended by `down`
        lab.assert_gone(before)
        again = tessera("lab", "down", "--name", lab.name)
        assert "no lab named" in again.stdout
    finally:
        if lab.dir.exists() or lab.namespaces():
            lab.down()


def _in_namespace(pid: int, lab: Lab, what: str) -> bool:
    """Whether `pid` (nsenter, exec'ing its command) lives in `what`'s namespace."""
    try:
        mine = os.readlink(f"/proc/{pid}/ns/net")
        theirs = os.stat(f"/run/netns/{names.netns(lab.name, what)}").st_ino
    except OSError:
        return False
    return mine == f"net:[{theirs}]"


def test_a_lab_whose_up_was_killed_half_way_comes_down_cleanly() -> None:
    require_agent()
    before = Snapshot.take()
    lab = Lab()
    up = subprocess.Popen(
        [TESSERA, "lab", "up", "--name", lab.name, "--hosts", "3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
    )  # fmt: skip
    try:
        # Kill it once the host namespaces exist: ZooKeeper, the API and part of the
        # underlay run; relay, tunnel zone and agents may or may not.
        wait_until(
            lambda: names.netns(lab.name, "h3") in lab.namespaces() or up.poll() is not None,
            timeout=60,
            what="the host namespaces",
        )
        up.send_signal(signal.SIGKILL)
        up.wait(timeout=10)
        assert lab.dir.exists() and lab.namespaces()
        lab.pids |= lab.recorded_pids()
        assert lab.pids
        lab.down()
        lab.assert_gone(before)
    finally:
        if up.poll() is None:
            up.kill()
        if lab.dir.exists() or lab.namespaces():
            lab.down()


def test_down_finds_what_the_lab_made_even_without_its_state_and_pid_files() -> None:
    require_agent()
    before = Snapshot.take()
    lab = Lab()
    try:
        lab.up("--hosts", "1")
        lab.pids |= lab.recorded_pids()
        for path in [lab.dir / "lab.json", *lab.dir.rglob("*.pid")]:
            path.unlink()
        lab.down()
        lab.assert_gone(before)
    finally:
        if lab.dir.exists() or lab.namespaces():
            lab.down()


def test_several_labs_coexist_and_commands_ask_which_one() -> None:
    require_agent()
    before = Snapshot.take()
    first, second = Lab(), Lab()
    try:
        first.up("--hosts", "1")
        second.up("--hosts", "1")
        assert first.api_url != second.api_url
        one = first.status()["hosts"][0]["underlay_ip"]
        two = second.status()["hosts"][0]["underlay_ip"]
        assert one.rsplit(".", 1)[0] != two.rsplit(".", 1)[0]  # underlays apart
        ambiguous = tessera("lab", "status", check=False)
        assert ambiguous.returncode != 0
        assert "several labs are running" in ambiguous.stderr and "--name" in ambiguous.stderr
        assert first.name in ambiguous.stderr and second.name in ambiguous.stderr
        down_ambiguous = tessera("lab", "down", check=False)
        assert down_ambiguous.returncode != 0 and "--name" in down_ambiguous.stderr
        # Taking one down leaves the other working.
        first.down()
        first.assert_gone(before)
        status = json.loads(tessera("lab", "status", "--json", "--name", second.name).stdout)
        assert status["hosts"][0]["alive"] is True
        second.down()
        second.assert_gone(before)
    finally:
        for lab in (first, second):
            if lab.dir.exists() or lab.namespaces():
                lab.down()


def test_up_with_an_unreachable_nsdb_fails_at_once_and_makes_nothing() -> None:
    before = Snapshot.take()
    lab = Lab()
    try:
        started = time.monotonic()
        proc = tessera(
            "lab", "up", "--name", lab.name, "--hosts", "1", "--nsdb", "zk://127.0.0.1:1/x",
            check=False,
        )  # fmt: skip
        assert time.monotonic() - started < 20
        assert proc.returncode != 0
        assert proc.stderr.startswith("error: cannot reach the NSDB zk://127.0.0.1:1/x")
        assert proc.stderr.count("\n") == 1
        lab.assert_gone(before)
    finally:
        if lab.dir.exists() or lab.namespaces():
            lab.down()


def test_a_lab_on_an_external_nsdb_takes_back_what_it_wrote_there(
    zk_server: ZookeeperServer,
) -> None:
    require_agent()
    before = Snapshot.take()
    lab = Lab()
    url = f"zk://{zk_server.address}/lab-{lab.name}"
    try:
        lab.up("--hosts", "1", "--nsdb", url)
        status = lab.status()
        assert status["nsdb"] == {"url": url, "own": False, "pid": None}
        assert status["hosts"][0]["alive"] is True
        lab.cmd("vm", "add", "vm1", "--host", "h1", "--port", _port(lab))
        stop = lab.cmd("nsdb", "stop", check=False)
        assert stop.returncode != 0 and "not a ZooKeeper of its own" in stop.stderr
        lab.down()
        lab.assert_gone(before)
        nsdb = open_nsdb(url)
        try:
            store = TopologyStore(nsdb)
            assert store.list(Host) == [] and store.list(TunnelZone) == []
            assert all(p.host_id is None for p in store.list(Port))
        finally:
            nsdb.close()
        assert zk_server.is_running  # not ours to stop
    finally:
        if lab.dir.exists() or lab.namespaces():
            lab.down()


def test_lab_commands_refuse_bad_input_in_one_line() -> None:
    for argv in (
        ["lab", "up", "--name", "bad-name"],
        ["lab", "up", "--name", "x", "--datapath", "dpdk"],
        ["lab", "up", "--name", "x", "--nsdb", "memory"],
        ["lab", "status", "--name", "nosuchlab"],
        ["lab", "exec", "--name", "nosuchlab", "vm1", "--", "true"],
    ):
        proc = tessera(*argv, check=False)
        assert proc.returncode != 0, argv
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert not os.path.exists("/run/netns/tsr-x-underlay")
    assert not lab_dir("x").exists()
