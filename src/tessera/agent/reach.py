"""What one host's agent must load: what its bound ports reach, up to a depth.

One pure function, `reach`, says it for a host given a way to read objects and index
keys; the cache (`tessera.agent.cache`) runs it over what it holds to decide what to
watch, and tests run it over a full read of the NSDB to check the cache against a fresh
load. Keeping the rule in one place is what makes "the cache equals a fresh load of the
reachable part" a checkable statement.

The closure: the ports bound to the host (`host_ports` index); for each such port, and
for every port of a loaded device, its device, its filter chains, its mirrors, its peer
(whose device is loaded in turn, across interior links, up to the depth limit below)
and the port groups listing it (a stateful group keys its members' connections); for a
device, its chains and mirrors, all its ports, and its routes, load balancers (with
their pools, VIPs and members) or DHCP subnets, found through the per-parent indexes;
for a chain, its rules, and for a rule its jump chain and the port and address groups
it names; for a mirror, its target port (the object only: a copy goes straight out) and
the groups its conditions name; for a stateful port group, its members' ports (objects
only: their connections' state goes to the hosts they are bound to). The Host of this
host, and of every host a port of the closure is bound to (the object only: where its
tunnel ends), are in it too; tunnel zones are not: the agent watches those whole.
Watching every Host instead made every VM port bound anywhere wake every agent (a bind
rewrites its host's object to serialise binds there) and a fleet of N agents starting
cost N^2 notifications.

Depth. The devices of the bound ports are at depth 0 and a device one peer link further
is one deeper; devices deeper than `max_depth` are not loaded eagerly (None: no limit).
Without a limit the closure follows every interior link, and in the commonest Neutron
topology — every tenant router with its gateway on one shared external network — that
walks from any VM's bridge through its router, the external bridge, every other
tenant's router to their networks: the whole cloud. The agent uses `AGENT_MAX_DEPTH` =
2: a VM's bridge (0), its router (1) and the networks on that router (2: the tenant's
other subnets and the external network) are loaded up front, which is what a tenant's
own traffic crosses; another tenant's router behind the external network (3) is not.
The simulation asks for what lies further when a packet gets there (`NotYetLoaded`:
the agent parks the packet, `want`s the object and simulates again), as MidoNet's
agent does. Two things make that boundary work:

- a boundary port — the peer of a port of a device at the limit — is held with what its
  ingress reads (its inbound filter and mirrors, its port groups), so that the packet
  can enter it and the simulation can name the device to ask for;
- a router behind a boundary port of a *bridge* at the limit is held as a *front*: the
  router object, its inbound filter (a floating IP's `dnat` rule is what makes a router
  answer ARP for it) and inbound mirrors, not its ports, routes or load balancers. A
  bridge floods broadcasts and unknown destinations into every router on it (an ARP
  request on the external network reaches every tenant's router); a front is enough
  for a router to answer, learn from or drop such a frame exactly as a loaded one
  would, and the simulation asks for the whole router only when a packet is routed
  through it (`simulation.router`). Without fronts the first ARP flood on a shared
  network would need every router on it, one re-simulation each.

What the simulation asks for (`extra` keys) is a root too, at the limit itself: loaded
whole, with its boundary, and nothing behind it. A wanted device is by construction
where a packet crossed the boundary; loading it as if it were the host's own would
prefetch its neighbours, and from another tenant's router that walks straight back
across the shared external network to every tenant.

A device is *complete* when it and every child an index lists for it (ports, routes,
DHCP subnets, load balancers down to pool members) are held: the simulation cannot tell
a router without routes from one whose routes are not loaded yet, so only complete
devices (and fronts, marked as such) are shown to it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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
    Vip,
)
from tessera.nsdb import indexes as ix

Key = tuple[str, str]  # (kind, id)
DEVICE_KIND = {"Bridge": Bridge.kind, "Router": Router.kind}
Get = Callable[[str, str], StoredObject | None]
Members = Callable[[str, str], "set[str] | frozenset[str] | None"]  # None: not listed yet

REACH_KINDS = (
    Host.kind, Port.kind, Bridge.kind, Router.kind, Chain.kind, Rule.kind, Mirror.kind,
    Route.kind, DhcpSubnet.kind, PortGroup.kind, IpAddrGroup.kind, LoadBalancer.kind,
    Vip.kind, Pool.kind, PoolMember.kind,
)  # fmt: skip
"""Every kind `reach` can name (a copy of the topology that answers for it holds these)."""

AGENT_MAX_DEPTH = 2
"""Peer links from the host's own devices that its agent loads eagerly (module doc)."""


@dataclass
class Reach:
    objects: set[Key] = field(default_factory=set)
    indexes: set[ix.IndexKey] = field(default_factory=set)
    devices: set[Key] = field(default_factory=set)  # bridges and routers (their tables)
    complete: set[str] = field(default_factory=set)  # device ids
    fronts: set[str] = field(default_factory=set)  # routers held as fronts (ids)


