"""The agent's topology cache: what this host's ports can reach, kept current by watches.

Loading. Ports are watched as a whole, because a binding is a field of a port and finding
this host's bindings needs every port. Everything else is loaded on demand, as MidoNet
does: the devices of bound ports, then whatever a loaded object points at (peer ports'
devices, filter chains, their rules, jump targets, port and address groups, a router's
routes and ARP table, a bridge's DHCP subnets and MAC table) — the closure of what bound
ports can reach, and nothing else. A simulation that still meets a missing object asks
for it with `want()` and is re-run when `CacheUpdate.loaded` names it.

Completeness. The simulation cannot tell a router without routes from a router whose
routes are not loaded yet, so a device enters the `View` only once its children are in:
the loader subscribes to them, then lists them once to learn which ids to wait for.

Threads. Watch callbacks run on the NSDB client's notification thread and are the only
writers; subscribing (which may wait for ZooKeeper) happens on a loader thread, so that
neither the upcall loop nor a callback ever blocks on the NSDB. Readers take a `View`, an
immutable copy rebuilt only after something changed.

Every change is reported with the tags it touches (`tags.tags_of_change`), which the
agent uses to invalidate exactly the flows that depended on it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tessera.agent.tags import arp_tag, host_tag, mac_tag, tags_of_change
from tessera.model import (
    Bridge,
    Chain,
    DhcpSubnet,
    Host,
    IpAddrGroup,
    Port,
    PortGroup,
    Route,
    Router,
    Rule,
    StoredObject,
    TunnelZone,
)
from tessera.nsdb import tables
from tessera.nsdb.base import Nsdb, StateEvent, Subscription, WatchEvent
from tessera.nsdb.errors import NsdbError
from tessera.packet.addr import ip_from_str, ip_to_str, mac_from_str, mac_to_str
from tessera.packet.errors import PacketError

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (NSDB kind, id)
ON_DEMAND = frozenset(
    {Bridge.kind, Router.kind, Chain.kind, Rule.kind, PortGroup.kind, IpAddrGroup.kind}
)
DEVICE_KIND = {"Bridge": Bridge.kind, "Router": Router.kind}
# The simulation names kinds in the singular (NotYetLoaded.kind).
KIND_ALIASES = {
    "port": Port.kind,
    "bridge": Bridge.kind,
    "router": Router.kind,
    "chain": Chain.kind,
    "rule": Rule.kind,
    "port_group": PortGroup.kind,
    "ip_addr_group": IpAddrGroup.kind,
}
_CHILDREN = {Route.kind: "router_id", DhcpSubnet.kind: "bridge_id"}

MacTable = dict[tuple[int, int], str]  # (vlan, mac) -> port id
ArpTable = dict[int, tuple[int, float]]  # ip -> (mac, expiry)


@dataclass(frozen=True)
class CacheUpdate:
    tags: frozenset[str] = frozenset()
    loaded: frozenset[Key] = frozenset()
    bindings_changed: bool = False
    tunnels_changed: bool = False


@dataclass(frozen=True)
class View:
    """An immutable picture of what the simulation may see.

    `topology_generation` changes only with topology objects, `generation` with learned
    state too, so a consumer can recompile the topology only when it really changed.
    """

    generation: int
    topology_generation: int
    objects: tuple[StoredObject, ...]
    macs: MappingProxyType[str, MappingProxyType[tuple[int, int], str]]
    arps: MappingProxyType[str, MappingProxyType[int, tuple[int, float]]]


@dataclass
class _State:
    objects: dict[str, dict[str, StoredObject]] = field(default_factory=dict)
    versions: dict[Key, int] = field(default_factory=dict)
    macs: dict[str, MacTable] = field(default_factory=dict)
    arps: dict[str, ArpTable] = field(default_factory=dict)

    def of(self, kind: str) -> dict[str, StoredObject]:
        return self.objects.setdefault(kind, {})


class TopologyCache:
    def __init__(self, nsdb: Nsdb, host_id: str, notify: Callable[[CacheUpdate], None]) -> None:
        self.nsdb = nsdb
        self.host_id = host_id
        self.notify = notify
        self._lock = threading.RLock()
        self._s = _State()
        self._generation = 0
        self._topology_generation = 0
        self._view: View | None = None
        # The objects of the last view and the topology generation they are of: learned
        # MACs and ARPs change far more often than the topology and reuse them.
        self._view_objects: tuple[int, tuple[StoredObject, ...]] | None = None
        self._addresses: dict[str, str | None] = {}  # host_address answers
        # Read-only copies of the learned tables for views, per table: a learned MAC
        # copies its own bridge's table for the next view, not every table there is.
        self._frozen_tables: dict[tuple[str, str], MappingProxyType[Any, Any]] = {}
        self._wanted: set[Key] = set()
        # Devices whose children are subscribed; None while their initial list is due,
        # else the child ids still awaited. A device is complete when its set is empty.
        self._children: dict[str, set[Key] | None] = {}
        self._subs: list[Subscription] = []
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._loader: threading.Thread | None = None
        self._closed = False
        self._initial_ports: set[str] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to what every agent needs (ports, hosts, tunnel zones) and start
        the loader. Raises NsdbError when the NSDB cannot be reached."""
        self._loader = threading.Thread(target=self._run_loader, name="agent-cache", daemon=True)
        self._loader.start()
        for kind in (Port.kind, Host.kind, TunnelZone.kind):
            self._subs.append(self.nsdb.watch_kind(kind, self._on_object))
        # What the ports watch is about to deliver: until it has, this host's bindings
        # are not known, and nothing may be judged stale for lack of one.
        listed = {s.value.id for s in self.nsdb.list(Port.kind)}
        with self._lock:
            self._initial_ports = listed - set(self._s.of(Port.kind))

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
            with self._lock:
                port = self._s.of(Port.kind).get(id)
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
        if device.id in self._children:
            return
        self._children[device.id] = None
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
                s.value.id for s in self.nsdb.list(child_kind) if getattr(s.value, attr) == did
            }
            with self._lock:
                self._subs.extend(subs)
                have = set(self._s.of(child_kind))
                self._children[did] = {(child_kind, i) for i in listed - have}
                done = not self._children[did]
                if done:
                    self._changed(topology=True)
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
            with self._lock:
                old = self._s.of(ev.kind).get(ev.id)
            if old is not None and getattr(old, attr, None) == parent:
                self._on_object(ev)

        return callback

    def _closure(self, obj: StoredObject) -> None:
        """Want what a newly relevant object points at (lock held)."""
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
            for port in list(self._s.of(Port.kind).values()):
                if isinstance(port, Port) and port.device_id == obj.id:
                    self._closure(port)
        elif isinstance(obj, Chain):
            for rule in obj.rule_ids:
                self.want(Rule.kind, rule)
        elif isinstance(obj, Rule):
            if obj.jump_chain_id:
                self.want(Chain.kind, obj.jump_chain_id)
            if obj.port_group:
                self.want(PortGroup.kind, obj.port_group)
            for group in (obj.ip_addr_group_src, obj.ip_addr_group_dst):
                if group:
                    self.want(IpAddrGroup.kind, group)

    def _relevant_port(self, port: Port) -> bool:
        return port.host_id == self.host_id or port.device_id in self._s.of(DEVICE_KIND[port.type])

    # -- events (notification thread) ------------------------------------------------------

    def _changed(self, topology: bool = False, table: tuple[str, str] | None = None) -> None:
        """Something the view shows changed: the topology, or one learned table."""
        self._generation += 1
        if topology:
            self._topology_generation += 1
        if table is not None:
            self._frozen_tables.pop(table, None)
        self._view = None

    def _on_object(self, ev: WatchEvent) -> None:
        key = (ev.kind, ev.id)
        loaded: set[Key] = set()
        completed: list[StoredObject] = []
        bindings = tunnels = False
        with self._lock:
            objs = self._s.of(ev.kind)
            old = objs.get(ev.id)
            if ev.value is None:
                if old is None:
                    return
                del objs[ev.id]
                self._s.versions.pop(key, None)
                new = None
            else:
                if old is not None and ev.version < self._s.versions.get(key, 0):
                    return  # an older version than the one we hold
                objs[ev.id] = ev.value
                self._s.versions[key] = ev.version
                new = ev.value
            if self._initial_ports and ev.kind == Port.kind:
                self._initial_ports.discard(ev.id)
            if old is not None and new is not None and old == new:
                return
            self._changed(topology=True)
            tags = tags_of_change(old, new)
            current = new if new is not None else old
            if isinstance(current, Port):
                was = isinstance(old, Port) and old.host_id == self.host_id
                now = isinstance(new, Port) and new.host_id == self.host_id
                bindings = was or now
            elif isinstance(current, Host | TunnelZone):
                tunnels = True
                self._addresses.clear()
                tags |= _host_tags(old, new)
            elif isinstance(current, Route | DhcpSubnet):
                parent = getattr(current, _CHILDREN[current.kind])
                waiting = self._children.get(parent)
                if waiting and key in waiting:
                    waiting.discard(key)
                    if not waiting:
                        device = self._s.of(
                            Router.kind if current.kind == Route.kind else Bridge.kind
                        ).get(parent)
                        if device is not None:
                            completed.append(device)
            if old is None and new is not None and (ev.kind, ev.id) in self._wanted:
                if isinstance(new, Bridge | Router):
                    if self._children.get(new.id) == set():
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
                vlan, _, mac = ev.key.partition("/")
                where = (int(vlan), mac_from_str(mac))
                entry = tables.decode_mac(ev.key, ev.value) if ev.value is not None else None
            except (ValueError, PacketError):
                return
            with self._lock:
                table = self._s.macs.setdefault(bridge_id, {})
                if entry is None:
                    if table.pop(where, None) is None:
                        return
                elif table.get(where) == entry.port_id:
                    return
                else:
                    table[where] = entry.port_id
                self._changed(table=("mac", bridge_id))
            self.notify(
                CacheUpdate(frozenset({mac_tag(bridge_id, where[0], mac_to_str(where[1]))}))
            )

        return callback

    def _arp_event(self, router_id: str) -> Callable[[StateEvent], None]:
        def callback(ev: StateEvent) -> None:
            try:
                ip = ip_from_str(ev.key)
                entry = tables.decode_arp(ev.key, ev.value) if ev.value is not None else None
                mac = mac_from_str(entry.mac_addr) if entry is not None else 0
            except (ValueError, KeyError, PacketError):
                return
            with self._lock:
                table = self._s.arps.setdefault(router_id, {})
                old = table.get(ip)
                if entry is None:
                    if table.pop(ip, None) is None:
                        return
                else:
                    table[ip] = (mac, entry.expiry)
                self._changed(table=("arp", router_id))
                if old is not None and entry is not None and old[0] == mac:
                    return  # a refreshed expiry changes no forwarding decision
            self.notify(CacheUpdate(frozenset({arp_tag(router_id, ev.key)})))

        return callback

    # -- local learning (upcall thread): seen at once, before the NSDB echoes it -----------

    def learn_mac(self, bridge_id: str, vlan_id: int, mac: int, port_id: str) -> set[str]:
        """Record a MAC learned here; returns the tags it invalidates (none if known)."""
        with self._lock:
            table = self._s.macs.setdefault(bridge_id, {})
            if table.get((vlan_id, mac)) == port_id:
                return set()
            table[(vlan_id, mac)] = port_id
            self._changed(table=("mac", bridge_id))
        return {mac_tag(bridge_id, vlan_id, mac_to_str(mac))}

    def learn_arp(self, router_id: str, ip: int, mac: int, expiry: float) -> set[str]:
        with self._lock:
            table = self._s.arps.setdefault(router_id, {})
            old = table.get(ip)
            table[ip] = (mac, expiry)
            self._changed(table=("arp", router_id))
            if old is not None and old[0] == mac:
                return set()
        return {arp_tag(router_id, ip_to_str(ip))}

    # -- reads -------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    def view(self) -> View:
        with self._lock:
            if self._view is None:
                self._view = self._build_view()
            return self._view

    def _build_view(self) -> View:
        s = self._s
        if self._view_objects is None or self._view_objects[0] != self._topology_generation:
            self._view_objects = (self._topology_generation, self._view_topology())
        return View(
            self._generation,
            self._topology_generation,
            self._view_objects[1],
            self._frozen("mac", s.macs),
            self._frozen("arp", s.arps),
        )

    def _frozen(
        self, kind: str, tables_: dict[str, dict[Any, Any]]
    ) -> MappingProxyType[str, MappingProxyType[Any, Any]]:
        out: dict[str, MappingProxyType[Any, Any]] = {}
        for owner, table in tables_.items():
            frozen = self._frozen_tables.get((kind, owner))
            if frozen is None:
                frozen = self._frozen_tables[(kind, owner)] = MappingProxyType(dict(table))
            out[owner] = frozen
        return MappingProxyType(out)

    def _view_topology(self) -> tuple[StoredObject, ...]:
        s = self._s
        complete = {d for d, waiting in self._children.items() if waiting == set()}
        objects: list[StoredObject] = []
        for kind in (Bridge.kind, Router.kind):
            objects.extend(d for d in s.of(kind).values() if d.id in complete)
        ports = s.of(Port.kind)
        relevant: dict[str, StoredObject] = {}
        for p in ports.values():
            if isinstance(p, Port) and (p.device_id in complete or p.host_id == self.host_id):
                relevant[p.id] = p
        for p in list(relevant.values()):
            assert isinstance(p, Port)
            if p.peer_id and p.peer_id in ports:
                relevant.setdefault(p.peer_id, ports[p.peer_id])
        objects.extend(relevant.values())
        objects.extend(
            r for r in s.of(Route.kind).values() if isinstance(r, Route) and r.router_id in complete
        )
        objects.extend(
            d
            for d in s.of(DhcpSubnet.kind).values()
            if isinstance(d, DhcpSubnet) and d.bridge_id in complete
        )
        for kind in (Chain.kind, Rule.kind, PortGroup.kind, IpAddrGroup.kind):
            objects.extend(s.of(kind).values())
        return tuple(objects)

    def get(self, kind: str, id: str) -> Any:
        kind = KIND_ALIASES.get(kind, kind)
        with self._lock:
            return self._s.of(kind).get(id)

    def is_loaded(self, key: Key) -> bool:
        """Whether the simulation can see it (a device also needs its children)."""
        kind, id = KIND_ALIASES.get(key[0], key[0]), key[1]
        with self._lock:
            obj = self._s.of(kind).get(id)
            if obj is None:
                return False
            if isinstance(obj, Bridge | Router):
                return self._children.get(id) == set()
            return True

    def bound_ports(self) -> dict[str, Port]:
        """Ports bound to this host, by id."""
        with self._lock:
            return {
                p.id: p
                for p in self._s.of(Port.kind).values()
                if isinstance(p, Port) and p.host_id == self.host_id
            }

    def host_address(self, host_id: str) -> str | None:
        """The underlay address that reaches `host_id`: its address in a tunnel zone this
        host shares with it, else in any zone, else its registered address.

        Every flow to a remote port asks, and the answer scans every zone's members:
        it is kept until a host or tunnel zone changes."""
        with self._lock:
            if host_id in self._addresses:
                return self._addresses[host_id]
            address = self._host_address(host_id)
            self._addresses[host_id] = address
            return address

    def _host_address(self, host_id: str) -> str | None:
        with self._lock:
            zones = [z for z in self._s.of(TunnelZone.kind).values() if isinstance(z, TunnelZone)]
            host = self._s.of(Host.kind).get(host_id)
        mine = {z.id for z in zones if any(m.host_id == self.host_id for m in z.hosts)}
        fallback = None
        for zone in zones:
            for member in zone.hosts:
                if member.host_id == host_id:
                    if zone.id in mine:
                        return member.ip_address
                    fallback = fallback or member.ip_address
        if fallback is not None:
            return fallback
        if isinstance(host, Host) and host.addresses:
            return host.addresses[0]
        return None

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
