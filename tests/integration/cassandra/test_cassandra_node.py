"""One real Cassandra node (the session's `cassandra_node`): it serves CQL on its own
loopback address, has the keyspace, and keeps what is written to it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tessera.cassandra import install
from tessera.cassandra.cluster import CassandraCluster
from tessera.cassandra.errors import CassandraError

# Starting Cassandra (in the first test's setup) may take minutes on a busy machine.
pytestmark = pytest.mark.timeout(600)


def test_node_is_up_normal_with_the_keyspace(cassandra_node: CassandraCluster) -> None:
    [node] = cassandra_node.status()
    assert node["state"] == "UN"
    assert node["pid"] == cassandra_node.nodes[0].pid
    assert node["address"].startswith("127.77.")
    driver, session = cassandra_node.connect()
    try:
        row = session.execute(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
            ["tessera"],
        ).one()
        assert row is not None
        assert row.replication["replication_factor"] == "1"
    finally:
        driver.shutdown()


def test_write_read_round_trip(cassandra_session: Any) -> None:
    cassandra_session.execute("CREATE TABLE kv (k text PRIMARY KEY, v int)")
    for i in range(50):
        cassandra_session.execute("INSERT INTO kv (k, v) VALUES (%s, %s)", [f"key{i}", i])
    rows = {r.k: r.v for r in cassandra_session.execute("SELECT k, v FROM kv")}
    assert rows == {f"key{i}": i for i in range(50)}


def test_ttl_expires_a_row(cassandra_session: Any) -> None:
    cassandra_session.execute("CREATE TABLE kv (k text PRIMARY KEY, v int)")
    cassandra_session.execute("INSERT INTO kv (k, v) VALUES ('gone', 1) USING TTL 1")
    cassandra_session.execute("INSERT INTO kv (k, v) VALUES ('kept', 2) USING TTL 600")
    deadline = time.monotonic() + 10.0
    while cassandra_session.execute("SELECT v FROM kv WHERE k = 'gone'").one() is not None:
        assert time.monotonic() < deadline, "a row with TTL 1 s is still there after 10 s"
        time.sleep(0.2)
    assert cassandra_session.execute("SELECT v FROM kv WHERE k = 'kept'").one().v == 2


def test_a_missing_install_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(install.HOME_ENV, str(tmp_path / "nowhere"))
    cluster = CassandraCluster(tmp_path / "c", ["127.77.250.2"])
    with pytest.raises(CassandraError, match=r"not installed.*scripts/install\.sh"):
        cluster.start(timeout=5.0)
    assert not cluster.nodes[0].is_running
