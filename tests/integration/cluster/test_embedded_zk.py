"""The embedded ZooKeeper ensemble: three members on one machine serve as one database,
survive the loss of their leader, come back under supervision, and leave no process.

One module-scoped ensemble (three JVMs of 256 MB at most); each test first makes sure
all three serve again, so any test may run alone. A member is killed with SIGKILL, as a
crash would: ZooKeeper gets no chance to say goodbye to its peers.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from support.wait import wait_until
from tessera.cluster.embedded_zk import EmbeddedZooKeeper
from tessera.nsdb.connect import open_nsdb
from tessera.nsdb.zkserver import ZookeeperError, is_zookeeper, java_command, spawn

pytestmark = pytest.mark.zookeeper

TICK_MS = 200  # elections and session checks in a fraction of a second
BOUND = 15.0  # how long a member may take to (re)join or an election to settle here


def _free_ports(count: int) -> list[int]:
    """`count` different free ports below the ephemeral range: a member that is down
    must find its ports free again, and a port the kernel may hand out as the source
    of any outgoing connection (the survivors keep calling the dead member) could be
    taken meanwhile. All bound at once, so none is picked twice."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = random.sample(range(max(1024, low - 12000), low), 200)
    with contextlib.ExitStack() as stack:
        ports = []
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


def _members(directory: Path, count: int) -> list[EmbeddedZooKeeper]:
    ports = _free_ports(3 * count)
    triples = [ports[i : i + 3] for i in range(0, len(ports), 3)]
    peers = [f"127.0.0.1:{c}:{p}:{e}" for c, p, e in triples]
    return [
        EmbeddedZooKeeper(
            i, peers, directory / f"zk{i}", triples[i - 1][0], tick_ms=TICK_MS, force_sync=False
        )
        for i in range(1, count + 1)
    ]


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EmbeddedZooKeeper]]:
    members = _members(tmp_path_factory.mktemp("ensemble"), 3)
    try:
        yield members
    finally:
        for member in members:
            member.stop()


def _serving(members: list[EmbeddedZooKeeper]) -> dict[int, str]:
    """Start whatever a previous test stopped; every member's mode once all serve."""
    for member in members:
        member.start()
    modes = {m.node_id: m.wait_serving(BOUND) for m in members}
    assert sorted(modes.values()) == ["follower", "follower", "leader"], modes
    return modes


@contextlib.contextmanager
def _client(member: EmbeddedZooKeeper) -> Iterator[KazooClient]:
    """A client of this member only (not the connect string): where it writes or reads
    is the point of the test."""
    client = KazooClient(hosts=member.me.client_address, timeout=5)
    client.start(timeout=BOUND)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def _write_then_read(writer: EmbeddedZooKeeper, reader: EmbeddedZooKeeper) -> bool:
    path = f"/embedded/{uuid.uuid4().hex}"
    value = uuid.uuid4().bytes
    with _client(writer) as client:
        client.create(path, value, makepath=True)
    with _client(reader) as client:
        client.sync(path)  # a follower may lag the leader by a round trip
        data, _ = client.get(path)
    return data == value


def _kill(member: EmbeddedZooKeeper) -> int:
    pid = member.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: member.pid != pid, what=f"pid {pid} gone")
    return pid


def _our_jvms(directory: Path) -> list[int]:
    """Every process whose command line names a config under `directory`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(directory).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def test_a_write_through_one_member_is_read_through_another(
    ensemble: list[EmbeddedZooKeeper],
) -> None:
    _serving(ensemble)
    first, _, third = ensemble
    assert first.connect_string == third.connect_string
    assert first.connect_string.count(",") == 2
    assert _write_then_read(first, third)
    assert _write_then_read(third, first)
    # tessera's own NSDB client on the ensemble's URL (every member's address).
    nsdb = open_nsdb(first.url(f"embedded-{uuid.uuid4().hex}"))
    try:
        nsdb.state_set("t", "k", "v", ephemeral=False)
        assert nsdb.state_get("t") == {"k": "v"}
    finally:
        nsdb.close()
    config = first.config_path.read_text()
    assert "server.3=127.0.0.1:" in config and "4lw.commands.whitelist=" in config
    assert first.myid_path.read_text().strip() == "1"
    assert first.log_path.stat().st_size > 0


def test_the_ensemble_serves_on_without_its_leader(ensemble: list[EmbeddedZooKeeper]) -> None:
    modes = _serving(ensemble)
    leader = next(m for m in ensemble if modes[m.node_id] == "leader")
    survivors = [m for m in ensemble if m is not leader]
    # A client of the leader (the others as fallbacks, tried in order) holding an
    # ephemeral node, as an agent or a cluster node holds its liveness or leadership.
    order = ",".join(m.me.client_address for m in [leader, *survivors])
    holder = KazooClient(hosts=order, timeout=4, randomize_hosts=False)
    holder.start(timeout=BOUND)
    try:
        ephemeral = holder.create("/embedded/held-", ephemeral=True, sequence=True, makepath=True)
        session = holder.client_id[0]
        _kill(leader)
        assert not leader.alive
        wait_until(
            lambda: sorted(str(m.mode) for m in survivors) == ["follower", "leader"],
            BOUND,
            what="a leader among the two survivors",
        )
        assert wait_until(
            lambda: _write_then_read(survivors[0], survivors[1]), BOUND, what="write and read"
        )
        # The holder moved to a survivor within its session: same session, node kept.
        holder.sync(ephemeral)
        assert holder.client_id[0] == session
        with _client(survivors[1]) as other:
            other.sync(ephemeral)
            assert other.exists(ephemeral) is not None
    finally:
        holder.stop()
        holder.close()
    with pytest.raises(ZookeeperError, match=f"member {leader.node_id} is not running"):
        leader.wait_serving(0.1)  # unsupervised: nobody starts it again
    leader.start()
    assert leader.wait_serving(BOUND) == "follower"  # the survivors' leader stays


def test_supervision_restarts_a_killed_member_and_it_rejoins(
    ensemble: list[EmbeddedZooKeeper],
) -> None:
    modes = _serving(ensemble)
    follower = next(m for m in ensemble if modes[m.node_id] == "follower")
    others = [m for m in ensemble if m is not follower]
    follower.supervise(initial_backoff=0.2, max_backoff=2.0)
    before = follower.restarts
    old_pid = _kill(follower)
    # Written while the follower is down: it must catch up when it rejoins.
    path = f"/embedded/{uuid.uuid4().hex}"
    with _client(others[0]) as client:
        client.create(path, b"while-down", makepath=True)
    wait_until(lambda: follower.restarts == before + 1, BOUND, what="a restart")
    assert follower.wait_serving(BOUND) == "follower"
    assert follower.pid not in (None, old_pid)
    assert follower.last_error == "exited with status -9"
    with _client(follower) as client:
        client.sync(path)
        assert client.get(path)[0] == b"while-down"
    follower.stop()  # no supervisor left for the other tests (_serving starts it)


def test_stopping_the_ensemble_leaves_no_process(ensemble: list[EmbeddedZooKeeper]) -> None:
    _serving(ensemble)
    ensemble[0].supervise(initial_backoff=0.2)  # a supervisor must not start it again
    pids = [m.pid for m in ensemble]
    for member in ensemble:
        member.stop()
    time.sleep(3 * 0.2)  # past the back-off: a supervisor left running would restart it
    for member, pid in zip(ensemble, pids, strict=True):
        assert pid is not None and not Path(f"/proc/{pid}").exists()
        assert not member.alive and not member.supervised
        assert not member.pid_path.exists()
    assert _our_jvms(ensemble[0].data_dir.parent) == []


def test_a_single_peer_is_a_standalone_server(tmp_path: Path) -> None:
    (member,) = _members(tmp_path, 1)
    with member:
        assert member.wait_serving(BOUND) == "standalone"
        assert "server.1" not in member.config_path.read_text()
        assert _write_then_read(member, member)
    assert _our_jvms(tmp_path) == []


def test_a_member_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    (member,) = _members(tmp_path, 1)
    # A node that dies at once (os._exit: no stop, no atexit, as SIGKILL would) must not
    # leave its JVM running: the JVM's parent-death signal ends it.
    script = (
        "import os, sys; from pathlib import Path;"
        "from tessera.cluster.embedded_zk import EmbeddedZooKeeper as Z;"
        "m = Z(1, [sys.argv[1]], Path(sys.argv[2]), int(sys.argv[3])); m.start();"
        "print(m.pid, flush=True); os._exit(0)"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(member.me),
            str(member.data_dir),
            str(member.client_port),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    orphan = int(out.stdout)
    try:
        wait_until(
            lambda: not is_zookeeper(orphan, member.config_path),
            BOUND,
            what=f"the orphaned JVM {orphan} gone",
        )
    finally:
        if is_zookeeper(orphan, member.config_path):
            os.kill(orphan, signal.SIGKILL)
    assert _our_jvms(tmp_path) == []


def test_a_member_left_behind_is_replaced(tmp_path: Path) -> None:
    (member,) = _members(tmp_path, 1)
    # A JVM of an earlier start still running (one that ignored its parent-death
    # signal, or an older tessera's): started here without the tie, its pid file
    # written as the member writes it.
    member.data_dir.mkdir(parents=True)
    member.write_config()
    command = java_command(member.config_path, member.data_dir / "log4j.properties", 64)
    process = spawn(command, member.data_dir)
    member.pid_path.write_text(f"{process.pid}\n")
    left_behind = process.pid
    wait_until(lambda: member.four_letter("ruok") == "imok", BOUND, what="the leftover serving")
    try:
        member.start()  # finds it by the pid file, stops it, starts its own
        assert member.pid != left_behind
        assert not is_zookeeper(left_behind, member.config_path)
        assert member.wait_serving(BOUND) == "standalone"
    finally:
        member.stop()
        if is_zookeeper(left_behind, member.config_path):
            os.kill(left_behind, signal.SIGKILL)
        process.wait(5)
    assert _our_jvms(tmp_path) == []


def test_busy_ports_and_failed_starts_are_clear_errors(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        peers = [f"127.0.0.1:{port}:{port + 1}:{port + 2}"]
        busy = EmbeddedZooKeeper(1, peers, tmp_path / "busy", port)
        with pytest.raises(ZookeeperError, match=f"client port 127.0.0.1:{port} is already"):
            busy.start()
    (broken,) = _members(tmp_path, 1)
    broken.tick_ms = 0  # ZooKeeper refuses tickTime=0
    with pytest.raises(ZookeeperError, match="member 1 exited during start-up"):
        broken.start()
    assert not broken.alive
    assert _our_jvms(tmp_path) == []
