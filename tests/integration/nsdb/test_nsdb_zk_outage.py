"""ZooKeeper going away and coming back, with a server private to each test: clients
must fail fast (503, never a hang) and recover by themselves, watches included."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nsdb_helpers import EventLog, bridge

from support.wait import wait_until
from tessera.nsdb.errors import Unavailable
from tessera.nsdb.zkserver import ZookeeperServer
from tessera.nsdb.zookeeper import ZookeeperNsdb

pytestmark = pytest.mark.zookeeper

FAST = 5.0  # an operation during an outage must fail within this many seconds


@pytest.fixture
def clients(private_zk: ZookeeperServer) -> Iterator[list[ZookeeperNsdb]]:
    made: list[ZookeeperNsdb] = []
    yield made
    for client in made:
        client.close()


def _client(server: ZookeeperServer, made: list[ZookeeperNsdb], **kwargs: float) -> ZookeeperNsdb:
    client = ZookeeperNsdb(server.address, "/outage", **kwargs)
    made.append(client)
    return client


def _timed_unavailable(call: object) -> float:
    start = time.monotonic()
    with pytest.raises(Unavailable, match="ZooKeeper"):
        call()  # type: ignore[operator]
    return time.monotonic() - start


def test_outage_fails_fast_and_restart_recovers_client_and_watches(
    private_zk: ZookeeperServer, clients: list[ZookeeperNsdb]
) -> None:
    client = _client(private_zk, clients)
    b = bridge("before")
    client.create(b)
    log, state_log = EventLog(), EventLog()
    client.watch_object("bridges", b.id, log)
    client.watch_state("hosts", state_log)
    log.wait_count(1)

    private_zk.stop()
    wait_until(lambda: not client.connected, timeout=FAST)
    for call in (
        lambda: client.get("bridges", b.id),
        lambda: client.update(b),
        lambda: client.list("bridges"),
        lambda: client.state_set("hosts", "h1", "alive"),
        lambda: client.next_id("c"),
        lambda: client.watch_kind("bridges", EventLog()),
    ):
        assert _timed_unavailable(call) < FAST

    private_zk.start()  # same directory: same port, same data, same session
    wait_until(lambda: client.connected, timeout=15)
    assert client.get("bridges", b.id).version == 1
    other = _client(private_zk, clients)
    other.update(b.model_copy(update={"name": "after"}), 1)
    other.state_set("hosts", "h2", "alive")
    events = log.wait_count(2)
    assert [(e.change, e.version) for e in events] == [("added", 1), ("changed", 2)]
    state_log.wait_count(1)


def test_changes_made_while_a_client_was_cut_off_are_delivered(
    private_zk: ZookeeperServer, clients: list[ZookeeperNsdb], tmp_path: Path
) -> None:
    """The watcher loses its connection (server restart) while the data changes under a
    second server incarnation before it reconnects; it must report the difference."""
    watcher = _client(private_zk, clients)
    kept, changed, removed = bridge("kept"), bridge("changed"), bridge("removed")
    for b in (kept, changed, removed):
        watcher.create(b)
    log = EventLog()
    watcher.watch_kind("bridges", log)
    log.wait_count(3)
    private_zk.stop()
    private_zk.start()
    writer = _client(private_zk, clients)  # may well connect before the watcher re-syncs
    added = bridge("added")
    writer.update(changed)
    writer.delete("bridges", removed.id)
    writer.create(added)

    def settled(events: list[object]) -> bool:
        last = {e.id: e for e in events}  # type: ignore[attr-defined]
        return (
            last.get(changed.id) is not None
            and last[changed.id].version == 2
            and last.get(removed.id) is not None
            and last[removed.id].change == "deleted"
            and added.id in last
        )

    events = log.wait_for(settled, timeout=15)
    assert not [e for e in events if e.id == kept.id and e.change != "added"]


def test_a_client_started_during_an_outage_works_once_zookeeper_is_up(
    private_zk: ZookeeperServer, clients: list[ZookeeperNsdb]
) -> None:
    private_zk.stop()
    start = time.monotonic()
    client = _client(private_zk, clients, connect_timeout=0.5)
    assert time.monotonic() - start < FAST
    assert not client.connected
    assert _timed_unavailable(lambda: client.create(bridge())) < FAST
    private_zk.start()
    wait_until(lambda: client.connected, timeout=15)
    b = bridge()
    client.create(b)  # the layout was created after connecting
    assert client.get("bridges", b.id).version == 1


def _all_threads_stopped(pid: int) -> bool:
    """Whether every thread of `pid` has stopped: kill(SIGSTOP) returns before a thread
    busy on another CPU stops, and such a thread could still answer a request."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[-1].split()[0])
        except OSError:
            continue  # a thread that just ended
    return bool(states) and all(state in ("T", "t") for state in states)


def test_a_hung_server_gives_unavailable_not_a_hang(
    private_zk: ZookeeperServer, clients: list[ZookeeperNsdb]
) -> None:
    """A server that accepts nothing but keeps the TCP connection open (SIGSTOP of our
    own process): requests time out into `Unavailable`, and the client recovers."""
    client = _client(private_zk, clients)
    b = bridge()
    client.create(b)
    pid = private_zk.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: _all_threads_stopped(pid), timeout=FAST)
        assert _timed_unavailable(lambda: client.get("bridges", b.id)) < FAST
    finally:
        os.kill(pid, signal.SIGCONT)

    def works() -> bool:
        try:
            return client.get("bridges", b.id).version == 1
        except Unavailable:
            return False

    wait_until(works, timeout=20)
