"""The agent: one upcall thread driving cache events, misses and timers.

Everything that changes flows runs on that one thread — misses, invalidations, expiry,
adoption — so the desired table and the datapath have a single writer and no lock is
held across a simulation. Other threads only hand it work: NSDB watch callbacks queue
`CacheUpdate`s (and wake the thread), the loader subscribes, the writer writes learned
state, the control socket reads copies.

The loop: cache events, then the misses that are queued (waiting up to a tick for the
first), with the queued events applied again between any two misses, then timers, then
one step of the sweep in progress (expiry and repair, read and judged a part at a time).
A flood of misses thus keeps a rule change waiting for one miss, a large table keeps
misses waiting for one step of its sweep, and the other threads get the GIL within
`SWITCH_INTERVAL` (see `run_forever`).

Start-up order matters for a restart: the datapath is opened first (adopting the flows
and ports a previous agent left), then the host registers and the cache starts; adopted
flows keep forwarding until each is re-simulated and kept, replaced or removed.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tessera.agent import registration
from tessera.agent.cache import CacheUpdate, TopologyCache
from tessera.agent.control import ControlServer
from tessera.agent.flowstate import persist
from tessera.agent.flowstate.durable import DurableFlowState
from tessera.agent.flowstate.service import FlowStateService
from tessera.agent.flowtable import FlowTable
from tessera.agent.kernel_ct import KernelConn, KernelConntrack
from tessera.agent.lifecycle import SWEEP_STEP, Adopter, Sweep
from tessera.agent.lograte import RateLimitedLog
from tessera.agent.metrics import AgentMetrics
from tessera.agent.ports import PortManager
from tessera.agent.realized import RealizationReporter
from tessera.agent.translate import PortLocation
from tessera.agent.upcall import Simulator, UpcallHandler
from tessera.agent.writer import StateWriter
from tessera.datapath.base import (
    CtTuple,
    Datapath,
    DatapathError,
    InstalledFlow,
    Match,
    action_to_json,
    stepped,
)
from tessera.model import PortGroup, TunnelZone
from tessera.nsdb.base import Nsdb
from tessera.nsdb.store.topology import TopologyStore
from tessera.simulation.flowstate import FlowStateEntry
from tessera.simulation.topology import Snapshot

log = logging.getLogger(__name__)

TICK = 0.2  # timers (held packets, adoption, pending ports) run this often
SWEEP = 2.0  # expiry and reconciliation against the datapath, at most this often
# A pass reads every flow (and the datapath's connections) on the thread that answers
# misses: ~5 us a flow, 0.15 s at 30,000. Passes are spaced so that they take at most
# this share of the thread's CPU time (a flood of new flows measured 10-14 % at every 2 s), but
# never further apart than SWEEP_MAX: expiry and repair are that much later at worst.
SWEEP_SHARE = 0.05
SWEEP_MAX = 15.0
CT_FULL = 0.9  # the datapath's connection table this full is worth a warning
CT_DELETE_STEP = 4096  # idle datapath connections one sweep step deletes (4 batch calls)
# After a topology change, the simulation's snapshot is compiled once no further change
# has come for this long: a burst of changes compiles once, not once per change, and the
# next miss does not pay for it (a miss that comes first compiles, as it always could).
SETTLE = 0.001
SWITCH_INTERVAL = 0.0005  # seconds: see run_forever


@functools.lru_cache(maxsize=4096)
def _ip_int(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


_DONE = object()  # the sweep pass has no step left


def sweep_interval(cost: float) -> float:
    """Seconds from one sweep's start to the next's, for a pass that took `cost`
    seconds of the miss thread: `SWEEP`, or longer so that passes take at most
    `SWEEP_SHARE` of the thread, up to `SWEEP_MAX`."""
    return min(SWEEP_MAX, max(SWEEP, cost / SWEEP_SHARE))


class Agent:
    def __init__(
        self,
        host_id: str,
        nsdb: Nsdb,
        datapath: Datapath,
        *,
        name: str = "",
        underlay_ip: str | None = None,
        tunnel_zone: str | None = None,
        simulator: Simulator | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        control_dir: Path | None = None,
        metrics: AgentMetrics | None = None,
        write_state: bool = True,
        state_dir: Path | None = None,
        flowstate_port: int | None = None,
        flowstate_durable: DurableFlowState | None = None,
        tunnel_commit: bool = True,
    ) -> None:
        self.host_id = host_id
        self.name = name
        self.nsdb = nsdb
        self.store = TopologyStore(nsdb)
        self.dp = datapath
        self.underlay_ip = underlay_ip
        self.tunnel_zone = tunnel_zone
        self.clock = clock
        self.wall_clock = wall_clock
        self.metrics = metrics or AgentMetrics()
        self.flows = FlowTable()
        # Read when scraped, not written per flow: the miss path does not pay for it.
        self.metrics.flows.set_function(self.flows.__len__)
        self.ports = PortManager(datapath)
        # Filled by the cache's threads, drained here; deque appends/pops are atomic.
        self._events: collections.deque[CacheUpdate] = collections.deque()
        self.cache = TopologyCache(nsdb, host_id, self._on_cache)
        # `--wait`: reports which changes are in effect here (docs/wait.md).
        self.realized = RealizationReporter(
            nsdb, host_id, self.cache.idle, datapath.wakeup, wall_clock
        )
        # -- connection state (docs/agent.md "Connection state") --
        self.flowstate = FlowStateService(
            host_id, nsdb, self.metrics, self._tunnel_zones, underlay_ip=underlay_ip,
            port=flowstate_port, clock=clock, wall_clock=wall_clock,
            state_file=persist.state_file(state_dir, host_id) if state_dir else None,
            durable=flowstate_durable,
        )  # fmt: skip
        self.flowstate.on_received = self.dp.wakeup
        # Connections tracked by the datapath itself (docs/agent.md "Connection state").
        self.kernel_ct = KernelConntrack(datapath)
        table = self.flowstate.table
        table.mirror = self.kernel_ct.mirror
        removed = table.on_remove

        def on_remove(entry: FlowStateEntry) -> None:
            if removed is not None:
                removed(entry)
            self.kernel_ct.removed(entry)

        table.on_remove = on_remove
        if simulator is None:
            from tessera.agent.simulate import SnapshotSimulator

            simulator = SnapshotSimulator(self.cache, self.flowstate.view, self.flowstate.snat)
            simulator.on_compile = self._sync_zones
        self.simulator = simulator
        self.writer = StateWriter(nsdb) if write_state else None
        self.upcall = UpcallHandler(
            datapath, self.flows, self.ports, self.cache, simulator, self.writer, self.metrics,
            self.locate, clock, wall_clock, flowstate=self.flowstate,
            group_ports=self._group_ports, kernel_ct=self.kernel_ct, tunnel_commit=tunnel_commit,
        )  # fmt: skip
        self.adopter = Adopter(
            datapath, self.flows, self.ports, self.cache, simulator, self.upcall, self.metrics,
            clock,
        )  # fmt: skip
        handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "flows": self.flows_report, "status": self.status, "conntrack": self.conntrack_report
        }  # fmt: skip
        self.control = (
            ControlServer(host_id, name, handlers, control_dir) if control_dir is not None else None
        )
        self._next_tick = 0.0
        self._stateful_peers: tuple[int, dict[str, list[str]]] = (-1, {})
        self._next_sweep = 0.0
        # The sweep in progress, a step per loop iteration (`_sweep_pass`); when it
        # began, and the CPU time its steps took so far (which spaces the next one).
        self._sweep: Iterator[None] | None = None
        self._sweep_began = 0.0
        self._sweep_cost = 0.0
        self._log = RateLimitedLog(log, self.clock)
        self._prepare_at: float | None = None
        self._stale_ports_checked = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = False

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Open the datapath, register, start watching. Raises on what cannot work
        (the message says what)."""
        self.dp.start()
        self.ports.adopt()
        self.kernel_ct.adopt()
        self.adopter.adopt()
        registration.register(self.store, self.host_id, self.name, self.underlay_ip)
        if self.tunnel_zone is not None and self.underlay_ip is not None:
            registration.join_tunnel_zone(
                self.store, self.tunnel_zone, self.host_id, self.underlay_ip
            )
        if self.writer is not None:
            self.writer.start()
        self.flowstate.start()
        self.cache.start()
        self.realized.start()
        if self.control is not None:
            self.control.start()
        self.started = True
        now = self.clock()
        self._next_tick = now + TICK
        self._next_sweep = now + SWEEP

    def run_in_thread(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="agent-upcall", daemon=True)
        self._thread.start()

    def run_forever(self) -> None:
        # A flood of misses keeps this thread busy in Python; every other thread of the
        # agent (the NSDB's watches, the cache's loader, flow state) then gets the GIL
        # only when the interpreter forces a switch, after `sys.getswitchinterval()`, and
        # a topology change crosses several of them before it reaches this loop: at the
        # default 5 ms, 11-54 ms from the change to the invalidation, measured under a
        # flood (tests/unit/agent/test_agent_miss_flood.py). Process-wide: only ever
        # lowered, and put back when the loop ends.
        before = sys.getswitchinterval()
        if before > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            while not self._stop.is_set():
                try:
                    self.run_once(TICK)
                except Exception:  # one bad packet or event must not stop forwarding
                    log.exception("agent loop iteration failed")
        finally:
            sys.setswitchinterval(before)

    def stop(self, unregister: bool = True) -> None:
        """Stop deciding; the datapath stays as it is and forwards (programs, devices,
        pinned flows) for the next agent to adopt — only `setup.cleanup_host` removes
        it. The host reads dead at once; the NSDB session is the caller's, and
        `tessera agent` leaves it to expire so that what this host learned stays."""
        self._stop.set()
        self.dp.wakeup()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.control is not None:
            self.control.stop()
        self.flowstate.stop()
        self.realized.stop()
        self.cache.close()
        if self.writer is not None:
            self.writer.stop()
        if unregister and self.started:
            registration.unregister(self.store, self.host_id)
        self.dp.close()
        self.started = False

    # -- the loop -----------------------------------------------------------------------------

    def _on_cache(self, update: CacheUpdate) -> None:
        self._events.append(update)
        self.dp.wakeup()

    def run_once(self, timeout: float = TICK) -> None:
        """One iteration: cache events, then misses (waiting up to `timeout`), timers."""
        flush = self.realized.flush_token  # read before draining: what it asks is drained
        self.process_events()
        self.realized.flushed(flush)
        if self._prepare_at is not None:
            timeout = min(timeout, max(0.0, self._prepare_at - self.clock()))
        if self._sweep is not None:
            timeout = 0.0  # a sweep in progress: its next step after whatever is queued
        handled = self.upcall.handle(self.dp.recv_misses(timeout), self._between_misses)
        self._between_misses()
        now = self.clock()
        if self._prepare_at is not None and now >= self._prepare_at and not handled:
            self._prepare_at = None
            self.simulator.prepare()
        if now >= self._next_tick:
            self._next_tick = now + TICK
            self.upcall.tick()
            if self.ports.pending():
                self._sync_ports()
            if not self.adopter.done:
                self.adopter.step(self.wall_clock())
            if not self._stale_ports_checked and self.adopter.done and self.cache.ports_ready():
                # Bindings are known: datapath ports a previous agent attached and no
                # binding claims any more can go.
                self._sync_ports()
                self.ports.detach_stale()
                self._stale_ports_checked = True
        if self._sweep is None and now >= self._next_sweep:
            self._next_sweep = now + SWEEP
            self._sweep_began, self._sweep_cost = now, 0.0
            self._sweep = self._sweep_pass(now)
        if self._sweep is None:
            return
        started = time.thread_time()  # CPU time: not others' turns
        try:
            done = next(self._sweep, _DONE) is _DONE
        except Exception:
            done = True  # dropped, not retried in a loop: the next one is due
            raise
        finally:
            self._sweep_cost += time.thread_time() - started
            if done:
                self._sweep = None
                self._next_sweep = self._sweep_began + sweep_interval(self._sweep_cost)
                self.metrics.sweep_seconds.set(self._sweep_cost)

    def _sweep_pass(self, now: float) -> Iterator[None]:
        """One sweep, a step per `next` (the agent's loop: one per iteration, misses
        between): the datapath's flows read a map batch at a time, then the desired
        flows judged against them `SWEEP_STEP` at a time (`lifecycle.Sweep`), then the
        datapath's connections read the same way, and the connection state's expiry.
        A small table is swept whole in one step. At 60,000 flows the read alone was
        0.46 s of CPU in one piece; now no step is more than a few milliseconds."""
        # One dump serves both sweeps: with a flow per connection, reading every flow is
        # the sweep's main cost.
        installed = yield from stepped(self.dp.dump_in_steps())
        if installed is None:
            log.warning("the datapath's dump ended without its flows; sweep skipped")
            return
        # A flow installed since the read began may be missing from it without being
        # lost: the pass does not repair it (`read_from`).
        pass_ = Sweep(self.dp, self.flows, now, self.metrics, self.adopter.holds,
                      dict(installed), read_from=now)  # fmt: skip
        while not pass_.step(SWEEP_STEP):
            yield
        conns = yield from stepped(self.dp.ct_entries_in_steps())
        now = self.clock()
        self._sweep_flowstate(now, installed, conns or {})
        # Connections only the datapath holds, idle: after a burst, a table's worth
        # (65,536) at once, deleted a batch per step.
        capacity = self.dp.ct_capacity()
        idle = self.kernel_ct.idle(now, conns or {}, capacity)
        self._check_ct_capacity(self.kernel_ct.answered, capacity)
        self.metrics.datapath_connections_unanswered.set(self.kernel_ct.unanswered)
        for i in range(0, len(idle), CT_DELETE_STEP):
            if i:
                yield
            self.kernel_ct.delete(idle[i : i + CT_DELETE_STEP])

    def _between_misses(self) -> None:
        """What must not wait behind a batch of misses: topology changes (invalidations,
        loaded objects) and the flows a peer's flow state changes. Two cheap checks
        when nothing came, as is usual between two misses."""
        self.process_events()
        received = self.flowstate.drain_tags()  # state peers sent: what it changes
        received |= self.flowstate.settle_released(self._flow_last_used)
        if received:
            self.upcall.invalidate(received)

    def _flow_last_used(self, match: object) -> float | None:
        """When a flow carrying a flow-state entry was last used, read from the datapath
        now (the sweep reads its dump instead). A connection in the datapath's own table
        (`KernelConn`) counts as in use: one lookup is not offered, and keeping a copy
        until the sweep is the old behaviour."""
        if isinstance(match, KernelConn):
            return math.inf
        if not isinstance(match, Match):
            return None
        try:
            stats = self.dp.stats(match)
        except (DatapathError, OSError):
            return math.inf
        return stats.last_used if stats is not None else None

    def process_events(self) -> int:
        """Apply queued cache updates; returns how many there were."""
        events = self._events
        if not events:
            return 0  # the common case, twice per loop: no exception, no lock
        tags: set[str] = set()
        loaded: set[tuple[str, str]] = set()
        bindings = False
        n = 0
        while events:  # this thread is the only consumer
            update = events.popleft()
            n += 1
            tags |= update.tags
            loaded |= update.loaded
            bindings = bindings or update.bindings_changed
        if not n:
            return 0
        self._prepare_at = self.clock() + SETTLE
        if bindings:
            tags |= self._sync_ports()
        if tags:
            self.upcall.invalidate(tags)
            self.upcall.on_tags(tags)
        if loaded:
            self.upcall.on_loaded(loaded)
        return n

    # -- connection state -----------------------------------------------------------------

    def _tunnel_zones(self) -> list[TunnelZone]:
        with self.cache.state.lock:
            zones = self.cache.state.of(TunnelZone.kind).values()
            return [z for z in zones if isinstance(z, TunnelZone)]

    def _group_ports(self, id: str) -> list[str]:
        """The members of port group `id` (a stateful group's id is its connections'
        device) or, for a port, of the stateful groups it is in: as in MidoNet, a
        connection's state goes to the peers of its ingress and egress ports' groups,
        so that a reply entering another member (ECMP uplinks) finds the router's NAT
        bindings too, though they are keyed by the router, not by the group."""
        group = self.cache.get("port_groups", id)
        if group is not None:
            return list(getattr(group, "port_ids", None) or [])
        generation = self.cache.view().topology_generation
        if self._stateful_peers[0] != generation:  # rebuilt once per topology change
            peers: dict[str, list[str]] = {}
            with self.cache.state.lock:
                groups = list(self.cache.state.of(PortGroup.kind).values())
            for g in groups:
                if isinstance(g, PortGroup) and g.stateful:
                    for port_id in g.port_ids:
                        peers.setdefault(port_id, []).extend(g.port_ids)
            self._stateful_peers = (generation, peers)
        return self._stateful_peers[1].get(id, [])

    def _sweep_flowstate(
        self,
        now: float,
        installed: dict[Match, InstalledFlow],
        conns: dict[CtTuple, tuple[float, int]],
    ) -> None:
        """Connections expire by their kernel flows' last use, read like flows' own, and
        sooner once those flows saw a TCP FIN or RST. `conns`: the datapath's own
        table (`Datapath.ct_entries`), read once per sweep."""

        def last_used(match: object) -> float | None:
            if isinstance(match, KernelConn):
                conn = conns.get(match.conn)
                return conn[0] if conn is not None else None
            inst = installed.get(match) if isinstance(match, Match) else None
            return inst.stats.last_used if inst is not None else None

        def tcp_flags(match: object) -> int:
            if isinstance(match, KernelConn):
                conn = conns.get(match.conn)
                return conn[1] if conn is not None else 0
            inst = installed.get(match) if isinstance(match, Match) else None
            return inst.stats.tcp_flags if inst is not None else 0

        tags = self.flowstate.sweep(now, last_used, tcp_flags)
        if tags:
            self.upcall.invalidate(tags)

    def _check_ct_capacity(self, held: int, capacity: int) -> None:
        """A full connection table evicts silently (the least recently used entry goes,
        and that connection's next packet is "new": a firewall that lets only replies
        in drops it), so say so: the gauges, and a warning at most once a minute while
        the table of answered connections is at least `CT_FULL` full (unanswered ones
        have their own, which a burst may fill: they are the ones to go)."""
        self.metrics.datapath_connections.set(held)
        self.metrics.datapath_connections_capacity.set(capacity)
        if capacity and held >= CT_FULL * capacity:
            self._log.warning(
                ("conntrack", "full"),
                "the datapath's connection table is %d%% full (%d of %d): the connections "
                "used longest ago are evicted, and their next packet is new again",
                100 * held // capacity, held, capacity,
            )  # fmt: skip

    def conntrack_report(self, request: dict[str, Any] | None = None) -> dict[str, Any]:
        """`tessera conntrack`: the agent's entries, then the connections the datapath
        committed itself."""
        report = self.flowstate.report(request)
        try:
            conns = self.dp.ct_entries()
        except (DatapathError, OSError) as exc:
            log.warning("cannot read the datapath's connections: %s", exc)
            return report
        report["entries"].extend(self.kernel_ct.report(self.clock(), conns))
        return report

    def _sync_zones(self, snap: Snapshot) -> None:
        """Give local ports the conntrack zones of their devices in `snap` (a topology
        just compiled, before any simulation reads it), and hand the datapath the
        connections the agent holds for devices that just got one."""
        numbers = {port_id: a.number for port_id, a in self.ports.attached().items()}
        new = self.kernel_ct.sync(snap, numbers)
        if new:
            self.flowstate.table.mirror_devices(new)

    def _sync_ports(self) -> set[str]:
        changed = self.ports.sync(self.cache.bound_ports())
        self.metrics.ports.set(len(self.ports.attached()))
        snapshot = getattr(self.simulator, "snapshot", None)
        if changed and snapshot is not None:
            self._sync_zones(snapshot())
        return changed

    def locate(self, port_id: str) -> PortLocation | None:
        number = self.ports.number_of(port_id)
        if number is not None:
            return PortLocation(local=number)
        port = self.cache.get("ports", port_id)
        host_id = getattr(port, "host_id", None)
        if port is None or host_id is None or host_id == self.host_id:
            return None
        address = self.cache.host_address(host_id)
        if address is None:
            return PortLocation(host_id=host_id)
        return PortLocation(vni=port.tunnel_key, remote_ip=_ip_int(address), host_id=host_id)

    # -- reports (control socket thread) ------------------------------------------------------

    def flows_report(self, _request: dict[str, Any] | None = None) -> dict[str, Any]:
        installed = self.dp.dump()
        out = []
        for d in self.flows.snapshot():
            inst = installed.get(d.match)
            stats = inst.stats if inst is not None else None
            out.append(
                {
                    "match": d.match.fields(),
                    "actions": [action_to_json(a) for a in d.flow.actions],
                    "packets": stats.packets if stats else 0,
                    "bytes": stats.bytes if stats else 0,
                    "last_used": stats.last_used if stats else None,
                    "installed": inst is not None,
                    "tags": sorted(d.tags),
                    "expiry": d.expiry,
                    "created": d.created,
                }
            )
        for match, inst in installed.items():
            if self.adopter.holds(match):
                out.append(
                    {
                        "match": match.fields(),
                        "actions": [action_to_json(a) for a in inst.flow.actions],
                        "packets": inst.stats.packets,
                        "bytes": inst.stats.bytes,
                        "last_used": inst.stats.last_used,
                        "installed": True,
                        "tags": [],
                        "expiry": "adopted",
                        "created": None,
                    }
                )
        return {
            "host_id": self.host_id,
            "name": self.name,
            "datapath": self.dp.kind,
            "now": self.clock(),
            "flows": out,
        }

    def status(self, _request: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "host_id": self.host_id,
            "name": self.name,
            "datapath": self.dp.kind,
            "ports": {
                a.port_id: {"number": a.number, "interface": a.ifname}
                for a in self.ports.attached().values()
            },
            "pending_ports": self.ports.pending(),
            "flows": len(self.flows),
            "misses": int(self.metrics.misses._value.get()),
            "parked": len(self.upcall.parked),
            "adopting": len(self.adopter.pending),
            "topology": self.cache.loaded(),
        }
