"""The health monitor: a singleton cluster service that probes load balancer pool members
and writes their `status` (`ACTIVE`/`INACTIVE`) in the NSDB, where agents read it.

One node leads the service. It reads the load balancers, pools, members and health
monitors (again on every change, through watches, and every `resync_interval` seconds),
and for each router whose load balancer has a monitored pool it makes a probe port and
a probe namespace (`health_plumbing`) and runs a probing thread inside that namespace:
every member of the router's monitored pools is probed with a TCP connect every
`delay` seconds of its monitor (`health_state` decides, `health_probe` connects).

What it writes, each only when it changes:
- a member's `status`: `INACTIVE` after `max_retries` failed probes in a row, `ACTIVE`
  after one success;
- a monitored pool's `status`: `INACTIVE` while every member it has (admin up) is
  `INACTIVE` (no member can take a connection), else `ACTIVE`;
- a monitor's `status`: `ACTIVE` while it is applied (`admin_state_up`), else `INACTIVE`;
- members and pools of a pool that stops being monitored (its monitor cleared, deleted
  or disabled, while this node leads) go back to `ACTIVE`: nobody would ever mark them
  up again. A pool that was never monitored is left alone (statuses written by others,
  e.g. tests standing in for this service, stay).

Options (`[services.health-monitor]`): `host_id` (required: the host whose agent serves
this node's probe ports), `host_netns` (the namespace that agent runs in; empty: this
node's own), `netns_prefix` (of the probe namespaces this node makes), and
`resync_interval`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from tessera.cluster import health_plumbing, health_probe
from tessera.cluster.health_plumbing import PlumbingError, ProbePlumbing, ProbeSite
from tessera.cluster.health_state import ACTIVE, INACTIVE, RouterProbes, Target
from tessera.cluster.service import SINGLETON, Redundancy, ServiceContext, ServiceEnv
from tessera.datapath.ebpf.netns import enter_netns
from tessera.model import HealthMonitor, LoadBalancer, Pool, PoolMember, Port
from tessera.model.load_balancers import LbStatus
from tessera.nsdb.base import Nsdb, Subscription, WatchEvent
from tessera.nsdb.errors import NsdbError
from tessera.nsdb.store import TopologyStore

log = logging.getLogger(__name__)

NAME = "health-monitor"
DEFAULT_NETNS_PREFIX = "tshm-"
DEFAULT_RESYNC = 5.0
_WATCHED = (LoadBalancer, Pool, PoolMember, HealthMonitor)

Clock = Callable[[], float]
Writer = Callable[[str, LbStatus], None]


# -- what should be probed (from one read of the NSDB) ---------------------------------


@dataclass
class Desired:
    """One read's conclusions: targets per router, and the statuses that should be."""

    targets: dict[str, list[Target]] = field(default_factory=dict)  # router id → members
    pools: dict[str, LbStatus] = field(default_factory=dict)  # pool id → its status
    monitors: dict[str, LbStatus] = field(default_factory=dict)
    reset_members: list[str] = field(default_factory=list)  # no longer monitored, INACTIVE
    monitored: set[str] = field(default_factory=set)  # pools with a monitor in service


