"""Benchmark of the ZooKeeper NSDB layer against raw kazoo doing the same work.

Each operation is measured twice in one run, against the same ZooKeeper: through
`ZookeeperNsdb` and through a bare `KazooClient` (which also serialises/parses the
model's JSON, as any kazoo program storing these objects would). The ratio column is
what our layer costs on top (goal: under 1.20x). Counts are bounded; a run takes a few
seconds plus ZooKeeper's start-up.

    .venv/bin/python bench/nsdb.py [--zk HOST:PORT] [--count 1000] [--threads 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from kazoo.client import KazooClient
from kazoo.recipe.watchers import DataWatch

from tessera.model import Bridge
from tessera.nsdb.base import WatchEvent
from tessera.nsdb.zkserver import ZookeeperServer
from tessera.nsdb.zookeeper import ZookeeperNsdb

KIND = "bridges"


class Layers:
    """Our layer and raw kazoo, each with a writer and a separate watcher session."""

    def __init__(self, hosts: str) -> None:
        root = f"/bench-{uuid.uuid4().hex[:8]}"
        self.root = root
        self.ours = ZookeeperNsdb(hosts, root)
        self.ours_watcher = ZookeeperNsdb(hosts, root)
        self.raw = KazooClient(hosts=hosts)
        self.raw.start(timeout=10)
        self.raw_watcher = KazooClient(hosts=hosts)
        self.raw_watcher.start(timeout=10)
        self.raw_dir = f"{root}/raw/{KIND}"
        self.raw.ensure_path(self.raw_dir)

    def close(self) -> None:
        self.ours.close()
        self.ours_watcher.close()
        self.raw.delete(self.root, recursive=True)
        for client in (self.raw, self.raw_watcher):
            client.stop()
            client.close()

    # -- the same operations, two ways --

    def ours_create(self, b: Bridge) -> None:
        self.ours.create(b)

    def raw_create(self, b: Bridge) -> None:
        self.raw.create(f"{self.raw_dir}/{b.id}", b.model_dump_json().encode())

    def ours_get(self, id: str) -> Bridge:
        value = self.ours.get(KIND, id).value
        assert isinstance(value, Bridge)
        return value

    def raw_get(self, id: str) -> Bridge:
        data, _stat = self.raw.get(f"{self.raw_dir}/{id}")
        return Bridge.model_validate_json(data)


def per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def sequential(op: Callable[[Bridge], None], count: int) -> tuple[float, list[Bridge]]:
    made = [Bridge(name=f"b{i}") for i in range(count)]
    start = time.perf_counter()
    for b in made:
        op(b)
    return per_second(count, time.perf_counter() - start), made


def concurrent(op: Callable[[Bridge], None], count: int, threads: int) -> float:
    work = [[Bridge(name=f"t{t}-{i}") for i in range(count // threads)] for t in range(threads)]

    def run(items: list[Bridge]) -> None:
        for b in items:
            op(b)

    workers = [threading.Thread(target=run, args=(items,)) for items in work]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    return per_second(sum(len(w) for w in work), time.perf_counter() - start)


def reads(op: Callable[[str], Bridge], ids: list[str], count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        op(ids[i % len(ids)])
    return per_second(count, time.perf_counter() - start)


class Arrivals:
    """When each value (the bridge name written) reached the watcher's callback."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self._cond = threading.Condition()

    def record(self, value: int) -> None:
        now = time.perf_counter()
        with self._cond:
            self.seen.setdefault(value, now)
            self._cond.notify_all()

    def wait(self, value: int, timeout: float) -> float | None:
        with self._cond:
            self._cond.wait_for(lambda: value in self.seen, timeout)
            return self.seen.get(value)


def latencies(write: Callable[[int], object], arrivals: Arrivals, count: int) -> list[float]:
    """Time from issuing write i to the watcher's callback reporting it (one at a time,
    so nothing is coalesced)."""
    out: list[float] = []
    for i in range(1, count + 1):
        start = time.perf_counter()
        write(i)
        arrived = arrivals.wait(i, 5.0)
        if arrived is not None:
            out.append(arrived - start)
    return out


def watch_latency_ours(layers: Layers, count: int) -> list[float]:
    b = Bridge(name="0")
    layers.ours.create(b)
    arrivals = Arrivals()

    def on_event(event: WatchEvent) -> None:
        if isinstance(event.value, Bridge):
            arrivals.record(int(event.value.name))

    layers.ours_watcher.watch_object(KIND, b.id, on_event)
    time.sleep(0.2)
    return latencies(
        lambda i: layers.ours.update(b.model_copy(update={"name": str(i)})), arrivals, count
    )