def reach(
    host_id: str,
    get: Get,
    members: Members,
    extra: Iterable[Key] = (),
    *,
    max_depth: int | None,
) -> Reach:
    """The closure for `host_id` over what `get` and `members` know (an object or a key
    they do not know yet is still named, so that the caller loads it). `extra` keys
    (what a simulation asked for) are roots too, at the limit. `max_depth`: the peer
    links followed from the host's own devices (None: all; the agent's is
    `AGENT_MAX_DEPTH`)."""
    return _Walk(get, members, max_depth).run(host_id, extra)


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
    """Devices are loaded nearest first (a heap by depth), so each is loaded at the
    least depth it has: what it leads to does not depend on the order of the walk."""

    def __init__(self, get: Get, members: Members, max_depth: int | None) -> None:
        self.get = get
        self.members = members
        self.limit = max_depth
        self.out = Reach()
        self.port_depth: dict[str, int] = {}  # ports followed, at the least depth seen
        self.boundary: set[str] = set()  # boundary ports held for their ingress
        self.front_candidates: set[str] = set()  # routers behind a boundary of a bridge
        self.queue: list[tuple[int, str, str]] = []  # (depth, kind, id) of devices
        self.seen: set[Key] = set()

    def run(self, host_id: str, extra: Iterable[Key]) -> Reach:
        self.obj(Host.kind, host_id)
        for port in sorted(self.listed(ix.HOST_PORTS, host_id) or ()):
            self.port(port, 0)
        edge = self.limit or 0
        for kind, id in extra:
            if kind == Port.kind:
                self.port(id, edge)
            elif kind in (Bridge.kind, Router.kind):
                heapq.heappush(self.queue, (edge, kind, id))
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
        while self.queue:
            depth, kind, id = heapq.heappop(self.queue)
            self.device(kind, id, depth)
        loaded = {id for _, id in self.out.devices}
        for id in sorted(self.front_candidates - loaded):
            self.front(id)
        return self.out

    def obj(self, kind: str, id: str) -> StoredObject | None:
        self.out.objects.add((kind, id))
        return self.get(kind, id)

    def port_obj(self, id: str) -> Port | None:
        """A port, and the Host it is bound to (where a tunnel to it ends)."""
        port = self.obj(Port.kind, id)
        if not isinstance(port, Port):
            return None
        if port.host_id:
            self.obj(Host.kind, port.host_id)
        return port

    def listed(self, index: ix.Index, key: str) -> set[str] | frozenset[str] | None:
        self.out.indexes.add((index.name, key))
        return self.members(index.name, key)

    def once(self, kind: str, id: str) -> bool:
        if (kind, id) in self.seen:
            return False
        self.seen.add((kind, id))
        return True

    # -- the objects ---------------------------------------------------------------------

    def port(self, id: str, depth: int) -> None:
        """A port of a device `depth` links away: the device, the port's filters,
        mirrors and groups, and its peer: a port of the next device within the limit,
        a boundary port beyond it."""
        done = self.port_depth.get(id)
        if done is not None and done <= depth:
            return
        self.port_depth[id] = depth
        port = self.port_obj(id)
        if port is None:
            return
        heapq.heappush(self.queue, (depth, DEVICE_KIND[port.type], port.device_id))
        self.filters(port.inbound_filter_id, port.outbound_filter_id)
        self.mirrors(*port.inbound_mirror_ids, *port.outbound_mirror_ids)
        self.groups_of(id)
        if port.peer_id:
            if self.limit is None or depth < self.limit:
                self.port(port.peer_id, depth + 1)
            else:
                self.boundary_port(port.peer_id, from_bridge=port.type == "Bridge")

    def boundary_port(self, id: str, from_bridge: bool) -> None:
        """A port beyond the limit, with what its ingress reads; behind a bridge's
        port, its router is held as a front (module doc)."""
        if id in self.boundary:
            return
        self.boundary.add(id)
        port = self.port_obj(id)
        if port is None:
            return
        self.filters(port.inbound_filter_id)
        self.mirrors(*port.inbound_mirror_ids)
        self.groups_of(id)
        if from_bridge and port.type == "Router":
            self.front_candidates.add(port.device_id)

    def groups_of(self, port: str) -> None:
        for group in sorted(self.listed(ix.PORT_GROUPS_OF, port) or ()):
            self.port_group(group)

    def front(self, id: str) -> None:
        """A router beyond the limit behind a bridge: what a frame flooded into it
        meets before it is routed (module doc)."""
        self.out.fronts.add(id)
        router = self.obj(Router.kind, id)
        if isinstance(router, Router):
            self.filters(router.inbound_filter_id)
            self.mirrors(*router.inbound_mirror_ids)

    def device(self, kind: str, id: str, depth: int) -> None:
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
            self.port(port, depth)
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
            self.port_obj(mirror.to_port_id)
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
                self.port_obj(port)

    def groups(self, cond: Conditions) -> None:
        if cond.port_group:
            self.port_group(cond.port_group)
        for group in (cond.ip_addr_group_src, cond.ip_addr_group_dst):
            if group:
                self.obj(IpAddrGroup.kind, group)
