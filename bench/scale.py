"""Scale bench (issue 17, like ovn-heater): hundreds of real agents against one ZooKeeper.

Each agent is the real `Agent` (its own ZooKeeper session, cache, simulation and upcall
thread) on a fake datapath, many per process (`bench/scale_agents.py`). For each count
of `--agents` the bench writes a cloud of tenants (`bench/scale_cloud.py`: a router, two
networks with a filter chain, VM ports bound across the agents), waits until every agent
has applied it, then measures:

- port create+bind (one NSDB transaction) -> the owning agent has attached the port and
  loaded its network and chain, and -> every other agent of the tenant holds the binding
  (p50/p95/p99; baseline: the transaction alone);
- a rule added through the REST API with `?wait=true` -> the answer, which comes once
  every concerned agent has applied it (p50/p99; baseline: the same write without wait),
  and whether those agents really held the rule when it came.

Then, once per run, with a ZooKeeper of its own: one agent (alone in its process, so its
RSS is its own) with `--own-ports` bound ports while the rest of the cloud grows through
`--cloud-ports` ports bound to hosts without agents: its RSS, CPU, ZooKeeper watches and
cache size at each step (must stay flat: issue 17); and the cloud grown on to
`--objects` NSDB objects: ZooKeeper's znodes, data size and memory.

`--zk-failure` instead runs the failure scenario (`bench/scale_failure.py`): a 3-member
ensemble, its leader killed under a stream of API writes; agents must re-sync (every
cache equal to a full read) and no acknowledged write may be lost.

    .venv/bin/python bench/scale.py --agents 100,300,1000 [--quick] [--json FILE]
    .venv/bin/python bench/scale.py --zk-failure [--agents 20]

Every loop is bounded in count and time; the ZooKeeper servers and agent processes are
this run's own and are stopped on the way out.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    BENCH_ERRORS,
    BenchError,
    Row,
    loadavg,
    machine,
    percentile,
    render,
    render_markdown,
    signals_raise,
)
from scale_agents import AgentPool, AgentSpec, WorkerError
from scale_cloud import Layout, Tenant, build_tenants, ghost_hosts, realized, vm_port
from scale_zk import BenchZk, cpu_seconds

from tessera.api.app import create_app
from tessera.nsdb import tables
from tessera.nsdb.store.topology import TopologyStore
from tessera.nsdb.zookeeper import ZookeeperNsdb

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

MB = 1024 * 1024
OVN_NOTE = "ovn-heater, 13,750 ports: port bound -> flows 1.15 s avg, p95 1.7 s"
APPLY_TIMEOUT = 600.0  # the whole cloud applied by every agent
SAMPLE_TIMEOUT = 30.0  # one bind or one waiting write


@dataclass(frozen=True)
class Options:
    agents: list[int]
    per_process: int
    ports_per_agent: int
    samples: int
    cloud_ports: list[int]
    own_ports: int
    objects: int
    builders: int
    layout: Layout


def _ms(values: list[float], p: float) -> float:
    return round(percentile(values, p) * 1000, 1)


# --- N agents: bind and --wait latency ----------------------------------------------------


def latency_phase(zk: BenchZk, n: int, opts: Options, log: Any) -> list[Row]:
    section = f"{n} agents"
    root = f"/scale-{uuid.uuid4().hex[:8]}"
    admin = ZookeeperNsdb(zk.hosts, root, op_timeout=30.0)
    store = TopologyStore(admin)
    try:
        return _latency(zk, n, opts, log, section, root, admin, store)
    finally:
        admin.close()


def _latency(
    zk: BenchZk, n: int, opts: Options, log: Any, section: str, root: str,
    admin: ZookeeperNsdb, store: TopologyStore,
) -> list[Row]:  # fmt: skip
    specs = [
        AgentSpec(str(uuid.uuid4()), f"a{i}", f"198.18.{i // 250}.{i % 250 + 1}") for i in range(n)
    ]
    hosts = [s.host_id for s in specs]
    rows: list[Row] = []
    layout = opts.layout
    # The hosts exist and the cloud is written before the agents start, as when
    # hypervisors (re)start under a running cloud: each agent then reads the ports once,
    # instead of every agent following every port being written.
    for spec in specs:
        store.register_host(spec.host_id, spec.name, [spec.underlay])
        admin.state_delete(tables.HOST_LIVENESS, spec.host_id)
    tenants_n = max(1, math.ceil(n * opts.ports_per_agent / layout.vm_ports))
    per_tenant = min(n, layout.vm_ports)
    log(f"{section}: writing {tenants_n} tenants")
    t0 = time.monotonic()
    tenants = build_tenants(zk.hosts, root, 0, tenants_n, hosts, per_tenant, layout, opts.builders)
    wrote = time.monotonic() - t0
    ports = tenants_n * layout.ports
    rows.append(
        Row(section, f"cloud written ({tenants_n} tenants, {ports} ports, "
            f"{tenants_n * layout.objects} objects)", "", None, round(wrote, 1), "s")
    )  # fmt: skip
    log(f"{section}: starting agents ({opts.per_process} per process)")
    pool = AgentPool(zk.hosts, root, specs, opts.per_process)
    try:
        procs = len(pool.groups)
        rows.append(
            Row(section, f"agents started ({procs} processes)", "", None,
                round(pool.start_seconds, 1), "s")
        )  # fmt: skip
        applied = realized(admin, hosts, APPLY_TIMEOUT)
        if applied is None:
            raise BenchError(f"{section}: the agents did not apply the cloud in {APPLY_TIMEOUT}s")
        rows.append(
            Row(section, "every agent has applied its part of the cloud, after start", "",
                None, round(applied, 1), "s")
        )  # fmt: skip
        log(f"{section}: bind samples")
        rows += _bind_samples(pool, store, tenants, hosts, opts.samples, section, log)
        log(f"{section}: --wait samples")
        rows += _wait_samples(pool, admin, zk.hosts, root, tenants, opts.samples, section, n, log)
        st = pool.ask("stats")
        rss = sum(s["rss"] for s in st)
        watches = [w for s in st for w in s["watches"].values()]
        rows.append(
            Row(section, "memory per agent (RSS of the agent processes / agents)", "", None,
                round(rss / n / MB, 1), "MB", note=f"{procs} processes, {rss / MB:.0f} MB")
        )  # fmt: skip
        rows.append(
            Row(section, "watches per agent (median)", "", None,
                float(sorted(watches)[len(watches) // 2]), "")
        )  # fmt: skip
        z = zk.stats()
        rows.append(
            Row(section, "ZooKeeper: watches / connections / RSS", "", None,
                round(z.get("rss", 0) / MB), "MB",
                note=f"{z.get('zk_watch_count', 0):.0f} watches, "
                f"{z.get('connections', 0):.0f} connections")
        )  # fmt: skip
    finally:
        pool.stop()
    return rows


def _bind_samples(
    pool: AgentPool, store: TopologyStore, tenants: list[Tenant], hosts: list[str],
    samples: int, section: str, log: Any,
) -> list[Row]:  # fmt: skip
    rng = random.Random(17)
    commit: list[float] = []
    owner: list[float] = []
    peers: list[float] = []
    missed = 0
    for i in range(samples):
        if i and i % 20 == 0:
            log(f"{section}: {i} bind samples")
        tenant = rng.choice(tenants)
        bridge = rng.choice(tenant.bridges)
        host = rng.choice(hosts)
        port_id = str(uuid.uuid4())
        others = sorted(tenant.hosts - {host})
        probe = f"p{i}"
        concerned = [host, *others]
        only = pool.workers_of(concerned)
        pool.ask("probe", {probe: (port_id, host, concerned)}, only)
        t0 = time.time()
        vm_port(store, bridge, host, port_id)
        commit.append(time.time() - t0)
        answers = pool.ask("results", ([probe], SAMPLE_TIMEOUT), only)
        times = {h: t for a in answers if a for h, t in a.get(probe, {}).items()}
        if set(times) != set(concerned) or any(t is None for t in times.values()):
            missed += 1
            continue
        owner.append(float(times[host] or 0) - t0)
        peers.append(max(float(t or 0) for t in times.values()) - t0)
        tenant.vm_ports[port_id] = host
    note = f"{len(owner)} samples" + (f", {missed} timed out" if missed else "")
    return [
        Row(section, "bind -> owner ready p50", "commit", _ms(commit, 50), _ms(owner, 50), "ms",
            note=note),
        Row(section, "bind -> owner ready p95", "commit", _ms(commit, 95), _ms(owner, 95), "ms",
            note=OVN_NOTE),
        Row(section, "bind -> owner ready p99", "commit", _ms(commit, 99), _ms(owner, 99), "ms",
            goal="p99 < 2000 ms"),
        Row(section, "bind -> tenant's agents updated p50", "commit", _ms(commit, 50),
            _ms(peers, 50), "ms"),
        Row(section, "bind -> tenant's agents updated p99", "commit", _ms(commit, 99),
            _ms(peers, 99), "ms", goal="p99 < 2000 ms"),
    ]  # fmt: skip


def _wait_samples(
    pool: AgentPool, admin: ZookeeperNsdb, zk_hosts: str, root: str, tenants: list[Tenant],
    samples: int, section: str, n: int, log: Any,
) -> list[Row]:  # fmt: skip
    rng = random.Random(42)
    api_nsdb = ZookeeperNsdb(zk_hosts, root, op_timeout=30.0)
    plain: list[float] = []
    waited: list[float] = []
    concerned_counts: list[int] = []
    phases: list[dict[str, float]] = []  # Server-Timing of each waited sample
    late = failed = 0
    app = create_app(api_nsdb)
    # As the API service does when it starts: the copy of the topology --wait walks is
    # loaded in the background; samples start once it is (a running API's steady state).
    t0 = time.monotonic()
    app.state.waiter.warm().join(SAMPLE_TIMEOUT)
    warm = time.monotonic() - t0
    try:
        with TestClient(app) as client:
            for i in range(samples):
                if i and i % 20 == 0:
                    log(f"{section}: {i} --wait samples")
                tenant = rng.choice(tenants)
                body = {
                    "type": "drop",
                    "nw_proto": 17,
                    "tp_dst": {"start": 9000 + i, "end": 9000 + i},
                }
                url = f"/api/v1/chains/{tenant.chain}/rules"
                t0 = time.monotonic()
                r = client.post(url, json=body)
                plain.append(time.monotonic() - t0)
                if r.status_code != 201:
                    failed += 1
                t0 = time.monotonic()
                r = client.post(f"{url}?wait=true&wait_timeout={SAMPLE_TIMEOUT:g}", json=body)
                dt = time.monotonic() - t0
                if r.status_code != 201:
                    failed += 1
                    continue
                waited.append(dt)
                concerned_counts.append(int(r.headers.get("x-tessera-realized", "0")))
                phases.append(_server_timing(r.headers.get("server-timing", "")))
                rule = r.json()["id"]
                asked = pool.workers_of(sorted(tenant.hosts))
                holders = {h for a in pool.ask("holds", ("rules", rule), asked) if a for h in a}
                if not tenant.hosts <= holders:
                    late += 1
    finally:
        app.state.waiter.close()
        api_nsdb.close()
    concerned = sorted(concerned_counts)[len(concerned_counts) // 2] if concerned_counts else 0
    goal = "p99 < 1000 ms at 1,000 agents" if n >= 1000 else "p99 < 1000 ms (at 1,000)"
    return [
        Row(section, "API start: its copy of the topology for --wait loaded", "", None,
            round(warm * 1000, 1), "ms", note="in the background; a waiting write before "
            "it is done waits for it"),
        Row(section, "API rule --wait -> all concerned applied p50", "no wait", _ms(plain, 50),
            _ms(waited, 50), "ms", note=f"{len(waited)} samples, {concerned} agents concerned"),
        Row(section, "API rule --wait -> all concerned applied p99", "no wait", _ms(plain, 99),
            _ms(waited, 99), "ms", goal=goal,
            note=f"{late} answers before a concerned cache held the rule, {failed} failed"),
        *_phase_rows(section, waited, phases),
    ]  # fmt: skip


def _server_timing(header: str) -> dict[str, float]:
    """{phase: ms} from a `Server-Timing` header (`name;dur=ms, ...`)."""
    out: dict[str, float] = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";dur=")
        try:
            out[name] = float(rest)
        except ValueError:
            continue
    return out


def _phase_rows(section: str, waited: list[float], phases: list[dict[str, float]]) -> list[Row]:
    """Where a waiting write's time goes (the API's `Server-Timing`), and the slowest
    sample's own breakdown: the p99 is a handful of samples."""
    if not phases:
        return []
    names = list(dict.fromkeys(n for p in phases for n in p))
    slowest = phases[max(range(len(waited)), key=waited.__getitem__)]
    rows = []
    for name in names:
        values = [p[name] / 1000 for p in phases if name in p]
        rows.append(
            Row(section, f"--wait phase '{name}' p50", "", None, _ms(values, 50), "ms",
                note=f"p99 {_ms(values, 99):.1f} ms; slowest sample {slowest.get(name, 0):.1f} ms")
        )  # fmt: skip
    return rows


