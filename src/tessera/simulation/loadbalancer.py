"""The load balancer in a router's path (MidoNet's L4LB: LoadBalancer, Pool, VIP).

A router with a load balancer treats a TCP packet for one of its VIPs (address and port)
just after its inbound filter (`inbound`): the connection's first packet, at the agent
where it enters, chooses a member of the VIP's pool and DNATs to it; every later packet
is translated by the binding that choice created, which the agent holds and pushes to
the member's host like any NAT state, so that the member's replies, wherever they enter,
are translated back just after the router's outbound filter (`outbound`). The backend
sees the client's real address: only the destination is rewritten.

Bindings are the simulation's NAT records (`flowstate.NatEntry`), keyed by the load
balancer's id rather than the router's, so that a VIP connection can never collide with
the router's own NAT rules (MidoNet kept one NAT table per load balancer too):

- `fwd_dnat` (client, client port, VIP, VIP port) -> member, and its `rev_dnat`;
- with `SOURCE_IP` persistence, `sticky_dnat` (client, port 0, VIP, VIP port) -> member:
  the member this client's next connections go to, with its own, long idle expiry
  (`flowstate.STICKY_TIMEOUT`; a flow of any of its connections keeps it alive).

Choosing (MidoNet's ROUND_ROBIN is a weighted random choice per new connection): the
candidates are the pool's members that are `admin_state_up` and `ACTIVE` (the
health-monitor service writes `status`); `MemberPicker` draws among them by weight, and
is injected like the SNAT allocator so that tests and benchmarks are deterministic. A
sticky entry whose member is no longer a candidate is replaced by a fresh choice.

What is never broken: a connection that has a binding keeps its member whatever happened
since — member, pool, VIP or load balancer disabled, member INACTIVE. Disabling only
stops new connections (they are dropped: a VIP that cannot serve says so in the trace
and the drop reason rather than routing the VIP's address elsewhere).

The flow mask: deciding reads the 5-tuple (the binding's key), so a new connection is
always a miss and its later packets stay in the kernel; a packet to any other address or
port of the router only reads what routing reads anyway plus the protocol. The reply side
reads the source address first and goes on only for a member's address.

Not load balanced: fragments of a datagram to a VIP are dropped (a later fragment has no
ports to find its binding by, as with dynamic NAT); ICMP errors about a VIP connection
are not translated.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from tessera.packet.addr import ip_from_str, ip_to_str
from tessera.packet.ethernet import ETH_TYPE_IPV4
from tessera.packet.ipv4 import PROTO_TCP
from tessera.packet.match import FlowMatch
from tessera.simulation.flowstate import NatBinding, NatEntry, NatKey, nat_return
from tessera.simulation.result import TraceNode
from tessera.simulation.tags import lb_member_tag, nat_tag

if TYPE_CHECKING:  # the simulation calls in here; only its type is needed
    from tessera.model.load_balancers import LoadBalancer, Pool, PoolMember, Vip
    from tessera.simulation.context import Simulation


# -- choosing a member ---------------------------------------------------------------------


class MemberPicker(Protocol):
    """Chooses the member of a new connection; MUST NOT change any state but its own.

    `pick(weights)` returns an index into `weights` (all >= 1), each with probability
    weight / sum: MidoNet's ROUND_ROBIN, a weighted random choice per connection.
    """

    def pick(self, weights: Sequence[int]) -> int: ...


class RandomPicker:
    """Weighted random choice from a `random.Random` (seeded: reproducible)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()

    def pick(self, weights: Sequence[int]) -> int:
        r = self._rng.randrange(sum(weights))
        for i, w in enumerate(weights):
            if r < w:
                return i
            r -= w
        return len(weights) - 1  # unreachable with positive weights


RANDOM_PICKER = RandomPicker()


# -- compiled objects ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberSnap:
    id: str
    address: int
    port: int
    weight: int
    admin_up: bool
    status: str

    @property
    def candidate(self) -> bool:
        """Whether new connections may go to it."""
        return self.admin_up and self.status == "ACTIVE"

    def describe(self) -> str:
        return f"{ip_to_str(self.address)}:{self.port}"


@dataclass(frozen=True, slots=True)
class PoolSnap:
    id: str
    admin_up: bool
    status: str
    members: tuple[MemberSnap, ...]  # by id: the order a picker's index refers to


@dataclass(frozen=True, slots=True)
class VipSnap:
    id: str
    address: int
    port: int
    pool_id: str
    sticky: bool
    admin_up: bool


@dataclass(frozen=True, slots=True)
class LoadBalancerSnap:
    """A router's load balancer with its VIPs and pools, compiled for lookups."""

    id: str
    router_id: str
    admin_up: bool
    vips: Mapping[tuple[int, int], VipSnap]  # (address, port) -> VIP
    vip_addrs: frozenset[int]
    pools: Mapping[str, PoolSnap]
    member_addrs: frozenset[int]  # every member of every pool: replies come from them