def desired(
    lbs: Sequence[LoadBalancer],
    pools: Sequence[Pool],
    members: Sequence[PoolMember],
    monitors: Sequence[HealthMonitor],
    was_monitored: Set[str] = frozenset(),
) -> Desired:
    """What the monitor should probe and write, from the objects as stored.
    `was_monitored` is the previous pass's `monitored`: a pool that left it (its monitor
    cleared, deleted or disabled) gets its members and itself back to `ACTIVE`. Only
    on that change, seen by this leader: the status of a pool that was never monitored
    is left to whoever wrote it."""
    out = Desired()
    by_lb = {lb.id: lb for lb in lbs}
    by_monitor = {m.id: m for m in monitors}
    members_of: dict[str, list[PoolMember]] = {}
    for member in members:
        members_of.setdefault(member.pool_id, []).append(member)
    for mon in monitors:
        wanted: LbStatus = ACTIVE if mon.admin_state_up else INACTIVE
        if mon.status != wanted:
            out.monitors[mon.id] = wanted
    for pool in pools:
        lb = by_lb.get(pool.load_balancer_id)
        monitor = by_monitor.get(pool.health_monitor_id or "")
        own = members_of.get(pool.id, [])
        if monitor is None or not monitor.admin_state_up:
            if pool.id in was_monitored:  # nobody would ever mark these up again
                out.reset_members += [m.id for m in own if m.status != ACTIVE]
                if pool.status != ACTIVE:
                    out.pools[pool.id] = ACTIVE
            continue
        out.monitored.add(pool.id)
        if lb is None or not lb.admin_state_up or not pool.admin_state_up:
            continue  # paused: statuses stay as they are until it is served again
        routed = out.targets.setdefault(lb.router_id, [])
        routed += [
            Target(
                member_id=m.id,
                address=m.address,
                port=m.protocol_port,
                delay=float(monitor.delay),
                timeout=float(monitor.timeout),
                max_retries=monitor.max_retries,
                status=m.status,
            )
            for m in sorted(own, key=lambda m: m.id)
            if m.admin_state_up
        ]
        up = [m for m in own if m.admin_state_up]
        pool_status: LbStatus = INACTIVE if up and all(m.status == INACTIVE for m in up) else ACTIVE
        if pool.status != pool_status:
            out.pools[pool.id] = pool_status
    return out


# -- one router's probing thread --------------------------------------------------------


class RouterProber:
    """Probes the members behind one router from its probe namespace, on a thread that
    lives in that namespace. `step` is one round (the unit tests call it with a fake
    clock and fake probes)."""

    def __init__(
        self,
        router_id: str,
        namespace: str | None,
        write: Writer,
        *,
        probes: RouterProbes | None = None,
        clock: Clock = time.monotonic,
        tcp: Callable[[Sequence[Target]], dict[str, bool]] = health_probe.tcp_round,
        path_works: Callable[[], bool] = lambda: True,
        probes_total: Counter | None = None,
    ) -> None:
        self.router_id = router_id
        self.namespace = namespace
        self.netns_inode = _inode(namespace)
        self.probes = probes if probes is not None else RouterProbes()
        self.write = write
        self.clock = clock
        self.tcp = tcp
        self.path_works = path_works
        self.probes_total = probes_total
        self.stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def set_targets(self, targets: Sequence[Target]) -> None:
        self.probes.set_targets(targets, self.clock())
        self._wake.set()

    def step(self) -> dict[str, LbStatus]:
        """Probe what is due; write and return the status changes."""
        now = self.clock()
        due = self.probes.due(now)
        if not due:
            return {}
        results = self.tcp(due)
        if self.stop.is_set():
            return {}  # halted meanwhile: another node may lead by now
        now = self.clock()
        if not all(results.values()) and not self.path_works():
            # The probe path itself is down (port just bound, agent restarting): a
            # failure says nothing about the member.
            self.probes.skip(results, now)
            self._count("inconclusive", len(results))
            return {}
        self._count("success", sum(results.values()))
        self._count("failure", len(results) - sum(results.values()))
        changes = self.probes.record(results, now)
        for member_id, status in changes.items():
            try:
                self.write(member_id, status)
            except NsdbError as exc:
                log.warning("cannot mark member %s %s: %s", member_id, status, exc)
                self.probes.write_failed(member_id, status)
        return changes

    def _count(self, result: str, n: int) -> None:
        if self.probes_total is not None and n:
            self.probes_total.labels(result).inc(n)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"health-{self.router_id[:8]}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        if self.namespace is not None:
            try:
                enter_netns(health_plumbing.NETNS_DIR / self.namespace)
            except OSError as exc:  # gone meanwhile: the next full pass makes it again
                log.warning("cannot probe from %s: %s", self.namespace, exc)
                return
        while not self.stop.is_set():
            try:
                self.step()
            except Exception:  # one bad round must not end the router's probing
                log.exception("probing members behind router %s", self.router_id)
                self.stop.wait(1.0)
            nxt = self.probes.next_due()
            wait = 1.0 if nxt is None else max(0.0, nxt - self.clock())
            self._wake.wait(min(wait, 1.0))
            self._wake.clear()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def halt(self, timeout: float = 5.0) -> None:
        self.stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)