def watch_latency_raw(layers: Layers, count: int) -> list[float]:
    b = Bridge(name="0")
    path = f"{layers.raw_dir}/{b.id}"
    layers.raw.create(path, b.model_dump_json().encode())
    arrivals = Arrivals()

    def on_data(data: bytes | None, stat: object) -> None:
        if data:
            arrivals.record(int(Bridge.model_validate_json(data).name))

    DataWatch(layers.raw_watcher, path, on_data)
    time.sleep(0.2)
    return latencies(
        lambda i: layers.raw.set(
            path, b.model_copy(update={"name": str(i)}).model_dump_json().encode()
        ),
        arrivals,
        count,
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def interleaved(
    measure_ours: Callable[[], float], measure_raw: Callable[[], float], rounds: int
) -> tuple[float, float]:
    """Median of alternating rounds, so drift in the server (JIT, log rolls, snapshots)
    hits both sides alike."""
    ours: list[float] = []
    raw: list[float] = []
    for i in range(rounds):
        first, second = (measure_raw, measure_ours) if i % 2 == 0 else (measure_ours, measure_raw)
        a, b = first(), second()
        (raw if first is measure_raw else ours).append(a)
        (ours if first is measure_raw else raw).append(b)
    return statistics.median(ours), statistics.median(raw)


def run(
    hosts: str, count: int, threads: int, rounds: int
) -> list[tuple[str, str, float, float, bool]]:
    """Rows of (measure, unit, ours, raw, higher_is_better)."""
    layers = Layers(hosts)
    per_round = max(20, count // rounds)
    try:
        # Warm up both paths (connections, the server's JIT, lazy imports).
        sequential(layers.ours_create, 200)
        sequential(layers.raw_create, 200)
        rows: list[tuple[str, str, float, float, bool]] = []
        made: dict[str, list[str]] = {"ours": [], "raw": []}

        def seq(side: str, op: Callable[[Bridge], None]) -> Callable[[], float]:
            def measure() -> float:
                rate, items = sequential(op, per_round)
                made[side].extend(b.id for b in items)
                return rate

            return measure

        ours, raw = interleaved(
            seq("ours", layers.ours_create), seq("raw", layers.raw_create), rounds
        )
        rows.append(("sequential creates", "/s", ours, raw, True))
        ours, raw = interleaved(
            lambda: concurrent(layers.ours_create, 4 * per_round, threads),
            lambda: concurrent(layers.raw_create, 4 * per_round, threads),
            rounds,
        )
        rows.append((f"concurrent creates, {threads} threads", "/s", ours, raw, True))
        ours, raw = interleaved(
            lambda: reads(layers.ours_get, made["ours"], 2 * per_round),
            lambda: reads(layers.raw_get, made["raw"], 2 * per_round),
            rounds,
        )
        rows.append(("reads", "/s", ours, raw, True))
        n = max(50, count // 2)
        raw_lat = watch_latency_raw(layers, n)
        ours_lat = watch_latency_ours(layers, n)
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            rows.append(
                (
                    f"watch notification {label}",
                    "ms",
                    1000 * percentile(ours_lat, q),
                    1000 * percentile(raw_lat, q),
                    False,
                )
            )
        rows.append(("watch notifications seen", f"of {n}", len(ours_lat), len(raw_lat), True))
        return rows
    finally:
        layers.close()


def print_table(rows: list[tuple[str, str, float, float, bool]]) -> None:
    header = f"{'measure':<34} {'tessera':>12} {'raw kazoo':>12} {'cost':>8}"
    print(header)
    print("-" * len(header))
    for name, unit, ours, raw, higher_better in rows:
        cost = (raw / ours if higher_better else ours / raw) if ours and raw else float("nan")
        print(f"{name + ' (' + unit + ')':<34} {ours:>12.1f} {raw:>12.1f} {cost:>7.2f}x")
    print("cost = how much more time tessera's layer takes than raw kazoo (goal < 1.20x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zk", help="HOST:PORT of a running ZooKeeper (default: start one)")
    parser.add_argument("--count", type=int, default=1000, help="operations per measure")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per measure")
    args = parser.parse_args()
    count = max(50, min(args.count, 20_000))
    rounds = max(1, min(args.rounds, 50))
    if args.zk:
        print_table(run(args.zk, count, args.threads, rounds))
        return
    with (
        tempfile.TemporaryDirectory(prefix="tessera-bench-zk-") as tmp,
        ZookeeperServer(Path(tmp)) as server,
    ):
        print(f"ZooKeeper (Debian) on {server.address}: {count} ops per measure, {rounds} rounds")
        print_table(run(server.address, count, args.threads, rounds))


if __name__ == "__main__":
    main()
