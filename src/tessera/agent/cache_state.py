"""What the agent's topology cache holds, and the `View` of it the simulation reads.

The loader (`tessera.agent.cache`) decides what to load and feeds what the NSDB delivers
in here; this module only keeps it: the objects by kind with their versions, the learned
MAC and ARP tables, which devices are complete (their children are in), and the views
built from all that. It does no I/O and starts no thread, so it can be read without
knowing where the objects came from.

Views. The simulation cannot tell a router without routes from a router whose routes
are not loaded yet, so a device enters the `View` only once it is complete. A view is an
immutable copy rebuilt only after something changed; its objects are rebuilt only when
the topology changed (learned MACs and ARPs change far more often and reuse them), and
its learned tables are copied per table (a learned MAC copies its own bridge's table for
the next view, not every table there is).

Threads. Watch callbacks (the NSDB client's notification thread) and local learning (the
upcall thread) write; anyone may read. Every access holds `lock`, which the loader also
takes to make a change and its bookkeeping one step.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from tessera.model import (
    Bridge,
    Chain,
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
from tessera.nsdb.base import WatchEvent
from tessera.simulation.tags import arp_tag, mac_tag

Key = tuple[str, str]  # (NSDB kind, id)
# The simulation names kinds in the singular (NotYetLoaded.kind).
KIND_ALIASES = {
    "port": Port.kind,
    "bridge": Bridge.kind,
    "router": Router.kind,
    "chain": Chain.kind,
    "rule": Rule.kind,
    "port_group": PortGroup.kind,
    "ip_addr_group": IpAddrGroup.kind,
    "mirror": Mirror.kind,
}

MacTable = dict[tuple[int, int], str]  # (vlan, mac) -> port id
ArpTable = dict[int, tuple[int, float]]  # ip -> (mac, expiry)


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
    fronts: frozenset[str] = frozenset()  # routers among `objects` held as fronts


class CacheState:
    """The objects, learned tables and device completeness of one host's cache."""

    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        self.lock = threading.RLock()
        self._objects: dict[str, dict[str, StoredObject]] = {}
        self._versions: dict[Key, int] = {}
        self._macs: dict[str, MacTable] = {}
        self._arps: dict[str, ArpTable] = {}
        # Devices whose children are all in (`tessera.agent.reach`): the loader writes it
        # (it knows what it asked for); views and reads consult it.
        self.complete: set[str] = set()
        # Routers held as fronts (`reach`): shown, marked, so that the simulation asks
        # for the whole router before routing through one.
        self.fronts: frozenset[str] = frozenset()
        self._generation = 0
        self._topology_generation = 0
        self._view: View | None = None
        # The objects of the last view and the topology generation they are of.
        self._view_objects: tuple[int, tuple[StoredObject, ...]] | None = None
        self._addresses: dict[str, str | None] = {}  # host_address answers
        self._frozen_tables: dict[tuple[str, str], MappingProxyType[Any, Any]] = {}

    # -- writes (lock held by the caller or taken here) -----------------------------------

    def kinds(self) -> list[str]:
        with self.lock:
            return list(self._objects)

    def of(self, kind: str) -> dict[str, StoredObject]:
        """The live objects of one kind, by id (callers hold `lock`)."""
        return self._objects.setdefault(kind, {})

    def put(self, ev: WatchEvent) -> tuple[StoredObject | None, StoredObject | None] | None:
        """Apply a watch event; returns (old, new), or None when it changes nothing we
        hold (the removal of an unknown object, or an older version than ours). An equal
        re-delivery is returned too: the caller's bookkeeping may still need it."""
        key = (ev.kind, ev.id)
        with self.lock:
            objs = self.of(ev.kind)
            old = objs.get(ev.id)
            if ev.value is None:
                if old is None:
                    return None
                del objs[ev.id]
                self._versions.pop(key, None)
                return old, None
            if old is not None and ev.version < self._versions.get(key, 0):
                return None
            objs[ev.id] = ev.value
            self._versions[key] = ev.version
            return old, ev.value

    def topology_changed(self, changed: StoredObject) -> None:
        """A topology object the view may show changed."""
        with self.lock:
            if isinstance(changed, Host | TunnelZone):
                self._addresses.clear()
            self._changed(topology=True)

    def remove(self, kind: str, id: str) -> StoredObject | None:
        """Stop holding an object (no longer reachable); returns what was held."""
        with self.lock:
            old = self.of(kind).pop(id, None)
            self._versions.pop((kind, id), None)
            if old is not None:
                self.topology_changed(old)
            return old

    def set_complete(self, complete: set[str]) -> set[str]:
        """The devices now complete; returns those that were not before."""
        with self.lock:
            if complete == self.complete:
                return set()
            added = complete - self.complete
            self.complete = set(complete)
            self._changed(topology=True)
            return added

    def set_fronts(self, fronts: set[str]) -> set[str]:
        """The routers now held as fronts; returns those that became or stopped being
        one (their tags: flows through them read what a front shows)."""
        with self.lock:
            if fronts == self.fronts:
                return set()
            changed = set(fronts ^ self.fronts)
            self.fronts = frozenset(fronts)
            self._changed(topology=True)
            return changed

    def forget_tables(self, device_id: str) -> None:
        """Drop a device's learned MAC and ARP tables (it left the closure)."""
        with self.lock:
            mac = self._macs.pop(device_id, None)
            arp = self._arps.pop(device_id, None)
            if mac is not None:
                self._changed(table=("mac", device_id))
            if arp is not None:
                self._changed(table=("arp", device_id))

    def set_mac(self, bridge_id: str, vlan_id: int, mac: int, port_id: str | None) -> bool:
        """Record (None: forget) where a MAC is; returns whether that changed."""
        where = (vlan_id, mac)
        with self.lock:
            table = self._macs.setdefault(bridge_id, {})
            if port_id is None:
                if table.pop(where, None) is None:
                    return False
            elif table.get(where) == port_id:
                return False
            else:
                table[where] = port_id
            self._changed(table=("mac", bridge_id))
            return True

    def set_arp(self, router_id: str, ip: int, entry: tuple[int, float] | None) -> bool:
        """Record (None: forget) an ARP entry (mac, expiry); returns whether the
        resolution changed: a refreshed expiry changes no forwarding decision, though the
        view shows it."""
        with self.lock:
            table = self._arps.setdefault(router_id, {})
            old = table.get(ip)
            if entry is None:
                if table.pop(ip, None) is None:
                    return False
            else:
                table[ip] = entry
            self._changed(table=("arp", router_id))
            return not (old is not None and entry is not None and old[0] == entry[0])

    def _changed(self, topology: bool = False, table: tuple[str, str] | None = None) -> None:
        """Something the view shows changed: the topology, or one learned table."""
        self._generation += 1
        if topology:
            self._topology_generation += 1
        if table is not None:
            self._frozen_tables.pop(table, None)
        self._view = None

    # -- local learning (upcall thread): seen at once, before the NSDB echoes it -----------

    def learn_mac(self, bridge_id: str, vlan_id: int, mac: int, port_id: str) -> set[str]:
        """Record a MAC learned here; returns the tags it invalidates (none if known)."""
        if not self.set_mac(bridge_id, vlan_id, mac, port_id):
            return set()
        return {mac_tag(bridge_id, vlan_id, mac)}

    def learn_arp(self, router_id: str, ip: int, mac: int, expiry: float) -> set[str]:
        if not self.set_arp(router_id, ip, (mac, expiry)):
            return set()
        return {arp_tag(router_id, ip)}

    # -- reads -------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    def view(self) -> View:
        with self.lock:
            if self._view is None:
                self._view = self._build_view()
            return self._view

    def _build_view(self) -> View:
        if self._view_objects is None or self._view_objects[0] != self._topology_generation:
            self._view_objects = (self._topology_generation, self._view_topology())
        return View(
            self._generation,
            self._topology_generation,
            self._view_objects[1],
            self._frozen("mac", self._macs),
            self._frozen("arp", self._arps),
            self._view_fronts(),
        )

    def _view_fronts(self) -> frozenset[str]:
        held = self.of(Router.kind)
        return frozenset(r for r in self.fronts if r in held and r not in self.complete)

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
        complete = self.complete
        objects: list[StoredObject] = []
        shown = complete | self._view_fronts()
        for kind in (Bridge.kind, Router.kind):
            objects.extend(d for d in self.of(kind).values() if d.id in shown)
        ports = self.of(Port.kind)
        relevant: dict[str, StoredObject] = {}
        for p in ports.values():
            if isinstance(p, Port) and (p.device_id in complete or p.host_id == self.host_id):
                relevant[p.id] = p
        for p in list(relevant.values()):
            assert isinstance(p, Port)
            if p.peer_id and p.peer_id in ports:
                relevant.setdefault(p.peer_id, ports[p.peer_id])
        # Mirrors' target ports (held, as the closure says): a copy needs the port only.
        for mirror in self.of(Mirror.kind).values():
            assert isinstance(mirror, Mirror)
            if mirror.to_port_id in ports:
                relevant.setdefault(mirror.to_port_id, ports[mirror.to_port_id])
        objects.extend(relevant.values())
        objects.extend(
            r
            for r in self.of(Route.kind).values()
            if isinstance(r, Route) and r.router_id in complete
        )
        objects.extend(
            d
            for d in self.of(DhcpSubnet.kind).values()
            if isinstance(d, DhcpSubnet) and d.bridge_id in complete
        )
        for kind in (Chain.kind, Rule.kind, PortGroup.kind, IpAddrGroup.kind, Mirror.kind):
            objects.extend(self.of(kind).values())
        # Load balancers of complete routers with all their VIPs, pools and members.
        lbs = {
            lb.id
            for lb in self.of(LoadBalancer.kind).values()
            if isinstance(lb, LoadBalancer) and lb.router_id in complete
        }
        objects.extend(self.of(LoadBalancer.kind)[i] for i in lbs)
        pools = [
            p for p in self.of(Pool.kind).values()
            if isinstance(p, Pool) and p.load_balancer_id in lbs
        ]  # fmt: skip
        objects.extend(pools)
        objects.extend(
            v
            for v in self.of(Vip.kind).values()
            if isinstance(v, Vip) and v.load_balancer_id in lbs
        )
        pool_ids = {p.id for p in pools}
        objects.extend(
            m
            for m in self.of(PoolMember.kind).values()
            if isinstance(m, PoolMember) and m.pool_id in pool_ids
        )
        return tuple(objects)

    def get(self, kind: str, id: str) -> Any:
        kind = KIND_ALIASES.get(kind, kind)
        with self.lock:
            return self.of(kind).get(id)

    def is_loaded(self, key: Key) -> bool:
        """Whether the simulation can see it (a device also needs its children)."""
        kind, id = KIND_ALIASES.get(key[0], key[0]), key[1]
        with self.lock:
            obj = self.of(kind).get(id)
            if obj is None:
                return False
            if isinstance(obj, Bridge | Router):
                return id in self.complete
            return True

    def bound_ports(self) -> dict[str, Port]:
        """Ports bound to this host, by id."""
        with self.lock:
            return {
                p.id: p
                for p in self.of(Port.kind).values()
                if isinstance(p, Port) and p.host_id == self.host_id
            }

    def host_address(self, host_id: str) -> str | None:
        """The underlay address that reaches `host_id`: its address in a tunnel zone this
        host shares with it, else in any zone, else its registered address.

        Every flow to a remote port asks, and the answer scans every zone's members:
        it is kept until a host or tunnel zone changes."""
        with self.lock:
            if host_id in self._addresses:
                return self._addresses[host_id]
            address = self._host_address(host_id)
            self._addresses[host_id] = address
            return address

    def _host_address(self, host_id: str) -> str | None:
        zones = [z for z in self.of(TunnelZone.kind).values() if isinstance(z, TunnelZone)]
        host = self.of(Host.kind).get(host_id)
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
