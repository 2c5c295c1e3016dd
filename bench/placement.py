"""Placement claims: Cassandra lightweight transactions against ZooKeeper multi-ops.

    .venv/bin/python bench/placement.py [--claims N] [--cassandra HOST]

For 1, 2, 4 and 8 concurrent schedulers (threads, each with its own connection), N
claims (default 400) of 1 VCPU + 512 MB on 20 providers of 64 VCPUs each (room for all:
what is measured is the claim, not failures):

- **Cassandra**: tessera's scheduler (`tessera.placement`): read every provider row
  (QUORUM), filter and weigh (spread, random among the best 3), claim with a
  conditional batch on the provider's generation (SERIAL Paxos); a lost race moves to
  the next candidate.
- **ZooKeeper** (baseline): the same rows as znodes (a provider's inventory and usages
  in one znode's JSON), the same read/filter/weigh, and the claim as one multi-op:
  `set_data(provider, new usages, version=read version)` + `create(allocation)`; a
  `BadVersionError` is a lost race and moves to the next candidate.

Reported per mode and concurrency: claims/s, lost races per claim, p50 and p99
latency of one whole scheduling (read + claim + retries). Cassandra runs here on one
node started for the run (127.78.19.2, removed at the end) unless `--cassandra HOST`
names a running one; ZooKeeper is a real server started for the run.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tessera.cassandra.client import connect
from tessera.cassandra.cluster import CassandraCluster
from tessera.nsdb.zkserver import ZookeeperServer
from tessera.placement.model import Inventory
from tessera.placement.scheduler import Scheduler
from tessera.placement.schema import ensure_schema
from tessera.placement.store import PlacementStore

PROVIDERS = 20
WANTED = {"VCPU": 1, "MEMORY_MB": 512}
INVENTORY = {"VCPU": Inventory(total=64), "MEMORY_MB": Inventory(total=262144)}
CONCURRENCY = (1, 2, 4, 8)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


def run_threads(
    count: int, claims: int, one: Callable[[int], Callable[[], int]]
) -> dict[str, float]:
    """`count` threads, each made by `one(index)` (its own connection) and returning
    the lost races of one scheduling, sharing `claims` schedulings."""
    left = [claims]
    lock = threading.Lock()
    latencies: list[float] = []
    retries = [0]
    workers = [one(k) for k in range(count)]

    def work(schedule: Callable[[], int]) -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            start = time.perf_counter()
            lost = schedule()
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                retries[0] += lost

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    wall = time.perf_counter() - start
    return {
        "claims_per_s": len(latencies) / wall,
        "retry_rate": retries[0] / max(1, len(latencies)),
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }


# -- Cassandra ---------------------------------------------------------------------------


def cassandra_round(host: str, count: int, claims: int) -> dict[str, float]:
    keyspace = f"bench_{uuid.uuid4().hex[:10]}"
    driver, session = connect([host])
    session.execute(
        f"CREATE KEYSPACE {keyspace} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    session.set_keyspace(keyspace)
    ensure_schema(session)
    store = PlacementStore(session)
    for k in range(PROVIDERS):
        p = store.create_provider(f"cn{k:02d}")
        store.set_inventories(p.uuid, p.generation, INVENTORY)
    drivers = [driver]

    def one(_: int) -> Callable[[], int]:
        d, s = connect([host], keyspace)
        drivers.append(d)
        scheduler = Scheduler(PlacementStore(s))

        def schedule() -> int:
            return scheduler.schedule(WANTED).retries

        return schedule

    try:
        return run_threads(count, claims, one)
    finally:
        for d in drivers:
            d.shutdown()


# -- ZooKeeper ---------------------------------------------------------------------------


def zookeeper_round(hosts: str, count: int, claims: int) -> dict[str, float]:
    from kazoo.client import KazooClient
    from kazoo.exceptions import BadVersionError

    root = f"/bench-placement-{uuid.uuid4().hex[:8]}"
    admin = KazooClient(hosts=hosts)
    admin.start(timeout=15)
    clients = [admin]
    for k in range(PROVIDERS):
        body = {
            "name": f"cn{k:02d}",
            "inventories": {n: i.to_json() for n, i in INVENTORY.items()},
            "usages": {},
        }
        admin.create(f"{root}/providers/p{k:02d}", json.dumps(body).encode(), makepath=True)
    admin.create(f"{root}/allocations", b"", makepath=True)

    def one(_: int) -> Callable[[], int]:
        zk = KazooClient(hosts=hosts)
        zk.start(timeout=15)
        clients.append(zk)

        def schedule() -> int:
            consumer = str(uuid.uuid4())
            lost = 0
            while True:
                found = []
                for child in zk.get_children(f"{root}/providers"):
                    path = f"{root}/providers/{child}"
                    data, stat = zk.get(path)
                    row = json.loads(data)
                    free = min(
                        row["inventories"][n]["total"] - row["usages"].get(n, 0) - a
                        for n, a in WANTED.items()
                    )
                    if free >= 0:
                        share = free / row["inventories"]["VCPU"]["total"]
                        found.append((share, random.random(), path, row, stat.version))
                found.sort(reverse=True)
                head = found[:3]
                random.shuffle(head)
                for _, _, path, row, version in head + found[3:]:
                    usages = dict(row["usages"])
                    for n, a in WANTED.items():
                        usages[n] = usages.get(n, 0) + a
                    tx = zk.transaction()
                    tx.set_data(path, json.dumps({**row, "usages": usages}).encode(), version)
                    tx.create(f"{root}/allocations/{consumer}", json.dumps(WANTED).encode())
                    results = tx.commit()
                    if not any(isinstance(r, Exception) for r in results):
                        return lost
                    if not isinstance(results[0], BadVersionError):
                        raise RuntimeError(f"ZooKeeper claim failed: {results}")
                    lost += 1

        return schedule

    try:
        return run_threads(count, claims, one)
    finally:
        for zk in clients:
            zk.stop()
            zk.close()


def load() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=400)
    parser.add_argument("--cassandra", metavar="HOST", help="a running Cassandra node")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-placement-") as tmp:
        cluster: CassandraCluster | None = None
        host = args.cassandra
        if host is None:
            cluster = CassandraCluster(Path(tmp) / "cassandra", ["127.78.19.2"])
            cluster.start()
            host = cluster.addresses[0]
        zk = ZookeeperServer(Path(tmp) / "zk")
        zk.start()
        try:
            print(f"load average before: {load()}")
            print("| backend | schedulers | claims/s | lost races per claim | p50 ms | p99 ms |")
            print("|---|---:|---:|---:|---:|---:|")
            results: list[tuple[str, int, dict[str, Any]]] = []
            for count in CONCURRENCY:
                for name, fn, where in (
                    ("Cassandra LWT", cassandra_round, host),
                    ("ZooKeeper multi", zookeeper_round, zk.address),
                ):
                    r = fn(where, count, args.claims)
                    results.append((name, count, r))
                    print(
                        f"| {name} | {count} | {r['claims_per_s']:.0f} | "
                        f"{r['retry_rate']:.3f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |",
                        flush=True,
                    )
            print(f"load average after: {load()}")
        finally:
            zk.stop()
            if cluster is not None:
                cluster.remove()


if __name__ == "__main__":
    main()