# --- one agent while the cloud grows; the NSDB at size -------------------------------------


def growth_phase(zk: BenchZk, opts: Options, log: Any) -> list[Row]:
    section = "one agent, cloud growing"
    root = f"/scale-{uuid.uuid4().hex[:8]}"
    admin = ZookeeperNsdb(zk.hosts, root, op_timeout=30.0)
    store = TopologyStore(admin)
    layout = opts.layout
    rows: list[Row] = []
    ghosts = ghost_hosts(store, max(5, min(50, opts.cloud_ports[-1] // 200)))
    spec = AgentSpec(str(uuid.uuid4()), "observer", "198.18.255.1")
    pool = AgentPool(zk.hosts, root, [spec], 1)
    objects = 0
    try:
        own = Layout(layout.bridges, max(1, opts.own_ports // layout.bridges), layout.rules)
        build_tenants(zk.hosts, root, 0, 1, [spec.host_id], 1, own, 1)
        objects += own.objects
        ports = own.ports
        next_tenant = 1
        first: dict[str, float] = {}
        realized(admin, [spec.host_id], APPLY_TIMEOUT)
        cpu0 = cpu_seconds(pool.pids[0])
        for target in opts.cloud_ports:
            need = max(0, math.ceil((target - ports) / layout.ports))
            log(f"{section}: growing to {target} ports ({need} tenants)")
            grown = build_tenants(
                zk.hosts, root, next_tenant, need, ghosts, layout.vm_ports, layout, opts.builders
            )
            next_tenant += need
            ports += need * layout.ports
            t0 = time.monotonic()  # one port the way the API writes it, at this size
            if grown:
                vm_port(store, grown[-1].bridges[0], ghosts[0])
                ports += 1
                objects += 1
            store_bind = time.monotonic() - t0
            objects += need * layout.objects
            t = realized(admin, [spec.host_id], APPLY_TIMEOUT)
            st = pool.ask("stats")[0]
            rss, watches = st["rss"] / MB, float(st["watches"][spec.host_id])
            cached = float(st["objects"][spec.host_id])
            cpu = cpu_seconds(pool.pids[0]) - cpu0
            first = first or {"rss": rss, "watches": watches, "cached": cached}
            label = f"at {ports:,} ports"
            rows += [
                Row(section, f"agent RSS {label}", "first step", round(first["rss"], 1),
                    round(rss, 1), "MB", goal="< 150 MB, <= 1.2x first",
                    note=f"{opts.own_ports} own ports; {objects:,} objects"),
                Row(section, f"agent watches {label}", "first step", first["watches"], watches, ""),
                Row(section, f"agent cache objects {label}", "first step", first["cached"],
                    cached, ""),
                Row(section, f"agent CPU since the first step {label}", "", None, round(cpu, 1),
                    "s", note="not applied" if t is None else f"applied {t:.1f} s after written"),
                Row(section, f"API-path port create+bind {label}", "", None,
                    round(store_bind * 1000, 1), "ms",
                    note="TopologyStore create+bind, one transaction"),
            ]  # fmt: skip
        pool.stop()
        if opts.objects > objects:
            need = math.ceil((opts.objects - objects) / layout.objects)
            log(f"{section}: growing the NSDB to {opts.objects:,} objects ({need} tenants)")
            t0 = time.monotonic()
            build_tenants(
                zk.hosts, root, next_tenant, need, ghosts, layout.vm_ports, layout, opts.builders
            )
            dt = time.monotonic() - t0
            objects += need * layout.objects
            rows.append(
                Row("NSDB", "write rate (one transaction per tenant)", "", None,
                    round(need * layout.objects / dt), "/s", note=f"{opts.builders} writers")
            )  # fmt: skip
        z = zk.stats()
        rows += [
            Row("NSDB", f"znodes at {objects:,} objects", "", None,
                z.get("zk_znode_count"), ""),
            Row("NSDB", f"data size at {objects:,} objects", "", None,
                round(z.get("zk_approximate_data_size", 0) / MB, 1), "MB"),
            Row("NSDB", f"ZooKeeper RSS at {objects:,} objects", "", None,
                round(z.get("rss", 0) / MB), "MB", note="JVM heap limit 2 GiB"),
        ]  # fmt: skip
    finally:
        pool.stop()
        admin.close()
    return rows


# --- main ---------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    try:
        values = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"want positive numbers: {text}")
    return values


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--agents", type=_ints, default=None, help="agent counts (100,300,1000)")
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    p.add_argument("--per-process", type=int, default=None, help="agents per process")
    p.add_argument("--ports-per-agent", type=int, default=2)
    p.add_argument("--samples", type=int, default=None, help="bind and --wait samples")
    p.add_argument("--cloud-ports", type=_ints, default=None, help="growth steps (100,...,10000)")
    p.add_argument("--own-ports", type=int, default=10, help="the observed agent's ports")
    p.add_argument("--objects", type=int, default=None, help="NSDB size to reach (100000)")
    p.add_argument("--builders", type=int, default=3, help="processes writing the cloud")
    p.add_argument("--skip-growth", action="store_true", help="latency phases only")
    p.add_argument("--zk-failure", choices=("leader", "restart"), nargs="?", const="leader",
                   help="the ZooKeeper failure scenario instead (leader of 3 killed, or "
                   "the single server restarted)")  # fmt: skip
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--markdown", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.ERROR)
    quick = args.quick
    opts = Options(
        agents=args.agents or ([5] if quick else [100, 300, 1000]),
        per_process=args.per_process or (5 if quick else 50),
        ports_per_agent=args.ports_per_agent,
        samples=args.samples or (5 if quick else 100),
        cloud_ports=args.cloud_ports or ([100, 200] if quick else [100, 1000, 3000, 10000]),
        own_ports=args.own_ports,
        objects=args.objects if args.objects is not None else (500 if quick else 100_000),
        builders=args.builders,
        layout=Layout(),
    )
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    info = machine()
    rows: list[Row] = []

    def save(new: list[Row]) -> None:
        """Each phase's rows as soon as it ends: a run cut short keeps what it measured."""
        rows.extend(new)
        print(render(new), file=sys.stderr, flush=True)
        if args.json:
            doc = {"machine": info, "rows": [r.as_dict() for r in rows], "partial": True}
            args.json.write_text(json.dumps(doc, indent=1))

    try:
        with signals_raise(), tempfile.TemporaryDirectory(prefix="tessera-scale-") as tmp:
            if args.zk_failure:
                from scale_failure import failure_rows, zk_failure

                members = 3 if args.zk_failure == "leader" else 1
                zk = BenchZk(Path(tmp), members=members, heap_mb=512)
                try:
                    result = zk_failure(zk, opts.agents[0] if args.agents else 20, log=log)
                finally:
                    zk.stop()
                save(failure_rows(result))
            else:
                # The latency phases get a ZooKeeper of their own, not the one grown to
                # `--objects` (a quick run shares one: its cloud is small).
                zk = BenchZk(Path(tmp) / "growth")
                try:
                    if not args.skip_growth:
                        save(growth_phase(zk, opts, log))
                    if not quick:
                        zk.stop()
                        zk = BenchZk(Path(tmp) / "latency")
                    for n in opts.agents:
                        save(latency_phase(zk, n, opts, log))
                finally:
                    zk.stop()
    except (*BENCH_ERRORS, WorkerError) as exc:
        print(f"scale: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    info["loadavg_end"] = loadavg()
    info["seconds"] = round(time.monotonic() - started)
    print(f"# machine: {info}")
    print(render_markdown(rows) if args.markdown else render(rows))
    if args.json:
        args.json.write_text(
            json.dumps({"machine": info, "rows": [r.as_dict() for r in rows]}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