def _inode(namespace: str | None) -> int | None:
    """A namespace's identity: it changes when the namespace is deleted and made again."""
    if namespace is None:
        return None
    try:
        return (health_plumbing.NETNS_DIR / namespace).stat().st_ino
    except OSError:
        return None


# -- the service ----------------------------------------------------------------------


def _option_str(options: Mapping[str, object], key: str, default: str) -> str:
    value = options.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


class HealthMonitorService:
    """The built-in singleton `health-monitor` (see the module docstring). Ready after
    its first pass over the NSDB (its probe ports made, or the reasons logged)."""

    name = NAME
    redundancy: Redundancy = SINGLETON
    ready_when_started = False

    @classmethod
    def from_env(cls, env: ServiceEnv) -> HealthMonitorService:
        host_id = _option_str(env.options, "host_id", "")
        if not host_id:
            raise ValueError(
                "host_id is required: the host whose agent serves this node's probe ports "
                "([services.health-monitor] host_id = ...)"
            )
        host_netns = _option_str(env.options, "host_netns", "") or None
        prefix = _option_str(env.options, "netns_prefix", DEFAULT_NETNS_PREFIX)
        if not prefix or "/" in prefix:
            raise ValueError("netns_prefix must be a non-empty namespace name prefix")
        interval = env.options.get("resync_interval", DEFAULT_RESYNC)
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise ValueError("resync_interval must be a positive number of seconds")
        site = ProbeSite(host_id=host_id, host_netns=host_netns, netns_prefix=prefix, node=env.node)
        return cls(env.nsdb, site, float(interval), env.registry)

    def __init__(
        self,
        nsdb: Nsdb,
        site: ProbeSite,
        resync_interval: float = DEFAULT_RESYNC,
        registry: CollectorRegistry | None = None,
        plumbing: type[ProbePlumbing] = ProbePlumbing,
        tcp: Callable[[Sequence[Target]], dict[str, bool]] = health_probe.tcp_round,
    ) -> None:
        """`plumbing` makes the probe ports and `tcp` runs a round of probes (a test
        probing without namespaces replaces both)."""
        self.tcp = tcp
        self.nsdb = nsdb
        self.store = TopologyStore(nsdb)
        self.site = site
        self.plumbing = plumbing(self.store, site)
        self.resync_interval = resync_interval
        self.probers: dict[str, RouterProber] = {}
        self._wake = threading.Event()
        self._problems: dict[str, str] = {}  # router id → last plumbing error logged
        self._monitored: set[str] = set()  # pools monitored at the last pass
        registry = registry if registry is not None else CollectorRegistry()
        self.probes_total = Counter(
            "tessera_health_monitor_probes",
            "Member probes of this node's health monitor, by result (success, failure, "
            "inconclusive: the probe path itself did not work)",
            ["result"],
            registry=registry,
        )
        self.members = Gauge(
            "tessera_health_monitor_members",
            "Members this node probes (while it leads the service), by stored status",
            ["status"],
            registry=registry,
        )

    # -- life of one leadership term --

    def run(self, ctx: ServiceContext) -> None:
        subs: list[Subscription] = []
        threading.Thread(
            target=self._wake_on, args=(ctx.stop,), name="health-stop", daemon=True
        ).start()
        try:
            self.plumbing.remove_leftovers()  # of an earlier run that was killed
            for cls in _WATCHED:
                subs.append(self.nsdb.watch_kind(cls.kind, self._on_change))
            next_full = 0.0
            while not ctx.stop.is_set():
                now = time.monotonic()
                full = now >= next_full
                self.reconcile(full=full)
                if full:
                    ctx.ready()
                    next_full = now + self.resync_interval
                self._wake.wait(max(0.0, min(next_full - time.monotonic(), self.resync_interval)))
                self._wake.clear()
                time.sleep(0.05)  # coalesce a burst of changes into one pass
        finally:
            for sub in subs:
                sub.cancel()
            self.teardown()

    def _wake_on(self, stop: threading.Event) -> None:
        stop.wait()
        self._wake.set()

    def _on_change(self, event: WatchEvent) -> None:
        self._wake.set()

    def teardown(self) -> None:
        """Stop probing and remove this node's probe namespaces; unbind its probe ports
        (best effort: stepping down may be because the NSDB session is gone)."""
        probers, self.probers = self.probers, {}
        for prober in probers.values():
            prober.halt()
        for router_id in probers:
            with contextlib.suppress(NsdbError):
                self.plumbing.unbind(router_id)
        self.plumbing.remove_leftovers()
        self.members.clear()
        self._monitored = set()

    # -- one pass --

    def reconcile(self, full: bool = True) -> Desired:
        """Read everything, write the statuses that are due, make or remove probe ports
        and probing threads. `full` also re-checks the plumbing of running routers (a
        namespace or binding someone removed)."""
        want = desired(
            self.store.list(LoadBalancer),
            self.store.list(Pool),
            self.store.list(PoolMember),
            self.store.list(HealthMonitor),
            self._monitored,
        )
        for monitor_id, status in want.monitors.items():
            self.store.set_status(HealthMonitor, monitor_id, status)
        for member_id in want.reset_members:
            if self.store.set_status(PoolMember, member_id, ACTIVE):
                log.info("member %s is no longer monitored: ACTIVE", member_id)
        for pool_id, status in want.pools.items():
            if self.store.set_status(Pool, pool_id, status):
                log.info("pool %s is %s", pool_id, status)
        self._monitored = want.monitored
        for router_id in [r for r in self.probers if r not in want.targets]:
            self._retire(router_id)
        for port in self.store.list(Port):
            if health_plumbing.is_probe_port(port) and port.device_id not in want.targets:
                self.plumbing.delete_port(port.device_id)  # a previous leader's
        counts: dict[LbStatus, int] = {ACTIVE: 0, INACTIVE: 0}
        for router_id, targets in want.targets.items():
            prober = self.probers.get(router_id)
            if prober is None or full:
                try:
                    namespace = self._plumb(router_id)
                except (PlumbingError, NsdbError) as exc:
                    if self._problems.get(router_id) != str(exc):
                        log.warning("no probe port on router %s yet: %s", router_id, exc)
                    self._problems[router_id] = str(exc)
                    continue
                self._problems.pop(router_id, None)
                if prober is not None and (
                    prober.netns_inode != _inode(namespace) or not prober.running
                ):
                    # The namespace was remade (the thread still lives in the old one),
                    # or the thread could not enter it.
                    prober.halt()
                    prober = self._start(router_id, namespace, prober.probes)
                elif prober is None:
                    prober = self._start(router_id, namespace, None)
                    log.info("probing %d member(s) behind router %s", len(targets), router_id)
            prober.set_targets(targets)
            for t in targets:
                counts[t.status] += 1
        for status, n in counts.items():
            self.members.labels(status).set(n)
        return want

    def _start(
        self, router_id: str, namespace: str | None, probes: RouterProbes | None
    ) -> RouterProber:
        prober = RouterProber(
            router_id,
            namespace,
            self._write_member,
            probes=probes,
            tcp=self.tcp,
            path_works=self.plumbing.path_works,
            probes_total=self.probes_total,
        )
        self.probers[router_id] = prober
        prober.start()
        return prober

    def _plumb(self, router_id: str) -> str | None:
        self.plumbing.ensure_port(router_id)
        bound = self.plumbing.bound_here(router_id)
        namespace, outer = self.plumbing.ensure_namespace(router_id, bound)
        if outer != bound:
            self.plumbing.bind(router_id, outer)
        return namespace

    def _retire(self, router_id: str) -> None:
        prober = self.probers.pop(router_id)
        prober.halt()
        self.plumbing.remove_namespace(router_id)
        self.plumbing.delete_port(router_id)
        log.info("router %s has no monitored pool any more: probe port removed", router_id)

    def _write_member(self, member_id: str, status: LbStatus) -> None:
        if self.store.set_status(PoolMember, member_id, status):
            log.info("member %s is %s", member_id, status)
