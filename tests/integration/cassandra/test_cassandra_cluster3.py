"""Three real Cassandra nodes: replication factor 3, and a node stopped and started
again while the others keep serving QUORUM reads and writes."""

from __future__ import annotations

import pytest

from tessera.cassandra.cluster import CassandraCluster

# Starting Cassandra (in the first test's setup) may take minutes on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _quorum(session: object, query: str, params: list[object] | None = None) -> object:
    from cassandra import ConsistencyLevel
    from cassandra.query import SimpleStatement

    statement = SimpleStatement(query, consistency_level=ConsistencyLevel.QUORUM)
    return session.execute(statement, params)  # type: ignore[attr-defined]


def test_three_nodes_up_normal_rf3(cassandra_cluster3: CassandraCluster) -> None:
    assert [n["state"] for n in cassandra_cluster3.status()] == ["UN", "UN", "UN"]
    assert cassandra_cluster3.replication_factor == 3
    driver, _session = cassandra_cluster3.connect()
    try:
        hosts = {h.address for h in driver.metadata.all_hosts()}
        assert hosts == set(cassandra_cluster3.addresses)
    finally:
        driver.shutdown()


def test_a_stopped_node_comes_back_and_catches_up(cassandra_cluster3: CassandraCluster) -> None:
    driver, session = cassandra_cluster3.connect()
    try:
        session.execute("CREATE TABLE IF NOT EXISTS kv (k text PRIMARY KEY, v int)")
        _quorum(session, "INSERT INTO kv (k, v) VALUES ('before', 1)")
        cassandra_cluster3.stop_node(3)
        states = [n["state"] for n in cassandra_cluster3.status()]
        assert states == ["UN", "UN", "DN"]
        # Two of three replicas are a quorum: writes and reads go on.
        _quorum(session, "INSERT INTO kv (k, v) VALUES ('during', 2)")
        assert _quorum(session, "SELECT v FROM kv WHERE k = 'before'").one().v == 1  # type: ignore[attr-defined]
        cassandra_cluster3.start_node(3)
        assert [n["state"] for n in cassandra_cluster3.status()] == ["UN", "UN", "UN"]
    finally:
        driver.shutdown()
    # Node 3 alone (ONE, its own replica or a hint delivered to it) answers for both.
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    third = cassandra_cluster3.nodes[2].address
    only = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([third]))
    lone = Cluster([third], execution_profiles={EXEC_PROFILE_DEFAULT: only}, protocol_version=5)
    try:
        s = lone.connect("tessera")
        assert _quorum(s, "SELECT v FROM kv WHERE k = 'during'").one().v == 2  # type: ignore[attr-defined]
    finally:
        lone.shutdown()
