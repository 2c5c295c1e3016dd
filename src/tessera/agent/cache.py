"""The agent's topology cache: what this host's ports can reach, kept current by watches.

This module is the loading half: which watches to hold, what to load and when, and how
NSDB deliveries become changes. What is held and the `View` the simulation reads are in
`tessera.agent.cache_state`; `TopologyCache` is the one object the agent talks to.

Loading. Ports are watched as a whole, because a binding is a field of a port and finding
this host's bindings needs every port. Everything else is loaded on demand, as MidoNet
does: the devices of bound ports, then whatever a loaded object points at (peer ports'
devices, filter chains, their rules, jump targets, port and address groups, mirrors, a
router's routes and ARP table, a bridge's DHCP subnets and MAC table) — the closure of what bound
ports can reach, and nothing else. A simulation that still meets a missing object asks
for it with `want()` and is re-run when `CacheUpdate.loaded` names it.

Completeness. The simulation cannot tell a router without routes from a router whose
routes are not loaded yet, so a device enters the view only once its children are in:
the loader subscribes to them, then lists them once to learn which ids to wait for.

Threads. Watch callbacks run on the NSDB client's notification thread and are the only
writers of NSDB state; subscribing (which may wait for ZooKeeper) happens on a loader
thread, so that neither the upcall loop nor a callback ever blocks on the NSDB.

Every change is reported with the tags it touches (`tags.tags_of_change`), which the
agent uses to invalidate exactly the flows that depended on it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tessera.agent.cache_state import KIND_ALIASES, CacheState, Key, View
from tessera.agent.tags import tags_of_change
from tessera.model import (
    Bridge,
    Chain,
    Conditions,
    DhcpSubnet,
    Host,
    IpAddrGroup,
    LoadBalancer,
    Mirror,
    Pool,
    PoolMember,
    Port,
    PortGroup,
    Route,
    Router,
    Rule,
    StoredObject,
    TunnelZone,
    Vip,
)
from tessera.nsdb import tables
from tessera.nsdb.base import Nsdb, StateEvent, Subscription, WatchEvent
from tessera.nsdb.errors import NsdbError
from tessera.packet.addr import ip_from_str, mac_from_str
from tessera.packet.errors import PacketError
from tessera.simulation.tags import arp_tag, host_tag, mac_tag

__all__ = ["CacheUpdate", "Key", "TopologyCache", "View"]

log = logging.getLogger(__name__)

ON_DEMAND = frozenset(
    {Bridge.kind, Router.kind, Chain.kind, Rule.kind, PortGroup.kind, IpAddrGroup.kind}
    | {Mirror.kind}
)
DEVICE_KIND = {"Bridge": Bridge.kind, "Router": Router.kind}
_CHILDREN = {Route.kind: "router_id", DhcpSubnet.kind: "bridge_id"}
LB_KINDS = (LoadBalancer.kind, Vip.kind, Pool.kind, PoolMember.kind)
"""Watched whole, like ports: a snapshot keeps the load balancers of its routers."""


@dataclass(frozen=True)
class CacheUpdate:
    tags: frozenset[str] = frozenset()
    loaded: frozenset[Key] = frozenset()
    bindings_changed: bool = False
    tunnels_changed: bool = False


class TopologyCache:
    """Loads what this host needs into a `CacheState` and reports every change."""

    def __init__(self, nsdb: Nsdb, host_id: str, notify: Callable[[CacheUpdate], None]) -> None:
        self.nsdb = nsdb
        self.host_id = host_id
        self.notify = notify
        self.state = CacheState(host_id)
        self._lock = self.state.lock
        self._wanted: set[Key] = set()
        self._subs: list[Subscription] = []
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._loader: threading.Thread | None = None
        self._closed = False
        self._initial_ports: set[str] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to what every agent needs (ports, hosts, tunnel zones, port groups) and start
        the loader. Raises NsdbError when the NSDB cannot be reached."""
        self._loader = threading.Thread(target=self._run_loader, name="agent-cache", daemon=True)
        self._loader.start()
        # Port groups too: a stateful group keys its members' connections (whatever
        # device they are on), so every host must know it even if no rule names it.
        for kind in (Port.kind, Host.kind, TunnelZone.kind, PortGroup.kind):
            self._subs.append(self.nsdb.watch_kind(kind, self._on_object))
        # Load balancers whole as well (`LB_KINDS`): few objects, and a VIP's first packet
        # must find its router's pools and members without waiting for a load.
        for kind in LB_KINDS:
            self._subs.append(self.nsdb.watch_kind(kind, self._on_object))
        # What the ports watch is about to deliver: until it has, this host's bindings
        # are not known, and nothing may be judged stale for lack of one.
        listed = {s.value.id for s in self.nsdb.list(Port.kind)}
        with self._lock:
            self._initial_ports = listed - set(self.state.of(Port.kind))

    def close(self) -> None:
        self._closed = True
        self._jobs.put(None)
        if self._loader is not None:
            self._loader.join(timeout=5)
        with self._lock:
            subs, self._subs = self._subs, []
        for sub in subs:
            sub.cancel()

    def idle(self) -> bool:
        """No subscription is waiting to be made (tests wait for this)."""
        return self._jobs.unfinished_tasks == 0

    def _run_loader(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                for attempt in range(30):
                    if self._closed:
                        return
                    try:
                        job()
                        break
                    except NsdbError as exc:
                        log.warning("loading from the NSDB failed (%s); retrying", exc)
                        threading.Event().wait(min(0.1 * 2**attempt, 2.0))
            finally:
                self._jobs.task_done()

    def _subscribe(self, make: Callable[[], Subscription]) -> None:
        def job() -> None:
            if self._closed:
                return
            sub = make()
            with self._lock:
                if self._closed:
                    sub.cancel()
                else:
                    self._subs.append(sub)

        self._jobs.put(job)

    # -- demand ---------------------------------------------------------------------------

    def want(self, kind: str, id: str) -> Key | None:
        """Load (and keep watching) object `id`; idempotent, never blocks. Returns the
        key whose loading to wait for: a port is always loaded, so wanting one means
        wanting its device (None while the port itself is unknown)."""
        kind = KIND_ALIASES.get(kind, kind)
        if kind == Port.kind:
            port = self.state.get(Port.kind, id)
            if isinstance(port, Port):
                return self.want(DEVICE_KIND[port.type], port.device_id)
            return None
        if kind not in ON_DEMAND:
            return None
        key = (kind, id)
        with self._lock:
            if key in self._wanted:
                return key
            self._wanted.add(key)
        self._subscribe(lambda: self.nsdb.watch_object(kind, id, self._on_object))
        return key

    def _want_children(self, device: StoredObject) -> None:
        children = self.state.children
        if device.id in children:
            return
        children[device.id] = None
        did = device.id
        if isinstance(device, Router):
            child_kind, table, state_cb = Route.kind, tables.arp_table(did), self._arp_event(did)
        else:
            child_kind, table, state_cb = (
                DhcpSubnet.kind,
                tables.mac_table(did),
                self._mac_event(did),
            )
        attr = _CHILDREN[child_kind]

        def job() -> None:
            if self._closed:
                return
            subs = [
                self.nsdb.watch_kind(child_kind, self._filtered(attr, did)),
                self.nsdb.watch_state(table, state_cb),
            ]
            listed = {
                (child_kind, s.value.id)
                for s in self.nsdb.list(child_kind)
                if getattr(s.value, attr) == did
            }
            with self._lock:
                self._subs.extend(subs)
                done = self.state.device_listed(did, listed)
            if done:
                self._device_complete(device)

        self._jobs.put(job)

    def _device_complete(self, device: StoredObject) -> None:
        log.debug("%s %s loaded with its children", device.kind, device.id)
        self.notify(CacheUpdate(frozenset({device.id}), frozenset({(device.kind, device.id)})))

    def _filtered(self, attr: str, parent: str) -> Callable[[WatchEvent], None]:
        """A callback that takes only the children of `parent` from a kind-wide watch."""

        def callback(ev: WatchEvent) -> None:
            if ev.value is not None:
                if getattr(ev.value, attr, None) == parent:
                    self._on_object(ev)
                return
            old = self.state.get(ev.kind, ev.id)
            if old is not None and getattr(old, attr, None) == parent:
                self._on_object(ev)

        return callback

    def _closure(self, obj: StoredObject) -> None:
        """Want what a newly relevant object points at (lock held)."""
        if isinstance(obj, Port | Bridge | Router):
            # Mirrors, but not their target ports' devices: a copy goes straight out.
            for mirror in (*obj.inbound_mirror_ids, *obj.outbound_mirror_ids):
                self.want(Mirror.kind, mirror)
        if isinstance(obj, Port):
            self.want(DEVICE_KIND[obj.type], obj.device_id)
            for chain in (obj.inbound_filter_id, obj.outbound_filter_id):
                if chain:
                    self.want(Chain.kind, chain)
            if obj.peer_id:
                self.want(Port.kind, obj.peer_id)
        elif isinstance(obj, Bridge | Router):
            for chain in (obj.inbound_filter_id, obj.outbound_filter_id):
                if chain:
                    self.want(Chain.kind, chain)
            self._want_children(obj)
            for port in list(self.state.of(Port.kind).values()):
                if isinstance(port, Port) and port.device_id == obj.id:
                    self._closure(port)
        elif isinstance(obj, Chain):
            for rule in obj.rule_ids:
                self.want(Rule.kind, rule)
        elif isinstance(obj, Rule):
            if obj.jump_chain_id:
                self.want(Chain.kind, obj.jump_chain_id)
            self._want_groups(obj)
        elif isinstance(obj, Mirror):
            for cond in obj.conditions:
                self._want_groups(cond)

    def _want_groups(self, cond: Conditions) -> None:
        """The port and address groups a rule's or a mirror's conditions name."""
        if cond.port_group:
            self.want(PortGroup.kind, cond.port_group)
        for group in (cond.ip_addr_group_src, cond.ip_addr_group_dst):
            if group:
                self.want(IpAddrGroup.kind, group)

    def _relevant_port(self, port: Port) -> bool:
        return port.host_id == self.host_id or port.device_id in self.state.of(
            DEVICE_KIND[port.type]
        )

    # -- events (notification thread) ------------------------------------------------------

    def _on_object(self, ev: WatchEvent) -> None:
        key = (ev.kind, ev.id)
        loaded: set[Key] = set()
        completed: list[StoredObject] = []
        bindings = tunnels = False
        with self._lock:
            change = self.state.put(ev)
            if change is None:
                return
            old, new = change
            if self._initial_ports and ev.kind == Port.kind:
                self._initial_ports.discard(ev.id)
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
            elif isinstance(current, Host | TunnelZone):
                tunnels = True
                tags |= _host_tags(old, new)
            elif isinstance(current, Route | DhcpSubnet):
                parent = getattr(current, _CHILDREN[current.kind])
                waiting = self.state.children.get(parent)
                if waiting and key in waiting:
                    waiting.discard(key)
                    if not waiting:
                        device = self.state.of(
                            Router.kind if current.kind == Route.kind else Bridge.kind
                        ).get(parent)
                        if device is not None:
                            completed.append(device)
            if old is None and new is not None and (ev.kind, ev.id) in self._wanted:
                if isinstance(new, Bridge | Router):
                    if self.state.children.get(new.id) == set():
                        loaded.add(key)
                else:
                    loaded.add(key)
            if new is not None and (not isinstance(new, Port) or self._relevant_port(new)):
                self._closure(new)
        for device in completed:
            self._device_complete(device)
        self.notify(CacheUpdate(frozenset(tags), frozenset(loaded), bindings, tunnels))

    def _mac_event(self, bridge_id: str) -> Callable[[StateEvent], None]:
        def callback(ev: StateEvent) -> None:
            try:  # a removal has no value (no port): the key alone says what goes
                vlan, _, mac_text = ev.key.partition("/")
                vlan_id, mac = int(vlan), mac_from_str(mac_text)
                entry = tables.decode_mac(ev.key, ev.value) if ev.value is not None else None
            except (ValueError, PacketError):
                return
            port = entry.port_id if entry is not None else None
            if self.state.set_mac(bridge_id, vlan_id, mac, port):
                self.notify(CacheUpdate(frozenset({mac_tag(bridge_id, vlan_id, mac)})))

        return callback

    def _arp_event(self, router_id: str) -> Callable[[StateEvent], None]:
        def callback(ev: StateEvent) -> None:
            try:
                ip = ip_from_str(ev.key)
                entry = tables.decode_arp(ev.key, ev.value) if ev.value is not None else None
                value = None if entry is None else (mac_from_str(entry.mac_addr), entry.expiry)
            except (ValueError, KeyError, PacketError):
                return
            if self.state.set_arp(router_id, ip, value):
                self.notify(CacheUpdate(frozenset({arp_tag(router_id, ip)})))

        return callback

    # -- the state's updates and reads, for the agent ------------------------------------

    def learn_mac(self, bridge_id: str, vlan_id: int, mac: int, port_id: str) -> set[str]:
        """Record a MAC learned here (seen at once, before the NSDB echoes it); returns
        the tags it invalidates (none if known)."""
        return self.state.learn_mac(bridge_id, vlan_id, mac, port_id)

    def learn_arp(self, router_id: str, ip: int, mac: int, expiry: float) -> set[str]:
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
        """Whether every port that existed at start has been delivered: only then are
        this host's bindings known."""
        with self._lock:
            return self._initial_ports is not None and not self._initial_ports

    def wanted(self) -> set[Key]:
        with self._lock:
            return set(self._wanted)


def _host_tags(old: StoredObject | None, new: StoredObject | None) -> set[str]:
    """Hosts whose reachability a Host or TunnelZone change may alter."""
    out: set[str] = set()
    for obj in (old, new):
        if isinstance(obj, Host):
            out.add(host_tag(obj.id))
        elif isinstance(obj, TunnelZone):
            out |= {host_tag(m.host_id) for m in obj.hosts}
    return out
