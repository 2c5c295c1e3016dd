"""Real Cassandra clusters for the tests (registered in tests/conftest.py).

- `cassandra_node` (session): one node, keyspace `tessera` (RF 1). Starting it is a
  one-time cost of ~20-40 s per pytest session.
- `cassandra_session`: a driver Session on `cassandra_node`, in a keyspace fresh for the
  test (so tests never see each other's rows).
- `cassandra_cluster3` (session): three nodes, keyspace `tessera` with RF 3, for failure
  tests (mark them `slow`: starting three JVMs takes a minute or more). A test may stop
  or kill nodes: they are started again after it.

Addresses: 127.77.S.2.. with S a slot taken by an flock on /tmp/tessera-cassandra-slots/S,
held for the whole session, so that pytest sessions running at once on one machine (other
worktrees, CI) never pick the same addresses; the lab uses 127.0.I.x, never these. With
one loopback address per node, every node uses Cassandra's standard ports.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera.cassandra.cluster import CassandraCluster, addresses
from tessera.cassandra.config import CQL_PORT, STORAGE_PORT

SLOT_DIR = Path("/tmp/tessera-cassandra-slots")
SLOTS = 200


def _free(address: str) -> bool:
    for port in (CQL_PORT, STORAGE_PORT):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


@contextlib.contextmanager
def address_slot(count: int) -> Iterator[list[str]]:
    """`count` addresses 127.77.S.2.. no other pytest session on this machine holds,
    with nothing listening on them; held until the block ends."""
    SLOT_DIR.mkdir(parents=True, exist_ok=True)
    for slot in range(SLOTS):
        fd = os.open(SLOT_DIR / str(slot), os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        chosen = addresses(f"127.77.{slot}.2", count)
        if not all(_free(a) for a in chosen):  # a leftover of a killed session
            os.close(fd)
            continue
        try:
            yield chosen
        finally:
            os.close(fd)
        return
    raise RuntimeError(f"no free Cassandra address slot in {SLOT_DIR} (0..{SLOTS - 1})")


@contextlib.contextmanager
def running_cluster(directory: Path, count: int) -> Iterator[CassandraCluster]:
    """A cluster of `count` nodes, started, removed (processes and data) afterwards."""
    with address_slot(count) as chosen:
        cluster = CassandraCluster(directory, chosen, cluster_name=f"test-{uuid.uuid4().hex[:8]}")
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.remove()


@pytest.fixture(scope="session")
def cassandra_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CassandraCluster]:
    with running_cluster(tmp_path_factory.mktemp("cassandra1"), 1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def _cassandra_driver(cassandra_node: CassandraCluster) -> Iterator[Any]:
    """One driver Cluster for the whole session (connecting costs a second)."""
    driver, _ = cassandra_node.connect()
    try:
        yield driver
    finally:
        driver.shutdown()


@pytest.fixture
def cassandra_session(_cassandra_driver: Any) -> Iterator[Any]:
    """A Session in a keyspace of the test's own (RF 1). Not dropped afterwards: a drop
    costs seconds of schema work, and the node's data goes at the end of the session."""
    keyspace = f"t_{uuid.uuid4().hex[:12]}"
    session = _cassandra_driver.connect()
    session.execute(
        f"CREATE KEYSPACE {keyspace} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    session.set_keyspace(keyspace)
    try:
        yield session
    finally:
        session.shutdown()


@pytest.fixture(scope="session")
def _cassandra_cluster3_running(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CassandraCluster]:
    with running_cluster(tmp_path_factory.mktemp("cassandra3"), 3) as cluster:
        yield cluster


@pytest.fixture
def cassandra_cluster3(_cassandra_cluster3_running: CassandraCluster) -> Iterator[CassandraCluster]:
    """The three-node cluster; nodes the test stopped or killed run again afterwards."""
    cluster = _cassandra_cluster3_running
    yield cluster
    stopped = [k for k, node in enumerate(cluster.nodes, start=1) if not node.is_running]
    for number in stopped:
        cluster.start_node(number)