def compile_load_balancers(
    lbs: Iterable[LoadBalancer],
    vips: Iterable[Vip],
    pools: Iterable[Pool],
    members: Iterable[PoolMember],
    routers: Iterable[str],
) -> Mapping[str, LoadBalancerSnap]:
    """The load balancers of the given routers, by router id (the lowest id if a router
    somehow has two: the model allows one)."""
    present = set(routers)
    members_of: dict[str, list[MemberSnap]] = {}
    for m in members:
        snap = MemberSnap(
            m.id, ip_from_str(m.address), m.protocol_port, m.weight, m.admin_state_up, m.status
        )
        members_of.setdefault(m.pool_id, []).append(snap)
    pools_of: dict[str, dict[str, PoolSnap]] = {}
    for p in pools:
        own = tuple(sorted(members_of.get(p.id, ()), key=lambda x: x.id))
        pools_of.setdefault(p.load_balancer_id, {})[p.id] = PoolSnap(
            p.id, p.admin_state_up, p.status, own
        )
    vips_of: dict[str, dict[tuple[int, int], VipSnap]] = {}
    for v in sorted(vips, key=lambda v: v.id):
        snap_v = VipSnap(
            v.id,
            ip_from_str(v.address),
            v.protocol_port,
            v.pool_id,
            v.session_persistence == "SOURCE_IP",
            v.admin_state_up,
        )
        vips_of.setdefault(v.load_balancer_id, {}).setdefault((snap_v.address, snap_v.port), snap_v)
    out: dict[str, LoadBalancerSnap] = {}
    for lb in sorted(lbs, key=lambda lb: lb.id):
        if lb.router_id not in present or lb.router_id in out:
            continue
        own_pools = pools_of.get(lb.id, {})
        own_vips = vips_of.get(lb.id, {})
        out[lb.router_id] = LoadBalancerSnap(
            id=lb.id,
            router_id=lb.router_id,
            admin_up=lb.admin_state_up,
            vips=MappingProxyType(own_vips),
            vip_addrs=frozenset(a for a, _ in own_vips),
            pools=MappingProxyType(own_pools),
            member_addrs=frozenset(m.address for p in own_pools.values() for m in p.members),
        )
    return MappingProxyType(out)


# -- the packet path -----------------------------------------------------------------------


def inbound(sim: Simulation, m: FlowMatch, lb: LoadBalancerSnap, node: TraceNode | None) -> bool:
    """DNAT a packet for a VIP to its connection's member. Returns False when the packet
    was dropped (`sim.drop` called), True when the router goes on with it (translated,
    or not for a VIP)."""
    sim.tags.add(lb.id)
    if m.eth_type != ETH_TYPE_IPV4 or m.ip_dst not in lb.vip_addrs:
        return True
    if m.ip_proto != PROTO_TCP:
        return True
    if m.ip_frag:
        sim.drop("a fragmented datagram to a VIP cannot be load balanced by ports", node)
        return False
    vip = lb.vips.get((m.ip_dst, m.tp_dst))
    if vip is None:
        return True
    sim.tags.add(vip.id)
    sim.stateful = True
    vnode = None
    if node is not None:
        text = f"VIP {ip_to_str(vip.address)}:{vip.port} ({vip.id}) of load balancer {lb.id}"
        vnode = node.add("vip", vip.id, text)
    client, cport = m.ip_src, m.tp_src
    key = NatKey("fwd_dnat", PROTO_TCP, client, cport, vip.address, vip.port, lb.id)
    sim.tags.add(nat_tag(key))
    binding = sim.nat_overlay.get(key) or sim.snap.flow_state.nat.get(key)
    if binding is not None:
        # An established connection keeps its member, whatever was disabled since.
        if key not in sim.nat_overlay:
            sim.state_refs[key] = None
        if vip.sticky:
            skey = _sticky_key(client, vip, lb)
            if skey in sim.snap.flow_state.nat:
                sim.state_refs[skey] = None  # the client's connections keep it alive
        _dnat(m, binding)
        if vnode is not None:
            to = f"{ip_to_str(binding.ip)}:{binding.port}"
            vnode.add("lb", vip.id, f"existing connection: member {to} ({key.describe()})")
        return True
    refused = _refusal(lb, vip)
    pool = lb.pools.get(vip.pool_id)
    sim.tags.add(vip.pool_id)
    if refused is None and pool is not None:
        refused = _pool_refusal(pool)
    if refused is not None or pool is None:
        why = refused or f"its pool {vip.pool_id} is not loaded"
        sim.drop(f"VIP {ip_to_str(vip.address)}:{vip.port}: {why}: no new connection", vnode)
        return False
    member, sticky_state = _choose(sim, pool, vip, lb, client, vnode)
    if member is None:
        text = f"VIP {ip_to_str(vip.address)}:{vip.port}: no active member in pool {pool.id}"
        sim.drop(text, vnode)
        return False
    binding = NatBinding(member.address, member.port)
    rev = nat_return(key, binding)
    sim.nat_overlay[key] = binding
    sim.nat_overlay[rev.key] = rev.binding
    sim.new_state[NatEntry(key, binding)] = None
    sim.new_state[rev] = None
    sim.tags.add(nat_tag(rev.key))
    if sticky_state is not None:
        sim.new_state[sticky_state] = None
    _dnat(m, binding)
    if vnode is not None:
        vnode.add("lb", member.id, f"dnat to member {member.describe()} ({key.describe()})")
    return True


