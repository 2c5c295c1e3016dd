"""The cost of `--flow-state cassandra` beside the default (local file + peer push).

    .venv/bin/python bench/flowstate_cassandra.py [--entries N] [--cassandra HOST]

Against a real Cassandra node (started here in a temporary directory on 127.78.0.2,
removed at the end, unless `--cassandra HOST` names one that runs), one
`FlowStateService` per mode, no peers (the push costs the same in both modes):

1. **Agent thread, per new connection**: `track()` of a connection's three entries
   (conntrack + SNAT forward/reverse), the default against `cassandra` (which also
   queues them for the writer thread). This is all a packet's miss path pays.
2. **Lookups on a miss**: the simulation's `in`/`get` on the table view, plain dicts
   against the view that reports misses (`cassandra`: a miss queues a read).
3. **Writer throughput**: entries/s the writer thread gets into Cassandra (both rows
   each), from the first queued to the last acknowledged.
4. **Read on a miss**: time from a key missed to its entry installed from Cassandra
   (p50, p99), i.e. how long a failover host's connection waits for its state.

Bounded: N entries (default 3000), every wait has a deadline.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from types import FrameType

from tessera.agent.flowstate.durable import DurableFlowState
from tessera.agent.flowstate.entry import PROTO_TCP
from tessera.agent.flowstate.service import FlowStateService
from tessera.agent.metrics import AgentMetrics
from tessera.cassandra.cluster import CassandraCluster
from tessera.nsdb.memory import MemoryNsdb, MemoryStore
from tessera.simulation.flowstate import (
    ConnKey,
    ConntrackEntry,
    FlowStateEntry,
    NatBinding,
    NatEntry,
    NatKey,
    nat_return,
)

ZONE = "bench-0000-4000-8000-000000000000"


def entries(i: int) -> list[FlowStateEntry]:
    c = ConnKey(PROTO_TCP, 0x0A000001, 0xCB007109, 1024 + i % 60000, 80 + i // 60000, ZONE)
    fwd = NatEntry(
        NatKey("fwd_snat", PROTO_TCP, c.src, c.sport, c.dst, c.dport, ZONE),
        NatBinding(0xC6336407, 1024 + i % 60000),
    )
    return [ConntrackEntry(c), fwd, nat_return(fwd.key, fwd.binding)]


def service(tmp: Path, durable: DurableFlowState | None) -> FlowStateService:
    host = durable.host_id if durable is not None else str(uuid.uuid4())
    fs = FlowStateService(host, MemoryNsdb(MemoryStore()), AgentMetrics(), list,
                          state_file=tmp / f"{host}.json", durable=durable)  # fmt: skip
    fs.start()
    return fs


def per_call_us(fs: FlowStateService, n: int, offset: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fs.track(entries(offset + i))
    return (time.perf_counter() - start) / n * 1e6


def lookup_ns(fs: FlowStateService, n: int) -> float:
    keys = [entries(10_000_000 + i)[0].key for i in range(n)]
    view = fs.view
    start = time.perf_counter()
    for key in keys:
        _ = key in view.conntrack
    return (time.perf_counter() - start) / n * 1e9


def run(contact: list[str], n: int, tmp: Path) -> dict[str, float]:
    keyspace = f"bench_{uuid.uuid4().hex[:8]}"
    from tessera.cassandra import client

    driver, session = client.connect(contact)
    session.execute(
        f"CREATE KEYSPACE {keyspace} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}",
        timeout=60.0,
    )
    driver.shutdown()
    out: dict[str, float] = {}
    plain = service(tmp, None)
    writer = DurableFlowState(str(uuid.uuid4()), contact, keyspace)
    durable = service(tmp, writer)
    try:
        assert writer.active, "Cassandra did not answer"
        per_call_us(plain, 200, 0)  # warm both
        out["track_us_default"] = per_call_us(plain, n, 1000)
        start = time.monotonic()
        out["track_us_cassandra"] = per_call_us(durable, n, 1000)
        deadline = time.monotonic() + 300
        while writer.stats.written < 3 * n and time.monotonic() < deadline:
            time.sleep(0.01)
        out["written"] = writer.stats.written
        out["write_entries_per_s"] = writer.stats.written / (time.monotonic() - start)
        out["lookup_miss_ns_default"] = lookup_ns(plain, n)
        reader = DurableFlowState(str(uuid.uuid4()), contact, keyspace)
        other = service(tmp, reader)
        try:
            # The reads' timing alone: the lookups that queue them were measured above.
            waits: list[float] = []
            for i in range(min(n, 200)):
                key = entries(1000 + i)[2].key  # the reverse binding: a reply's lookup
                missed = time.monotonic()
                assert other.view.nat.get(key) is None
                deadline = time.monotonic() + 10
                while other.table.lookup(key) is None and time.monotonic() < deadline:
                    time.sleep(0.001)
                waits.append(time.monotonic() - missed)
            waits.sort()
            out["read_ms_p50"] = statistics.median(waits) * 1000
            out["read_ms_p99"] = waits[int(len(waits) * 0.99) - 1] * 1000
            out["lookup_miss_ns_cassandra"] = lookup_ns(other, n)
        finally:
            other.stop()
    finally:
        plain.stop()
        durable.stop()
    return out


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so that the node is removed


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupted)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=3000)
    parser.add_argument("--cassandra", default=None, help="a running node's address")
    args = parser.parse_args()
    n = max(100, min(args.entries, 100_000))
    with tempfile.TemporaryDirectory(prefix="tsr-bench-cass-") as tmp:
        cluster = None
        try:
            if args.cassandra:
                contact = [args.cassandra]
            else:
                cluster = CassandraCluster(Path(tmp) / "cassandra", ["127.78.0.2"])
                started = time.monotonic()
                cluster.start()
                print(f"Cassandra node started in {time.monotonic() - started:.1f} s", flush=True)
                contact = cluster.addresses
            result = run(contact, n, Path(tmp))
        finally:
            if cluster is not None:
                cluster.remove()
    print(f"entries per mode: {n} connections x 3 entries")
    for key, value in result.items():
        print(f"{key:28} {value:12.2f}")


if __name__ == "__main__":
    main()
