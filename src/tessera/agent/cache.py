"""The agent's topology cache: what this host's ports can reach, kept current by watches.

This module is the loading half: which watches to hold, what to load and when, and how
NSDB deliveries become changes. What is held and the `View` the simulation reads are in
`tessera.agent.cache_state`; what must be held is `tessera.agent.reach`; `TopologyCache`
is the one object the agent talks to.

Loading is demand-driven, as in MidoNet, and never kind-wide for what grows with the
cloud: the agent watches the `host_ports` index key of its host (the ports bound here),
then, through `reach`, one object watch per object of the closure and one index watch per
parent whose children it needs (a device's ports, a router's routes and load balancers, a
bridge's DHCP subnets, the port groups of a port), plus the learned MAC/ARP table of each
device. Only hosts and tunnel zones, which grow with hypervisors, are watched whole.
The closure stops `max_depth` peer links from the host's own devices (`reach`: a
tenant's router and its networks, not the other tenants behind a shared external
network); what lies further is loaded when a simulation meets it missing and asks
(`want`), and is kept until this host's bindings change. After every delivery the
loader recomputes the closure over what it holds (`_reconcile`): keys that entered it
are subscribed, keys that left it are cancelled and their objects dropped, so the cache
grows and shrinks with bindings and links and, once quiet, holds exactly what a fresh
load of the reachable part would.

Completeness. The simulation cannot tell a router without routes from a router whose
routes are not loaded yet, so a device enters the view only once it is complete
(`reach`); once shown, it stays while a child just added is on its way (that child
simply arrives a moment later, as if it had been created later). A router held as a
front (`reach`) is shown marked as one: the simulation lets it answer ARP and drop
what is not addressed to it, and asks for the whole router before routing through it.

Threads. Watch callbacks run on the NSDB client's notification thread and are the only
writers of NSDB state; subscribing (which may wait for ZooKeeper) happens on a loader
thread, so that neither the upcall loop nor a callback ever blocks on the NSDB. A
callback of a cancelled watch that was already queued is ignored (`_Watch.active`).

Every change is reported with the tags it touches (`tags.tags_of_change`), which the
agent uses to invalidate exactly the flows that depended on it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tessera.agent.cache_state import KIND_ALIASES, CacheState, Key, View
from tessera.agent.reach import AGENT_MAX_DEPTH, DEVICE_KIND, links, reach
from tessera.agent.tags import tags_of_change
from tessera.model import Bridge, Host, Port, Router, StoredObject, TunnelZone
from tessera.nsdb import indexes, tables
from tessera.nsdb.base import IndexEvent, Nsdb, StateEvent, Subscription, WatchEvent
from tessera.nsdb.errors import NsdbError
from tessera.packet.addr import ip_from_str, mac_from_str
from tessera.packet.errors import PacketError
from tessera.simulation.tags import arp_tag, host_tag, mac_tag

__all__ = ["CacheUpdate", "Key", "TopologyCache", "View"]

log = logging.getLogger(__name__)

WHOLE_KINDS = (TunnelZone.kind,)
"""Watched whole: a zone lists its member hosts and their tunnel addresses, and grows
with hypervisors, not with ports (Host objects are loaded on demand: `agent.reach`)."""


@dataclass(frozen=True)
class CacheUpdate:
    tags: frozenset[str] = frozenset()
    loaded: frozenset[Key] = frozenset()
    bindings_changed: bool = False
    tunnels_changed: bool = False


@dataclass(eq=False)
class _Watch:
    """One subscription of the cache; `active` is False once it left the closure."""

    active: bool = True
    sub: Subscription | None = None


@dataclass
class _Plan:
    """What one reconcile subscribes and cancels (computed under the lock)."""

    objects: list[tuple[Key, _Watch]] = field(default_factory=list)
    indexes: list[tuple[indexes.IndexKey, _Watch]] = field(default_factory=list)
    tables: list[tuple[Key, _Watch]] = field(default_factory=list)
    cancel: list[_Watch] = field(default_factory=list)


class TopologyCache:
    """Loads what this host needs into a `CacheState` and reports every change."""

    def __init__(
        self,
        nsdb: Nsdb,
        host_id: str,
        notify: Callable[[CacheUpdate], None],
        max_depth: int | None = AGENT_MAX_DEPTH,
    ) -> None:
        """`max_depth`: the peer links loaded eagerly from this host's own devices
        (`reach`; None: all)."""
        self.nsdb = nsdb
        self.host_id = host_id
        self.notify = notify
        self.max_depth = max_depth
        self.state = CacheState(host_id)
        self._lock = self.state.lock
        self._objects: dict[Key, _Watch] = {}
        self._indexes: dict[indexes.IndexKey, _Watch] = {}
        self._tables: dict[Key, _Watch] = {}  # (device kind, id): its MAC or ARP table
        self._members: dict[indexes.IndexKey, set[str]] = {}  # listed keys only
        self._early: dict[indexes.IndexKey, set[str]] = {}  # members before "listed"
        self._extra: set[Key] = set()  # what a simulation asked for (roots too)
        self._waiting: set[Key] = set()  # asked for, to report in `loaded` once in
        self._subs: list[Subscription] = []  # the whole-kind watches
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._loader: threading.Thread | None = None
        self._closed = False
        self._scheduled = False

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to what every agent needs (hosts, tunnel zones, this host's
        bindings) and start the loader. Raises NsdbError when the NSDB cannot be
        reached."""
        self._loader = threading.Thread(target=self._run_loader, name="agent-cache", daemon=True)
        self._loader.start()
        for kind in WHOLE_KINDS:
            self._subs.append(self.nsdb.watch_kind(kind, self._on_whole))
        self._schedule()

    def close(self) -> None:
        self._closed = True
        self._jobs.put(None)
        if self._loader is not None:
            self._loader.join(timeout=5)
        with self._lock:
            subs, self._subs = self._subs, []
            watches = [*self._objects.values(), *self._indexes.values(), *self._tables.values()]
            for w in watches:
                w.active = False
        for sub in subs:
            sub.cancel()
        for w in watches:
            if w.sub is not None:
                w.sub.cancel()

    def idle(self) -> bool:
        """No subscription is waiting to be made (tests wait for this)."""
        return self._jobs.unfinished_tasks == 0

    def _run_loader(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                # Retried for as long as it takes (never dropped: a dropped
                # reconcile would leave what a port reaches unloaded until some
                # unrelated change asked again).
                attempt = 0
                while not self._closed:
                    try:
                        job()
                        break
                    except NsdbError as exc:
                        if attempt % 30 == 0:
                            log.warning("loading from the NSDB failed (%s); retrying", exc)
                        threading.Event().wait(min(0.1 * 2 ** min(attempt, 5), 2.0))
                        attempt += 1
            finally:
                self._jobs.task_done()

    def _schedule(self) -> None:
        """Have the loader reconcile soon (once, however many changes ask meanwhile)."""
        with self._lock:
            if self._scheduled or self._closed:
                return
            self._scheduled = True
        self._jobs.put(self._reconcile)

    # -- the closure ----------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Make the watches match the closure of what is held (loader thread)."""
        tags: set[str] = set()
        with self._lock:
            self._scheduled = False
            if self._closed:
                return
            got = reach(
                self.host_id, self._held, self._listed, self._extra, max_depth=self.max_depth
            )
            plan = _Plan()
            for key in [k for k in self._objects if k not in got.objects]:
                plan.cancel.append(self._objects.pop(key))
                old = self.state.remove(*key)
                if old is not None:
                    tags |= tags_of_change(old, None)
            for ik in [k for k in self._indexes if k not in got.indexes]:
                plan.cancel.append(self._indexes.pop(ik))
                self._members.pop(ik, None)
                self._early.pop(ik, None)
            for dk in [k for k in self._tables if k not in got.devices]:
                plan.cancel.append(self._tables.pop(dk))
                self.state.forget_tables(dk[1])
            for w in plan.cancel:
                w.active = False
            for key in sorted(got.objects - self._objects.keys()):
                plan.objects.append((key, self._objects.setdefault(key, _Watch())))
            for ik in sorted(got.indexes - self._indexes.keys()):
                plan.indexes.append((ik, self._indexes.setdefault(ik, _Watch())))
            for dk in sorted(got.devices - self._tables.keys()):
                plan.tables.append((dk, self._tables.setdefault(dk, _Watch())))
            # Shown once complete; kept while a new child is on its way (module doc).
            in_reach = {d for _, d in got.devices}
            complete = got.complete | {
                d for d in self.state.complete if d in in_reach and self._held_device(d)
            }
            newly = self.state.set_complete(complete)
            tags |= newly
            tags |= self.state.set_fronts(got.fronts)
            loaded = {k for k in self._waiting if self.state.is_loaded(k)}
            loaded |= {(self._device_kind(d), d) for d in newly}
            self._waiting -= loaded
        for w in plan.cancel:
            if w.sub is not None:
                w.sub.cancel()
        try:
            self._subscribe(plan)
        finally:
            if tags or loaded:
                self.notify(CacheUpdate(frozenset(tags), frozenset(loaded)))

    def _subscribe(self, plan: _Plan) -> None:
        """Make the planned subscriptions. One failing un-plans itself and the rest, so
        the retried reconcile makes them again."""
        nsdb = self.nsdb
        calls: list[tuple[_Watch, Callable[[], Subscription], Callable[[], None]]] = []
        for ik, w in plan.indexes:
            make = _bind(nsdb.watch_index, *ik, _guard(w, self._on_index))
            calls.append((w, make, _unplan(self._indexes, ik, w)))
        for dk, w in plan.tables:
            kind, id = dk
            if kind == Router.kind:
                table, cb = tables.arp_table(id), self._arp_event(id)
            else:
                table, cb = tables.mac_table(id), self._mac_event(id)
            make = _bind(nsdb.watch_state, table, _guard(w, cb))
            calls.append((w, make, _unplan(self._tables, dk, w)))
        try:
            self._subscribe_objects(plan.objects)
        except NsdbError:
            with self._lock:
                for _, _, undo in calls:
                    undo()
            raise
        for i, (w, make, _) in enumerate(calls):
            if not w.active:
                continue
            try:
                sub = make()
            except NsdbError:
                with self._lock:
                    for _, _, undo in calls[i:]:
                        undo()
                raise
            self._keep(w, sub)

    def _subscribe_objects(self, planned: list[tuple[Key, _Watch]]) -> None:
        """The planned object watches, made together (their first reads in one round
        trip): a tenant's objects load in one wait, not one each. A failure un-plans
        them all and the rest of the plan (`_subscribe`)."""
        with self._lock:
            todo = [(key, w) for key, w in planned if w.active]
        if not todo:
            return
        requests = [(*key, _guard(w, self._on_object)) for key, w in todo]
        try:
            subs = self.nsdb.watch_objects(requests)
        except NsdbError:
            with self._lock:
                for key, w in planned:
                    _unplan(self._objects, key, w)()
            raise
        for (_key, w), sub in zip(todo, subs, strict=True):
            self._keep(w, sub)

    def _keep(self, w: _Watch, sub: Subscription) -> None:
        """A subscription made for a planned watch: kept, or cancelled if the watch left
        the plan meanwhile (a reconcile dropped it while the NSDB answered)."""
        with self._lock:
            keep = w.active
            if keep:
                w.sub = sub
        if not keep:
            sub.cancel()

    def _held(self, kind: str, id: str) -> StoredObject | None:
        return self.state.of(kind).get(id)

    def _listed(self, index: str, key: str) -> set[str] | None:
        return self._members.get((index, key))

    def _held_device(self, id: str) -> bool:
        return any(id in self.state.of(kind) for kind in DEVICE_KIND.values())

    def _device_kind(self, id: str) -> str:
        return Router.kind if id in self.state.of(Router.kind) else Bridge.kind

    # -- demand ---------------------------------------------------------------------------

    def want(self, kind: str, id: str) -> Key | None:
        """Ask for object `id` (a simulation met it missing); idempotent, never blocks.
        Returns the key whose loading to wait for: wanting a port means wanting its
        device once the port is known."""
        kind = KIND_ALIASES.get(kind, kind)
        with self._lock:
            if kind == Port.kind:
                port = self.state.get(Port.kind, id)
                if isinstance(port, Port):
                    kind, id = DEVICE_KIND[port.type], port.device_id
            key = (kind, id)
            if self.state.is_loaded(key):
                return key
            self._waiting.add(key)
            self._extra.add(key)
        self._schedule()  # even if asked before: cheap, and at most one is queued
        return key

    # -- events (notification thread) ------------------------------------------------------

    def _on_whole(self, ev: WatchEvent) -> None:
        self._on_object(ev, None)

    def _on_index(self, ev: IndexEvent, watch: _Watch | None) -> None:
        ik = (ev.index, ev.key)
        with self._lock:
            if watch is not None and not watch.active:
                return
            if ev.change == "listed":
                self._members[ik] = self._early.pop(ik, set())
            else:
                ids = self._members.get(ik)
                if ids is None:
                    ids = self._early.setdefault(ik, set())
                if ev.change == "added":
                    ids.add(ev.id)
                else:
                    ids.discard(ev.id)
        self._schedule()

    def _on_object(self, ev: WatchEvent, watch: _Watch | None) -> None:
        key = (ev.kind, ev.id)
        loaded: set[Key] = set()
        bindings = tunnels = False
        with self._lock:
            if watch is not None and not watch.active:
                return  # left the closure after the event was sent (checked under the lock)
            change = self.state.put(ev)
            if change is None:
                return
            old, new = change
            if old is not None and new is not None and old == new:
                return
            current = new if new is not None else old
            assert current is not None
            self.state.topology_changed(current)
            tags = tags_of_change(old, new)
            if isinstance(current, Port):
                was = isinstance(old, Port) and old.host_id == self.host_id
                now = isinstance(new, Port) and new.host_id == self.host_id
                bindings = was or now
                if was and not now:
                    # A root left: what a simulation asked for may have been reached
                    # through it, so only the closure stays. A new root only adds.
                    self._extra.clear()
            elif isinstance(current, Host | TunnelZone):
                tunnels = True
                tags |= _host_tags(old, new)
            if new is not None and key in self._waiting and self.state.is_loaded(key):
                self._waiting.discard(key)
                loaded.add(key)
        moved = old is None or new is None or links(old) != links(new)
        if moved and not isinstance(current, Host | TunnelZone):
            self._schedule()
        self.notify(CacheUpdate(frozenset(tags), frozenset(loaded), bindings, tunnels))

    def _mac_event(self, bridge_id: str) -> Callable[[StateEvent, _Watch], None]:
        def callback(ev: StateEvent, watch: _Watch) -> None:
            try:  # a removal has no value (no port): the key alone says what goes
                vlan, _, mac_text = ev.key.partition("/")
                vlan_id, mac = int(vlan), mac_from_str(mac_text)
                entry = tables.decode_mac(ev.key, ev.value) if ev.value is not None else None
            except (ValueError, PacketError):
                return
            port = entry.port_id if entry is not None else None
            with self._lock:
                changed = watch.active and self.state.set_mac(bridge_id, vlan_id, mac, port)
            if changed:
                self.notify(CacheUpdate(frozenset({mac_tag(bridge_id, vlan_id, mac)})))

        return callback

    def _arp_event(self, router_id: str) -> Callable[[StateEvent, _Watch], None]:
        def callback(ev: StateEvent, watch: _Watch) -> None:
            try:
                ip = ip_from_str(ev.key)
                entry = tables.decode_arp(ev.key, ev.value) if ev.value is not None else None
                value = None if entry is None else (mac_from_str(entry.mac_addr), entry.expiry)
            except (ValueError, KeyError, PacketError):
                return
            with self._lock:
                changed = watch.active and self.state.set_arp(router_id, ip, value)
            if changed:
                self.notify(CacheUpdate(frozenset({arp_tag(router_id, ip)})))

        return callback

    # -- the state's updates and reads, for the agent ------------------------------------

    def learn_mac(self, bridge_id: str, vlan_id: int, mac: int, port_id: str) -> set[str]:
        """Record a MAC learned here (seen at once, before the NSDB echoes it); returns
        the tags it invalidates (none if known)."""
        return self.state.learn_mac(bridge_id, vlan_id, mac, port_id)

    def learn_arp(self, router_id: str, ip: int, mac: int, expiry: float) -> set[str]:
        """As `learn_mac`; not kept for a router held only as a front (its table is not
        watched here: the NSDB gets the entry, and this host reads it once it loads the
        router whole)."""
        with self._lock:
            if (Router.kind, router_id) not in self._tables:
                return set()
            return self.state.learn_arp(router_id, ip, mac, expiry)

    @property
    def generation(self) -> int:
        return self.state.generation

    def view(self) -> View:
        return self.state.view()

    def get(self, kind: str, id: str) -> Any:
        return self.state.get(kind, id)

    def is_loaded(self, key: Key) -> bool:
        """Whether the simulation can see it (a device also needs its children)."""
        return self.state.is_loaded(key)

    def bound_ports(self) -> dict[str, Port]:
        """Ports bound to this host, by id."""
        return self.state.bound_ports()

    def host_address(self, host_id: str) -> str | None:
        """The underlay address that reaches `host_id` (`CacheState.host_address`)."""
        return self.state.host_address(host_id)

    def ports_ready(self) -> bool:
        """Whether this host's bindings are known: the `host_ports` index key is listed
        and every port it names is held."""
        with self._lock:
            bound = self._members.get((indexes.HOST_PORTS.name, self.host_id))
            return bound is not None and all(p in self.state.of(Port.kind) for p in bound)

    def wanted(self) -> set[Key]:
        """The objects watched one by one (the closure, once loaded)."""
        with self._lock:
            return set(self._objects)

    def watched_indexes(self) -> set[indexes.IndexKey]:
        with self._lock:
            return set(self._indexes)

    def loaded(self) -> dict[str, int]:
        """How much is held: objects (hosts and tunnel zones too), devices shown whole,
        routers held as fronts (the agent's status reports it)."""
        with self._lock:
            return {
                "objects": sum(len(self.state.of(kind)) for kind in self.state.kinds()),
                "devices": len(self.state.complete),
                "fronts": len(self.state.fronts),
            }

    def held(self) -> dict[Key, StoredObject]:
        """Every object held, by key (tests compare it with a fresh load)."""
        with self._lock:
            return {
                (kind, id): obj
                for kind in self.state.kinds()
                for id, obj in self.state.of(kind).items()
            }


def _guard(watch: _Watch, callback: Callable[[Any, _Watch], None]) -> Callable[[Any], None]:
    """`callback` with its watch: the callback checks, under the cache's lock, that the
    watch is still in the closure (checking here, before the lock, would let an event
    that raced a reconcile put back what the reconcile had just removed)."""

    def guarded(event: Any) -> None:
        callback(event, watch)

    return guarded


def _bind(fn: Callable[..., Subscription], *args: Any) -> Callable[[], Subscription]:
    return lambda: fn(*args)


def _unplan(registry: dict[Any, _Watch], key: Any, watch: _Watch) -> Callable[[], None]:
    """Undo a planned subscription that was not made (lock held by the caller)."""

    def undo() -> None:
        watch.active = False
        if registry.get(key) is watch:
            del registry[key]

    return undo


def _host_tags(old: StoredObject | None, new: StoredObject | None) -> set[str]:
    """Hosts whose reachability a Host or TunnelZone change may alter."""
    out: set[str] = set()
    for obj in (old, new):
        if isinstance(obj, Host):
            out.add(host_tag(obj.id))
        elif isinstance(obj, TunnelZone):
            out |= {host_tag(m.host_id) for m in obj.hosts}
    return out
