"""What one host's agent must load: the closure of what its bound ports can reach.

One pure function, `reach`, says it for a host given a way to read objects and index
keys; the cache (`tessera.agent.cache`) runs it over what it holds to decide what to
watch, and tests run it over a full read of the NSDB to check the cache against a fresh
load. Keeping the rule in one place is what makes "the cache equals a fresh load of the
reachable part" a checkable statement.

The closure: the ports bound to the host (`host_ports` index); for each such port, and
for every port of a loaded device, its device, its filter chains, its mirrors, its peer
(whose device is loaded in turn, and so on across every interior link) and the port
groups listing it (a stateful group keys its members' connections); for a device, its
chains and mirrors, all its ports, and its routes, load balancers (with their pools,
VIPs and members) or DHCP subnets, found through the per-parent indexes; for a chain,
its rules, and for a rule its jump chain and the port and address groups it names; for
a mirror, its target port (the object only: a copy goes straight out) and the groups its
conditions name; for a stateful port group, its members' ports (objects only: their
connections' state goes to the hosts they are bound to). Hosts and tunnel zones are not
in it: the agent watches those whole (they grow with hypervisors, not with ports).

A device is *complete* when it and every child an index lists for it (ports, routes,
DHCP subnets, load balancers down to pool members) are held: the simulation cannot tell
a router without routes from one whose routes are not loaded yet, so only complete
devices are shown to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tessera.model import (
    Bridge,
    Chain,
    Conditions,
    DhcpSubnet,
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
    Vip,
)
from tessera.nsdb import indexes as ix

Key = tuple[str, str]  # (kind, id)
DEVICE_KIND = {"Bridge": Bridge.kind, "Router": Router.kind}
Get = Callable[[str, str], StoredObject | None]
Members = Callable[[str, str], "set[str] | frozenset[str] | None"]  # None: not listed yet


@dataclass
class Reach:
    objects: set[Key] = field(default_factory=set)
    indexes: set[ix.IndexKey] = field(default_factory=set)
    devices: set[Key] = field(default_factory=set)  # bridges and routers (their tables)
    complete: set[str] = field(default_factory=set)  # device ids


def reach(host_id: str, get: Get, members: Members, extra: Iterable[Key] = ()) -> Reach:
    """The closure for `host_id` over what `get` and `members` know (an object or a key
    they do not know yet is still named, so that the caller loads it). `extra` keys
    (what a simulation asked for) are roots too."""
    return _Walk(get, members).run(host_id, extra)


def links(obj: StoredObject) -> tuple[object, ...]:
    """What `reach` follows from `obj`: a change that keeps it cannot change the
    closure (a rule's match, a route's gateway), so the loader need not recompute."""
    if isinstance(obj, Port):
        return (
            obj.device_id, obj.inbound_filter_id, obj.outbound_filter_id,
            obj.inbound_mirror_ids, obj.outbound_mirror_ids, obj.peer_id, obj.host_id,
        )  # fmt: skip
    if isinstance(obj, Bridge | Router):
        return (
            obj.inbound_filter_id, obj.outbound_filter_id,
            obj.inbound_mirror_ids, obj.outbound_mirror_ids,
        )  # fmt: skip
    if isinstance(obj, Chain):
        return tuple(obj.rule_ids)
    if isinstance(obj, Rule):
        return (obj.jump_chain_id, *_group_links(obj))
    if isinstance(obj, Mirror):
        return (obj.to_port_id, *(g for c in obj.conditions for g in _group_links(c)))
    if isinstance(obj, PortGroup):
        return (obj.stateful, *obj.port_ids)
    return ()


def _group_links(cond: Conditions) -> tuple[str | None, ...]:
    return (cond.port_group, cond.ip_addr_group_src, cond.ip_addr_group_dst)


class _Walk:
    def __init__(self, get: Get, members: Members) -> None:
        self.get = get
        self.members = members
        self.out = Reach()
        self.full_ports: set[str] = set()
        self.seen: set[Key] = set()

    def run(self, host_id: str, extra: Iterable[Key]) -> Reach:
        for port in sorted(self.listed(ix.HOST_PORTS, host_id) or ()):
            self.port(port, full=True)
        for kind, id in extra:
            if kind == Port.kind:
                self.port(id, full=True)
            elif kind in (Bridge.kind, Router.kind):
                self.device(kind, id)
            elif kind == Chain.kind:
                self.chain(id)
            elif kind == Rule.kind:
                self.rule(id)
            elif kind == Mirror.kind:
                self.mirror(id)
            elif kind == PortGroup.kind:
                self.port_group(id)
            elif kind == IpAddrGroup.kind:
                self.obj(kind, id)
        return self.out

    def obj(self, kind: str, id: str) -> StoredObject | None:
        self.out.objects.add((kind, id))
        return self.get(kind, id)

    def listed(self, index: ix.Index, key: str) -> set[str] | frozenset[str] | None:
        self.out.indexes.add((index.name, key))
        return self.members(index.name, key)

    def once(self, kind: str, id: str) -> bool:
        if (kind, id) in self.seen:
            return False
        self.seen.add((kind, id))
        return True

    # -- the objects ---------------------------------------------------------------------

    def port(self, id: str, full: bool) -> None:
        if full:
            if id in self.full_ports:
                return
            self.full_ports.add(id)
        port = self.obj(Port.kind, id)
        if not full or not isinstance(port, Port):
            return
        self.device(DEVICE_KIND[port.type], port.device_id)
        self.filters(port.inbound_filter_id, port.outbound_filter_id)
        self.mirrors(*port.inbound_mirror_ids, *port.outbound_mirror_ids)
        if port.peer_id:
            self.port(port.peer_id, full=True)
        for group in sorted(self.listed(ix.PORT_GROUPS_OF, id) or ()):
            self.port_group(group)

    def device(self, kind: str, id: str) -> None:
        if not self.once(kind, id):
            return
        self.out.devices.add((kind, id))
        device = self.obj(kind, id)
        if not isinstance(device, Bridge | Router):
            return
        self.filters(device.inbound_filter_id, device.outbound_filter_id)
        self.mirrors(*device.inbound_mirror_ids, *device.outbound_mirror_ids)
        complete = True
        ports = self.listed(ix.DEVICE_PORTS, id)
        complete &= ports is not None
        for port in sorted(ports or ()):
            self.port(port, full=True)
            complete &= self.get(Port.kind, port) is not None
        if isinstance(device, Router):
            complete &= self.children(ix.ROUTER_ROUTES, id, Route.kind)
            complete &= self.children(ix.ROUTER_LBS, id, LoadBalancer.kind)
            for lb in sorted(self.listed(ix.ROUTER_LBS, id) or ()):
                complete &= self.children(ix.LB_VIPS, lb, Vip.kind)
                complete &= self.children(ix.LB_POOLS, lb, Pool.kind)
                for pool in sorted(self.listed(ix.LB_POOLS, lb) or ()):
                    complete &= self.children(ix.POOL_MEMBERS, pool, PoolMember.kind)
        else:
            complete &= self.children(ix.BRIDGE_DHCP, id, DhcpSubnet.kind)
        if complete:
            self.out.complete.add(id)

    def children(self, index: ix.Index, key: str, kind: str) -> bool:
        """Name every child listed under `key`; whether the list and all of them are in."""
        ids = self.listed(index, key)
        if ids is None:
            return False
        held = True
        for id in sorted(ids):
            held &= self.obj(kind, id) is not None
        return held

    def filters(self, *chains: str | None) -> None:
        for chain in chains:
            if chain:
                self.chain(chain)

    def chain(self, id: str) -> None:
        if not self.once(Chain.kind, id):
            return
        chain = self.obj(Chain.kind, id)
        if isinstance(chain, Chain):
            for rule in chain.rule_ids:
                self.rule(rule)

    def rule(self, id: str) -> None:
        if not self.once(Rule.kind, id):
            return
        rule = self.obj(Rule.kind, id)
        if isinstance(rule, Rule):
            if rule.jump_chain_id:
                self.chain(rule.jump_chain_id)
            self.groups(rule)

    def mirrors(self, *ids: str) -> None:
        for id in ids:
            self.mirror(id)

    def mirror(self, id: str) -> None:
        if not self.once(Mirror.kind, id):
            return
        mirror = self.obj(Mirror.kind, id)
        if isinstance(mirror, Mirror):
            self.port(mirror.to_port_id, full=False)
            for cond in mirror.conditions:
                self.groups(cond)

    def port_group(self, id: str) -> None:
        """A group, and for a stateful one its members' ports (objects only): their
        connections' state is sent to the hosts they are bound to."""
        if not self.once(PortGroup.kind, id):
            return
        group = self.obj(PortGroup.kind, id)
        if isinstance(group, PortGroup) and group.stateful:
            for port in group.port_ids:
                self.port(port, full=False)

    def groups(self, cond: Conditions) -> None:
        if cond.port_group:
            self.port_group(cond.port_group)
        for group in (cond.ip_addr_group_src, cond.ip_addr_group_dst):
            if group:
                self.obj(IpAddrGroup.kind, group)