def outbound(sim: Simulation, m: FlowMatch, lb: LoadBalancerSnap, node: TraceNode | None) -> None:
    """Translate a member's reply back to the VIP it was a connection of (if it is)."""
    if m.eth_type != ETH_TYPE_IPV4:
        return
    src = m.ip_src
    sim.tags.add(lb_member_tag(src))  # a member added or removed at this address
    if src not in lb.member_addrs:
        return
    if m.ip_proto != PROTO_TCP or m.ip_frag == 2:
        return  # a later fragment has no ports to find the connection by
    sim.stateful = True
    key = NatKey("rev_dnat", PROTO_TCP, m.ip_src, m.tp_src, m.ip_dst, m.tp_dst, lb.id)
    sim.tags.add(nat_tag(key))
    binding = sim.nat_overlay.get(key) or sim.snap.flow_state.nat.get(key)
    if binding is None:
        if node is not None:
            node.add("lb", lb.id, f"from a member, no VIP connection ({key.describe()})")
        return
    if key not in sim.nat_overlay:
        sim.state_refs[key] = None
    m.set_ip_src(binding.ip)
    m.set_tp_src(binding.port)
    if node is not None:
        vip = f"{ip_to_str(binding.ip)}:{binding.port}"
        node.add("lb", lb.id, f"reply of a VIP connection: source -> {vip} ({key.describe()})")


# -- helpers -------------------------------------------------------------------------------


def _sticky_key(client: int, vip: VipSnap, lb: LoadBalancerSnap) -> NatKey:
    return NatKey("sticky_dnat", PROTO_TCP, client, 0, vip.address, vip.port, lb.id)


def _dnat(m: FlowMatch, binding: NatBinding) -> None:
    m.set_ip_dst(binding.ip)
    m.set_tp_dst(binding.port)


def _refusal(lb: LoadBalancerSnap, vip: VipSnap) -> str | None:
    if not lb.admin_up:
        return f"load balancer {lb.id} is disabled"
    if not vip.admin_up:
        return "the VIP is disabled"
    return None


def _pool_refusal(pool: PoolSnap) -> str | None:
    if not pool.admin_up:
        return f"pool {pool.id} is disabled"
    if pool.status != "ACTIVE":
        return f"pool {pool.id} is {pool.status}"
    return None


def _choose(
    sim: Simulation,
    pool: PoolSnap,
    vip: VipSnap,
    lb: LoadBalancerSnap,
    client: int,
    node: TraceNode | None,
) -> tuple[MemberSnap | None, NatEntry | None]:
    """The member of a new connection, and the sticky entry to create (None: none new).

    Reads the pool's members (tagged: a change of any of them may change the choice)."""
    sim.tags.update(mem.id for mem in pool.members)
    candidates = [mem for mem in pool.members if mem.candidate]
    if node is not None:
        listed = ", ".join(
            f"{mem.describe()} weight {mem.weight}"
            + ("" if mem.candidate else f" ({_why_not(mem)})")
            for mem in pool.members
        )
        node.add("lb", pool.id, f"pool {pool.id} members: {listed or 'none'}")
    skey = None
    if vip.sticky:
        skey = _sticky_key(client, vip, lb)
        sim.tags.add(nat_tag(skey))
        held = sim.nat_overlay.get(skey) or sim.snap.flow_state.nat.get(skey)
        if held is not None:
            for mem in candidates:
                if mem.address == held.ip and mem.port == held.port:
                    if skey not in sim.nat_overlay:
                        sim.state_refs[skey] = None
                    if node is not None:
                        node.add("lb", mem.id, f"sticky: the client's member {mem.describe()}")
                    return mem, None
            if node is not None:
                was = f"{ip_to_str(held.ip)}:{held.port}"
                node.add("lb", None, f"sticky member {was} is no longer a candidate: choosing anew")
    if not candidates:
        return None, None
    chosen = candidates[sim.picker.pick([mem.weight for mem in candidates])]
    if node is not None:
        how = "weighted random" if len(candidates) > 1 else "the only candidate"
        sticky = ", now sticky for this client" if skey is not None else ""
        node.add("lb", chosen.id, f"chose member {chosen.describe()} ({how}{sticky})")
    if skey is None:
        return chosen, None
    entry = NatEntry(skey, NatBinding(chosen.address, chosen.port))
    sim.nat_overlay[skey] = entry.binding
    return chosen, entry


def _why_not(mem: MemberSnap) -> str:
    if not mem.admin_up:
        return "disabled"
    return mem.status
