"""Which hosts' agents hold an object: `reach` walked backwards.

`?wait=true` (`tessera.api.wait`) must find the agents a write concerns: those whose
closure (`tessera.agent.reach`, at unlimited depth: a safe over-approximation of what
any agent holds, on-demand loads included) meets a touched object. Running `reach`
forwards for every live host costs a read of the whole topology and one walk per host,
per waiting write: seconds at a thousand hypervisors. Walked backwards from the touched
objects it costs what lies between them and the ports that reach them: a rule's chain,
the ports and devices filtered by it, the ports of those devices and their peers.

The walk's rule is `reach`'s, restated as edges. Every object contributes the edges its
own fields imply (a port: port -> device, device -> port, port -> filter chains and
mirrors, port -> peer; a chain: chain -> rules; a port group: member port -> group, and
group -> member for a stateful one; a route: router -> route; ...). An edge either
*expands* its target (the forward walk goes on from it) or only *includes* it (a mirror's
target port, a stateful group's members, an address group, a router's routes: named,
not walked further). Only an object that exists is expanded, as in `reach`. A host's
closure holds `t` when one of its bound ports leads to `t` along expanding edges and at
most one including edge at the end (two for a Host: a port named only, a mirror's
target say, names its host too); so the hosts concerned by `t` are found by walking
back from `t` and from whatever includes it, along expanding edges only, collecting the
hosts of the bound ports met. The property test
(`tests/unit/agent/test_agent_reach_back.py`) holds this equal to running `reach` for
every host, on random topologies.

`ReverseReach` keeps the edges of a set of objects (the API feeds it from NSDB watches)
and answers for the objects as they are, or as they were with some replaced by older
values (`overlay`): a write's "before", without a copy of the whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tessera.agent.reach import DEVICE_KIND, Key
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


@dataclass(frozen=True)
class Edge:
    src: Key
    dst: Key
    expands: bool  # the forward walk goes on from `dst` (else it only names it)


def edges(obj: StoredObject) -> list[Edge]:
    """The edges of `reach`'s walk that `obj`'s own fields imply."""
    k = (obj.kind, obj.id)
    out: list[Edge] = []
    if isinstance(obj, Port):
        out.append(Edge(k, (DEVICE_KIND[obj.type], obj.device_id), True))
        # A device lists its ports by id (`device_ports`), whatever kind it is.
        out.extend(Edge((kind, obj.device_id), k, True) for kind in (Bridge.kind, Router.kind))
        out.extend(_chains(k, obj.inbound_filter_id, obj.outbound_filter_id))
        out.extend(_mirrors(k, *obj.inbound_mirror_ids, *obj.outbound_mirror_ids))
        if obj.peer_id:
            out.append(Edge(k, (Port.kind, obj.peer_id), True))
        if obj.host_id:
            out.append(Edge(k, (Host.kind, obj.host_id), False))
    elif isinstance(obj, Bridge | Router):
        out.extend(_chains(k, obj.inbound_filter_id, obj.outbound_filter_id))
        out.extend(_mirrors(k, *obj.inbound_mirror_ids, *obj.outbound_mirror_ids))
    elif isinstance(obj, Chain):
        out.extend(Edge(k, (Rule.kind, r), True) for r in obj.rule_ids)
    elif isinstance(obj, Rule):
        if obj.jump_chain_id:
            out.append(Edge(k, (Chain.kind, obj.jump_chain_id), True))
        out.extend(_groups(k, obj))
    elif isinstance(obj, Mirror):
        out.append(Edge(k, (Port.kind, obj.to_port_id), False))
        for cond in obj.conditions:
            out.extend(_groups(k, cond))
    elif isinstance(obj, PortGroup):
        for port in obj.port_ids:
            out.append(Edge((Port.kind, port), k, True))  # `port_groups_of`
            if obj.stateful:
                out.append(Edge(k, (Port.kind, port), False))
    elif isinstance(obj, Route):
        out.append(Edge((Router.kind, obj.router_id), k, False))
    elif isinstance(obj, DhcpSubnet):
        out.append(Edge((Bridge.kind, obj.bridge_id), k, False))
    elif isinstance(obj, LoadBalancer):
        out.append(Edge((Router.kind, obj.router_id), k, True))
    elif isinstance(obj, Vip):
        out.append(Edge((LoadBalancer.kind, obj.load_balancer_id), k, False))
    elif isinstance(obj, Pool):
        out.append(Edge((LoadBalancer.kind, obj.load_balancer_id), k, True))
    elif isinstance(obj, PoolMember):
        out.append(Edge((Pool.kind, obj.pool_id), k, False))
    return out


def _chains(src: Key, *ids: str | None) -> list[Edge]:
    return [Edge(src, (Chain.kind, c), True) for c in ids if c]


def _mirrors(src: Key, *ids: str) -> list[Edge]:
    return [Edge(src, (Mirror.kind, m), True) for m in ids]


def _groups(src: Key, cond: Conditions) -> list[Edge]:
    out = []
    if cond.port_group:
        out.append(Edge(src, (PortGroup.kind, cond.port_group), True))
    for group in (cond.ip_addr_group_src, cond.ip_addr_group_dst):
        if group:
            out.append(Edge(src, (IpAddrGroup.kind, group), False))
    return out


Overlay = Mapping[Key, "StoredObject | None"]


class ReverseReach:
    """The objects of the closure's kinds and the edges into each; not thread-safe (the
    caller serializes)."""

    def __init__(self) -> None:
        self.objects: dict[Key, StoredObject] = {}
        # dst -> src -> [expanding, including] edge counts (two objects may imply one
        # edge: a port's peer link is implied by both ends).
        self._into: dict[Key, dict[Key, list[int]]] = {}

    def get(self, key: Key) -> StoredObject | None:
        return self.objects.get(key)

    def put(self, obj: StoredObject) -> None:
        key = (obj.kind, obj.id)
        old = self.objects.get(key)
        if old is not None:
            self._count(edges(old), -1)
        self.objects[key] = obj
        self._count(edges(obj), 1)

    def remove(self, key: Key) -> None:
        old = self.objects.pop(key, None)
        if old is not None:
            self._count(edges(old), -1)

    def _count(self, es: Iterable[Edge], delta: int) -> None:
        for e in es:
            srcs = self._into.setdefault(e.dst, {})
            counts = srcs.setdefault(e.src, [0, 0])
            slot = 0 if e.expands else 1
            counts[slot] += delta
            if counts[0] <= 0 and counts[1] <= 0:
                del srcs[e.src]
                if not srcs:
                    del self._into[e.dst]

    def hosts(self, touched: Iterable[Key], overlay: Overlay | None = None) -> set[str]:
        """The hosts whose closure holds any of `touched`, over the objects held, or
        with those named in `overlay` replaced by its values (None: absent)."""
        view = _View(self, overlay or {})
        found: set[str] = set()
        queue: list[Key] = []
        seen: set[Key] = set()
        for t in touched:
            queue.append(t)
            named = [src for src, _ in view.into(t)]
            queue.extend(named)
            if t[0] == Host.kind:
                # Every agent holds its own Host, and a Host is named with any port
                # bound to it, even one only named itself (a mirror's target).
                found.add(t[1])
                for port in named:
                    queue.extend(src for src, _ in view.into(port))
        while queue:
            key = queue.pop()
            if key in seen:
                continue
            seen.add(key)
            obj = view.get(key)
            if obj is None:
                continue  # never expanded: it leads nowhere, nor does anything through it
            if isinstance(obj, Port) and obj.host_id:
                found.add(str(obj.host_id))
            queue.extend(src for src, expands in view.into(key) if expands)
        return found


class _View:
    """A `ReverseReach` with some objects replaced (a write's "before")."""

    def __init__(self, rr: ReverseReach, overlay: Overlay) -> None:
        self.rr = rr
        self.overlay = overlay
        self._extra: dict[Key, dict[Key, list[int]]] = {}
        for key, obj in overlay.items():
            old = rr.objects.get(key)
            if old is not None:
                self._add(edges(old), -1)
            if obj is not None:
                self._add(edges(obj), 1)

    def _add(self, es: Iterable[Edge], delta: int) -> None:
        for e in es:
            counts = self._extra.setdefault(e.dst, {}).setdefault(e.src, [0, 0])
            counts[0 if e.expands else 1] += delta

    def get(self, key: Key) -> StoredObject | None:
        if key in self.overlay:
            return self.overlay[key]
        return self.rr.objects.get(key)

    def into(self, dst: Key) -> list[tuple[Key, bool]]:
        """The sources of the edges into `dst`, and whether one of them expands it."""
        base = self.rr._into.get(dst, {})
        extra = self._extra.get(dst)
        if not extra:
            return [(src, c[0] > 0) for src, c in base.items()]
        out = []
        for src in base.keys() | extra.keys():
            b = base.get(src, (0, 0))
            x = extra.get(src, (0, 0))
            expanding, including = b[0] + x[0], b[1] + x[1]
            if expanding > 0 or including > 0:
                out.append((src, expanding > 0))
        return out
