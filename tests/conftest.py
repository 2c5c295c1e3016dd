"""Fixtures shared by the whole test suite.

NSDB:
- `zk_server` (session): a real ZooKeeper (Debian's package) in a temporary directory.
- `nsdb_factory`: parametrised over both backends ("memory", "zookeeper"); calling it
  returns a new client (its own session) on one namespace fresh for the test; every client
  is closed at teardown. `nsdb_factory.url` is the namespace's NSDB URL (for a process
  started by the test, zookeeper only; a memory URL works in this process only).
- `nsdb`: one client from `nsdb_factory`.
Tests using the zookeeper variant are marked `zookeeper` automatically, so
`pytest -m "not zookeeper"` runs the memory half alone.
- `private_zk`: a ZooKeeper of the test's own, which the test may stop and restart (an
  outage) without disturbing the others.

Cassandra (tests/support/cassandra.py): `cassandra_node` (session, one node),
`cassandra_session` (a Session in a keyspace fresh for the test), `cassandra_cluster3`
(three nodes, for failure tests marked slow). Tests using them are marked `cassandra`.

Every test under tests/kernel is marked `root`, every one under tests/system `root` and
`system` (`DIRECTORY_MARKS`): the directory says what a test needs, so
`pytest -m "not root"` never starts one of them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tessera.nsdb.base import Nsdb
from tessera.nsdb.errors import NsdbError
from tessera.nsdb.memory import MemoryNsdb, MemoryStore
from tessera.nsdb.zkserver import ZookeeperServer
from tessera.nsdb.zookeeper import ZookeeperNsdb

# Cassandra fixtures (tests/support/cassandra.py), shared by every test directory.
pytest_plugins = ["support.cassandra"]

TESTS = Path(__file__).resolve().parent

#: Markers every test of a directory carries because of what the directory needs.
DIRECTORY_MARKS: dict[str, tuple[str, ...]] = {
    "kernel": ("root",),
    "system": ("root", "system"),
}


#: Markers no test of a directory may carry: tests/unit runs anywhere, in seconds.
DIRECTORY_FORBIDS: dict[str, tuple[str, ...]] = {
    "unit": ("root", "zookeeper", "system", "cassandra"),
}


_CASSANDRA_FIXTURES = {"cassandra_node", "cassandra_session", "cassandra_cluster3"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    misplaced: list[str] = []
    for item in items:
        try:
            top = item.path.resolve().relative_to(TESTS).parts[0]
        except (ValueError, IndexError):
            continue
        present = {mark.name for mark in item.iter_markers()}
        if _CASSANDRA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker("cassandra")
            present.add("cassandra")
        for name in DIRECTORY_MARKS.get(top, ()):
            if name not in present:
                item.add_marker(name)
        misplaced += [
            f"{item.nodeid} is marked {name}"
            for name in DIRECTORY_FORBIDS.get(top, ())
            if name in present
        ]
    if misplaced:
        raise pytest.UsageError(
            "tests/unit is for tests that need no root, ZooKeeper or Cassandra; move these to "
            "tests/kernel, tests/integration or tests/system (docs/testing.md):\n  "
            + "\n  ".join(misplaced)
        )


@pytest.fixture(scope="session")
def zk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZookeeperServer]:
    server = ZookeeperServer(tmp_path_factory.mktemp("zookeeper"))
    server.start(timeout=60.0)
    try:
        yield server
    finally:
        server.stop()


class NsdbFactory:
    """Makes clients of one namespace; `backend` is "memory" or "zookeeper"."""

    def __init__(self, backend: str, make: Callable[[], Nsdb], url: str) -> None:
        self.backend = backend
        self.url = url
        self._make = make
        self.clients: list[Nsdb] = []

    def __call__(self) -> Nsdb:
        client = self._make()
        self.clients.append(client)
        return client

    def close_all(self) -> None:
        for client in self.clients:
            with contextlib.suppress(NsdbError):
                client.close()


@pytest.fixture(
    params=["memory", pytest.param("zookeeper", marks=pytest.mark.zookeeper)],
)
def nsdb_factory(request: pytest.FixtureRequest) -> Iterator[NsdbFactory]:
    if request.param == "memory":
        name = f"test-{uuid.uuid4().hex}"
        store = MemoryStore.named(f"memory:{name}")
        factory = NsdbFactory("memory", lambda: MemoryNsdb(store), f"memory:{name}")
        try:
            yield factory
        finally:
            factory.close_all()
            MemoryStore.drop_named(f"memory:{name}")
        return
    server: ZookeeperServer = request.getfixturevalue("zk_server")
    root = f"/test-{uuid.uuid4().hex}"
    factory = NsdbFactory(
        "zookeeper",
        lambda: ZookeeperNsdb(server.address, root),
        f"zk://{server.address}{root}",
    )
    try:
        yield factory
    finally:
        factory.close_all()
        _delete_zk_tree(server, root)


def _delete_zk_tree(server: ZookeeperServer, root: str) -> None:
    from kazoo.client import KazooClient

    client = KazooClient(hosts=server.address)
    try:
        client.start(timeout=10)
        client.delete(root, recursive=True)
    except Exception:  # the server may be one a test stopped; its tmp dir goes anyway
        pass
    finally:
        client.stop()
        client.close()


@pytest.fixture
def private_zk(tmp_path: Path) -> Iterator[ZookeeperServer]:
    """A ZooKeeper of this test only, in its tmp_path: it may be stopped and restarted
    (same directory: same port, same data, sessions survive a short outage)."""
    server = ZookeeperServer(tmp_path / "zk")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nsdb(nsdb_factory: NsdbFactory) -> Nsdb:
    return nsdb_factory()


# Hypothesis: CI must never fail on a draw it has not seen before, so the default
# profile is derandomized (examples derived from each test, no example database);
# `HYPOTHESIS_PROFILE=explore` draws fresh random examples (and runs the slow
# exploration tests, which the derandomized profile skips) to look for new
# counterexamples, which then belong in the tests as explicit `@example`s.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None, print_blob=True)
# The default is "ci" with or without `CI` set: a local run reproduces CI's exactly.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or "ci")
