"""The scale bench's agents: many real agents per process, driven over a pipe.

Each agent is `tessera.agent.agent.Agent` itself — its own ZooKeeper session (its own
kazoo client), topology cache, simulation, realization reporter and upcall thread — on
a `FakeDatapath`; a process holds many of them (`AgentPool` spreads them over several
processes, so that both cores work). What the bench asks a process, by name:

- `probe`: note when the given agents have applied a port's binding — the owner has
  attached it, a peer's cache holds it bound there — timed on the agent's own thread,
  right after it applied its queued cache updates (`Agent.process_events`);
- `results`: those times, waiting (bounded) for the probes still open;
- `attached`: the ports each agent has attached;
- `holds`: which agents' caches hold an object;
- `stats`: the process's RSS and threads, each agent's watch count (the paths its
  ZooKeeper session watches) and cache size;
- `check`: every agent's cache against a full read of the NSDB (see `check_caches`);
- `stop`.

Times are `time.time()`: the bench and its agent processes share one clock.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from scale_zk import cpu_seconds, rss_bytes

from tessera.agent.agent import Agent
from tessera.agent.reach import AGENT_MAX_DEPTH, REACH_KINDS, reach
from tessera.datapath.fake import FakeDatapath
from tessera.model import (
    Bridge,
    Chain,
    Port,
    StoredObject,
    TunnelZone,
)
from tessera.nsdb.zookeeper import ZookeeperNsdb

WHOLE_KINDS = (TunnelZone.kind,)
"""Kinds every agent holds entirely (`TopologyCache.start`); the rest it loads on
demand, as far as its bound ports reach (`tessera.agent.reach`)."""
ON_DEMAND_KINDS = REACH_KINDS
START_ATTEMPTS = 3
REPLY_TIMEOUT = 1800.0  # a command's answer (starting 50 agents on a machine at load 100...)
START_WAVE = 2
"""Agent processes starting at once: a start is CPU-bound (sessions, first loads), and
twenty processes starting together on two cores starved their ZooKeeper sessions
(pings late, sessions lost: "ZooKeeper unreachable" at 1,000 agents)."""


@dataclass(frozen=True)
class AgentSpec:
    host_id: str
    name: str
    underlay: str


@dataclass
class _Probe:
    port_id: str
    owner: str
    done: float | None = None


class _Host:
    """One agent of this process, with its open probes."""

    def __init__(self, spec: AgentSpec, hosts: str, root: str, lock: threading.Lock) -> None:
        self.spec = spec
        # Generous timeouts: hundreds of sessions starting at once on a shared machine
        # make ZooKeeper answer in seconds, which is load, not failure.
        # A session timeout of 30 s, not 10: a thousand agents share two cores here, and
        # a starved process's late pings (not a dead agent) would lose the session.
        self.nsdb = ZookeeperNsdb(
            hosts, root, session_timeout=30.0, op_timeout=15.0, connect_timeout=60.0
        )
        self.agent = Agent(
            spec.host_id, self.nsdb, FakeDatapath(), name=spec.name, underlay_ip=spec.underlay,
            write_state=False,
        )  # fmt: skip
        self.probes: dict[str, _Probe] = {}
        self._lock = lock
        original = self.agent.process_events

        def process_events() -> int:
            n = original()
            if n and self.probes:
                self._check_probes()
            return n

        # The agent's loop calls `self.process_events()`: an instance attribute wins.
        self.agent.process_events = process_events  # type: ignore[method-assign]

    def _check_probes(self) -> None:
        now = time.time()
        with self._lock:
            for probe in self.probes.values():
                if probe.done is None and self.applied(probe):
                    probe.done = now

    def applied(self, probe: _Probe) -> bool:
        """The owner: the port is attached, and its network (children included) and the
        network's filter chain are loaded — a first packet would be simulated, not
        parked. A peer: its cache holds the port bound to the owner."""
        cache = self.agent.cache
        port = cache.get(Port.kind, probe.port_id)
        if not isinstance(port, Port) or port.host_id != probe.owner:
            return False
        if probe.owner != self.spec.host_id:
            return True
        if self.agent.ports.number_of(probe.port_id) is None:
            return False
        if not cache.is_loaded((Bridge.kind, port.device_id)):
            return False
        bridge = cache.get(Bridge.kind, port.device_id)
        chain = getattr(bridge, "inbound_filter_id", None)
        return chain is None or cache.is_loaded((Chain.kind, chain))

    def watches(self) -> int:
        """Paths this agent's ZooKeeper session watches (kazoo's own bookkeeping: one
        server-side watch per path and kind of watch)."""
        zk = self.nsdb._zk  # the session's kazoo client; the bench may look inside
        return len(zk._data_watchers) + len(zk._child_watchers)

    def cache_objects(self) -> int:
        state = self.agent.cache.state
        with state.lock:
            return sum(len(state.of(k)) for k in (*WHOLE_KINDS, *ON_DEMAND_KINDS))

    def stop(self) -> None:
        # Not unregistering: a thousand Host writes, each sent to every other agent,
        # would be the bench measuring itself. The session's end says "dead" anyway.
        with contextlib.suppress(Exception):
            self.agent.stop(unregister=False)
        with contextlib.suppress(Exception):
            self.nsdb.close()


def _snapshot(nsdb: ZookeeperNsdb) -> dict[str, dict[str, StoredObject]]:
    return {
        kind: {s.value.id: s.value for s in nsdb.list(kind)}
        for kind in (*WHOLE_KINDS, *ON_DEMAND_KINDS)
    }


def check_caches(nsdb: ZookeeperNsdb, agents: Sequence[Agent]) -> dict[str, list[str]]:
    """What each agent's cache gets wrong against a full read of the NSDB ({} when all
    are right): a kind every agent holds whole must be exactly the NSDB's; every object
    the agent's bound ports reach (`tessera.agent.reach.reach`, the cache's own rule,
    over a full read) must be held at its current value; an on-demand object held must
    be current, or absent once deleted. Only meaningful while nothing writes."""
    snap = _snapshot(nsdb)
    objects = {(kind, id): obj for kind, objs in snap.items() for id, obj in objs.items()}
    listed: dict[tuple[str, str], set[str]] = {}

    def members(index: str, key: str) -> set[str]:
        if (index, key) not in listed:
            listed[(index, key)] = set(nsdb.index_list(index, key))
        return listed[(index, key)]

    reachable = {
        a.host_id: {
            id for _kind, id in reach(
                a.host_id, lambda k, i: objects.get((k, i)), members,
                max_depth=AGENT_MAX_DEPTH,
            ).objects
        }
        for a in agents
    }  # fmt: skip
    kind_of = {id: kind for kind, objs in snap.items() for id in objs}
    out: dict[str, list[str]] = {}
    for agent in agents:
        wrong: list[str] = []
        state = agent.cache.state
        with state.lock:
            held = {k: dict(state.of(k)) for k in (*WHOLE_KINDS, *ON_DEMAND_KINDS)}
        for kind in WHOLE_KINDS:
            missing = snap[kind].keys() - held[kind].keys()
            extra = held[kind].keys() - snap[kind].keys()
            stale = [
                i for i in snap[kind].keys() & held[kind].keys() if snap[kind][i] != held[kind][i]
            ]
            wrong += [f"{kind} {i} missing" for i in sorted(missing)]
            wrong += [f"{kind} {i} deleted but held" for i in sorted(extra)]
            wrong += [f"{kind} {i} stale" for i in sorted(stale)]
        for id in sorted(reachable.get(agent.host_id, set())):
            of = kind_of.get(id)
            if of is None or of in WHOLE_KINDS:
                continue
            if id not in held[of]:
                wrong.append(f"{of} {id} reachable but not loaded")
        for kind in ON_DEMAND_KINDS:
            for id, value in held[kind].items():
                current = snap[kind].get(id)
                if current is None:
                    wrong.append(f"{kind} {id} deleted but held")
                elif current != value:
                    wrong.append(f"{kind} {id} stale")
        if wrong:
            out[agent.host_id] = wrong
    return out


def worker_main(conn: Connection, hosts: str, root: str, specs: list[AgentSpec]) -> None:
    """A process of agents: start them, then answer the bench until `stop`."""
    logging.basicConfig(level=logging.ERROR)
    lock = threading.Lock()
    members: dict[str, _Host] = {}
    checker: ZookeeperNsdb | None = None
    try:
        t0 = time.monotonic()
        for spec in specs:
            for attempt in range(START_ATTEMPTS):
                host = _Host(spec, hosts, root, lock)
                try:
                    host.agent.start()
                    break
                except Exception as exc:  # RegistrationError, NsdbError: ZooKeeper slow
                    host.stop()
                    if attempt == START_ATTEMPTS - 1:
                        raise
                    logging.getLogger(__name__).warning("agent %s: %s; again", spec.name, exc)
            members[spec.host_id] = host
            host.agent.run_in_thread()
        conn.send(("ok", {"seconds": time.monotonic() - t0, "pid": os.getpid()}))
    except Exception as exc:
        conn.send(("error", f"starting agents: {exc}\n{traceback.format_exc()}"))
        for host in members.values():
            host.stop()
        return

    def probe(payload: dict[str, Any]) -> None:
        for probe_id, (port_id, owner, agents) in payload.items():
            for host_id in agents:
                if host_id in members:
                    with lock:
                        members[host_id].probes[probe_id] = _Probe(port_id, owner)

    def results(payload: tuple[list[str], float]) -> dict[str, dict[str, float | None]]:
        ids, timeout = payload
        deadline = time.monotonic() + timeout
        while True:
            with lock:
                open_ = [
                    (h, p) for h in members.values() for i, p in h.probes.items()
                    if i in ids and p.done is None
                ]  # fmt: skip
            for host, p in open_:  # applied before the probe was registered
                if host.applied(p):
                    with lock:
                        p.done = p.done or time.time()
            if all(p.done is not None for _h, p in open_) or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        out: dict[str, dict[str, float | None]] = {}
        with lock:
            for host_id, host in members.items():
                for i in ids:
                    if i in host.probes:
                        out.setdefault(i, {})[host_id] = host.probes.pop(i).done
        return out

    def stats(_payload: Any) -> dict[str, Any]:
        return {
            "rss": rss_bytes(os.getpid()),
            "cpu": cpu_seconds(os.getpid()),
            "threads": threading.active_count(),
            "watches": {h: m.watches() for h, m in members.items()},
            "objects": {h: m.cache_objects() for h, m in members.items()},
        }

    def check(_payload: Any) -> dict[str, list[str]]:
        nonlocal checker
        if checker is None:
            checker = ZookeeperNsdb(hosts, root)
        return check_caches(checker, [m.agent for m in members.values()])

    handlers: dict[str, Callable[[Any], Any]] = {
        "probe": probe,
        "results": results,
        "attached": lambda _p: {h: list(m.agent.ports.attached()) for h, m in members.items()},
        "holds": lambda p: [
            h for h, m in members.items() if m.agent.cache.get(p[0], p[1]) is not None
        ],
        "stats": stats,
        "check": check,
    }
    try:
        while True:
            try:
                command, payload = conn.recv()
            except EOFError:
                return
            if command == "stop":
                break
            try:
                conn.send(("ok", handlers[command](payload)))
            except Exception as exc:
                conn.send(("error", f"{command}: {exc}\n{traceback.format_exc()}"))
    finally:
        for host in members.values():
            host.stop()
        if checker is not None:
            with contextlib.suppress(Exception):
                checker.close()
        with contextlib.suppress(Exception):
            conn.send(("ok", None))


class WorkerError(RuntimeError):
    pass


class AgentPool:
    """Processes of agents (`per_process` agents each), started together."""

    def __init__(self, hosts: str, root: str, specs: Sequence[AgentSpec], per_process: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self.specs = list(specs)
        self.groups = [self.specs[i : i + per_process] for i in range(0, len(specs), per_process)]
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        self.pids: list[int] = []
        self.start_seconds = 0.0
        self.worker_of: dict[str, int] = {}
        t0 = time.monotonic()
        try:
            for i, group in enumerate(self.groups):
                if i >= START_WAVE:  # at most START_WAVE processes starting at once
                    self.pids.append(self._reply(i - START_WAVE)["pid"])
                ours, theirs = ctx.Pipe()
                proc = ctx.Process(
                    target=worker_main, args=(theirs, hosts, root, group), daemon=True
                )
                proc.start()
                theirs.close()
                self.conns.append(ours)
                self.procs.append(proc)
                for spec in group:
                    self.worker_of[spec.host_id] = i
            for i in range(len(self.pids), len(self.groups)):
                self.pids.append(self._reply(i)["pid"])
        except BaseException:
            self.stop(wait=0.0)  # those still starting would not answer soon
            raise
        self.start_seconds = time.monotonic() - t0

    def _reply(self, i: int, timeout: float = REPLY_TIMEOUT) -> Any:
        conn = self.conns[i]
        if not conn.poll(timeout):
            raise WorkerError(f"agent process {i} did not answer within {timeout:g}s")
        status, value = conn.recv()
        if status != "ok":
            raise WorkerError(f"agent process {i}: {value}")
        return value

    def ask(self, command: str, payload: Any = None, only: set[int] | None = None) -> list[Any]:
        """Send `command` to every process (or `only` those), then gather the answers
        (the processes work in parallel); `[]` for a process not asked."""
        which = [i for i in range(len(self.conns)) if only is None or i in only]
        for i in which:
            self.conns[i].send((command, payload))
        answers: list[Any] = [None] * len(self.conns)
        for i in which:
            answers[i] = self._reply(i)
        return answers

    def workers_of(self, host_ids: Sequence[str]) -> set[int]:
        return {self.worker_of[h] for h in host_ids}

    def stop(self, wait: float = 60.0) -> None:
        """Ask every process to stop its agents; one that does not answer within `wait`
        is killed (its sessions end with it)."""
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.send(("stop", None))
        for i, proc in enumerate(self.procs):
            with contextlib.suppress(Exception):
                self.conns[i].poll(wait)
            proc.join(timeout=30 if wait else 0.1)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []
