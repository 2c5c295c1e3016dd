"""`--flow-state cassandra` against a real Cassandra node: what a host creates is
written there (asynchronously), comes back when the host restarts with no local state,
reaches a host that never saw it when that host misses it, and goes when it expires."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tessera.agent.flowstate.durable import DurableFlowState
from tessera.agent.flowstate.entry import PROTO_TCP
from tessera.agent.flowstate.service import FlowStateService
from tessera.agent.metrics import AgentMetrics
from tessera.cassandra.cluster import CassandraCluster
from tessera.nsdb.memory import MemoryNsdb, MemoryStore
from tessera.packet.addr import ip_from_str as ip
from tessera.simulation.flowstate import (
    ConnKey,
    ConntrackEntry,
    NatBinding,
    NatEntry,
    NatKey,
    nat_return,
)
from tessera.simulation.tags import nat_tag

ZONE = "3c6b0d4e-0000-4000-8000-0000000000dd"

# Starting Cassandra (in the first test's setup) may take minutes on a busy machine.
pytestmark = pytest.mark.timeout(600)


def conn(i: int = 1) -> ConnKey:
    return ConnKey(PROTO_TCP, ip("10.0.0.1"), ip("203.0.113.9"), 30000 + i, 80, ZONE)


def snat(i: int, to: tuple[int, int]) -> tuple[NatEntry, NatEntry]:
    c = conn(i)
    fwd = NatEntry(NatKey("fwd_snat", PROTO_TCP, c.src, c.sport, c.dst, c.dport, ZONE),
                   NatBinding(*to))  # fmt: skip
    return fwd, nat_return(fwd.key, fwd.binding)


def service(
    host_id: str, cluster: CassandraCluster, keyspace: str, store: MemoryStore, state: Path
) -> FlowStateService:
    durable = DurableFlowState(host_id, cluster.addresses, keyspace)
    state_file = state / f"flowstate-{host_id}.json"
    fs = FlowStateService(
        host_id, MemoryNsdb(store), AgentMetrics(), list, state_file=state_file, durable=durable
    )
    fs.start()
    assert durable.active
    return fs


def until(what: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return value


def test_state_comes_back_after_a_restart_without_local_state(
    cassandra_node: CassandraCluster, cassandra_session: Any, tmp_path: Path
) -> None:
    keyspace, store, host = cassandra_session.keyspace, MemoryStore(), str(uuid.uuid4())
    a = service(host, cassandra_node, keyspace, store, tmp_path)
    try:
        ips, ports = (ip("198.51.100.7"), ip("198.51.100.7")), (1024, 65535)
        public = a.snat.allocate(ips, ports, conn(1))
        assert public is not None
        a.snat.release(conn(1))
        fwd, rev = snat(1, public)
        a.track([ConntrackEntry(conn(1)), fwd, rev])
        assert a.durable is not None
        until(lambda: a.durable.stats.written == 3 and not a.durable.pending_writes)
        rows = cassandra_session.execute(
            "SELECT key, TTL(record) AS ttl FROM flow_state_by_host WHERE host = %s", [host]
        )
        ttls = {r.key: r.ttl for r in rows}
        assert len(ttls) == 3
        assert all(500 < t <= 600 for t in ttls.values())  # TCP: 600 s idle timeout
    finally:
        a.stop()
    # The state directory is wiped: only Cassandra remembers.
    (tmp_path / f"flowstate-{host}.json").unlink()
    again = service(host, cassandra_node, keyspace, MemoryStore(), tmp_path)
    try:
        assert again.table.lookup(conn(1)) is not None
        assert again.view.nat.get(rev.key) == NatBinding(conn(1).src, conn(1).sport)
        assert again.durable is not None and again.durable.stats.restored == 3
        tracked = {t.entry.key: t for t in again.table.snapshot()}
        assert tracked[rev.key].origin is None  # ours again, not a copy
    finally:
        again.stop()


def test_a_host_that_never_saw_a_connection_gets_it_on_a_miss(
    cassandra_node: CassandraCluster, cassandra_session: Any, tmp_path: Path
) -> None:
    keyspace, store = cassandra_session.keyspace, MemoryStore()
    owner, other = str(uuid.uuid4()), str(uuid.uuid4())
    a = service(owner, cassandra_node, keyspace, store, tmp_path)
    b = service(other, cassandra_node, keyspace, store, tmp_path)
    woken: list[bool] = []
    b.on_received = lambda: woken.append(True)
    try:
        fwd, rev = snat(2, (ip("198.51.100.7"), 40002))
        a.track([fwd, rev])
        assert a.durable is not None
        until(lambda: a.durable.stats.written == 2 and not a.durable.pending_writes)
        # A reply reaches b (a failover): the simulation misses the reverse binding ...
        assert b.view.nat.get(rev.key) is None
        # ... and the flows that missed it are invalidated once it arrives from Cassandra.
        until(lambda: b.table.lookup(rev.key) is not None)
        assert b.view.nat.get(rev.key) == NatBinding(conn(2).src, conn(2).sport)
        assert nat_tag(rev.key) in b.drain_tags()
        assert woken
        copy = {t.entry.key: t for t in b.table.snapshot()}[rev.key]
        assert copy.origin == owner
        # A key nobody wrote is asked once, found nowhere.
        assert conn(99) not in b.view.conntrack
        assert b.durable is not None
        until(lambda: b.durable.stats.asked >= 2)
        assert b.table.lookup(conn(99)) is None
        # a's entry expires (its flows idle past the timeout): its rows go too.
        a.sweep(a.clock() + 700.0, lambda _flow: None)
        until(lambda: a.durable.stats.deleted == 2 and not a.durable.pending_writes)
        assert (
            cassandra_session.execute(
                "SELECT key FROM flow_state WHERE key = %s", [_key(rev.key)]
            ).one()
            is None
        )
    finally:
        a.stop()
        b.stop()


def _key(key: NatKey) -> str:
    from tessera.agent.flowstate.durable import key_text

    return key_text(key)


def test_an_unreachable_cassandra_leaves_the_agent_forwarding(tmp_path: Path) -> None:
    durable = DurableFlowState("h", ["127.77.251.2"], "tessera")
    fs = FlowStateService("h", MemoryNsdb(MemoryStore()), AgentMetrics(), list,
                          state_file=tmp_path / "fs.json", durable=durable)  # fmt: skip
    fs.start()
    try:
        assert not durable.active
        fs.track([ConntrackEntry(conn(5))])  # no queue grows, nothing raises
        assert conn(6) not in fs.view.conntrack
        assert fs.table.lookup(conn(5)) is not None
        assert fs.report()["cassandra"]["active"] is False
    finally:
        fs.stop()
