"""The frozen topology snapshot a simulation reads: model objects compiled for speed.

Model objects keep addresses as text and relations as ids pointing upwards (a port names
its device, a route its router, a rule its chain). A simulation needs the opposite
direction and integers, on every packet; so everything is converted once, here: a
bridge knows its ports, per VLAN, the MACs of the router ports linked to it and the
addresses it can answer ARP for; a router holds its routes in a table whose lookup cost
depends on the number of distinct prefix lengths (at most 33), never on the size of the
cloud; every chain's rules are compiled into condition checks.

Learned state (a bridge's MAC table, a router's ARP table) is kept apart from the
compiled devices, so that the agent can swap it in O(1) (`with_state`) as entries are
learned, without recompiling anything.

A partial snapshot (an agent loads what its ports can reach) is fine: an object the
packet's path needs and the snapshot lacks raises `NotYetLoaded`. What cannot be
detected is a device loaded without all of its children, so a loader must load a bridge
with all its ports and DHCP subnets, a router with all its ports and routes, and a
chain with all its rules — or say that a router is a front (`fronts`: its inbound
filter and mirrors and the ports it is reached by, no routes), which the simulation
lets answer ARP and drop frames not addressed to it, and asks for whole before
routing through it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from tessera.model import (
    Bridge,
    Chain,
    DhcpSubnet,
    IpAddrGroup,
    Mirror,
    Port,
    PortGroup,
    Route,
    Router,
    Rule,
    StoredObject,
)
from tessera.model.devices import router_port_mac
from tessera.model.load_balancers import LoadBalancer, Pool, PoolMember, Vip
from tessera.packet.addr import ip_from_str, mac_from_str, prefix_mask
from tessera.simulation.errors import NotYetLoaded
from tessera.simulation.flowstate import EMPTY_FLOW_STATE, FlowStateView
from tessera.simulation.loadbalancer import LoadBalancerSnap, compile_load_balancers
from tessera.simulation.rules import (
    CompiledRule,
    FirstMatchFn,
    compile_conditions,
    compile_first_match,
    compile_rule,
)

MacTable = Mapping[tuple[int, int], str]
"""(vlan_id, mac) -> port id, as learned by a bridge."""
ArpTable = Mapping[int, tuple[int, float]]
"""ip -> (mac, expiry as Unix seconds), as learned by a router."""

_EMPTY: Mapping[Any, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PortSnap:
    id: str
    device_id: str
    is_router: bool
    admin_up: bool
    inbound_filter: str | None
    outbound_filter: str | None
    peer_id: str | None
    host_id: str | None
    interface_name: str | None
    tunnel_key: int
    vlan: int  # bridge ports: the VLAN segment (0 when the port has no vlan_id)
    # router ports (0 for bridge ports)
    address: int = 0
    network: int = 0
    netmask: int = 0
    length: int = 0
    mac: int = 0
    # Mirrors (ids) that copy what enters and what leaves the port: see `mirror.py`.
    inbound_mirrors: tuple[str, ...] = ()
    outbound_mirrors: tuple[str, ...] = ()

    def on_link(self, ip: int) -> bool:
        """Whether `ip` is in this router port's network."""
        return ip & self.netmask == self.network


@dataclass(frozen=True, slots=True)
class DhcpSubnetSnap:
    id: str
    network: int
    length: int
    gateway: int | None
    server: int
    server_mac: int  # a linked router port's when the server address is one, else derived
    dns: tuple[int, ...]
    mtu: int | None
    routes121: tuple[tuple[int, int, int], ...]  # (network, length, gateway)


@dataclass(frozen=True, slots=True)
class DhcpLease:
    """What the bridge hands out to one MAC."""

    subnet: DhcpSubnetSnap
    ip: int
    name: str


@dataclass(frozen=True, slots=True)
class BridgeSnap:
    id: str
    name: str
    admin_up: bool
    inbound_filter: str | None
    outbound_filter: str | None
    ports: tuple[str, ...]
    port_vlan: Mapping[str, int]  # each port's VLAN segment; also tells the bridge's ports
    segments: Mapping[int, tuple[str, ...]]  # VLAN -> ports, in flood order
    # MAC of a linked router port -> the bridge port linked to it: known, never learned.
    static_macs: Mapping[int, str]
    # Addresses answered by the bridge itself: ip -> (mac, tag of what says so).
    arp_known: Mapping[int, tuple[int, str]]
    dhcp_hosts: Mapping[int, DhcpLease]  # client MAC -> lease (enabled subnets only)
    dhcp_subnets: tuple[str, ...]
    # Peers of interior ports that the snapshot lacks: the bridge cannot know all it should.
    unresolved_peers: tuple[str, ...]
    inbound_mirrors: tuple[str, ...] = ()
    outbound_mirrors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteSnap:
    id: str
    type: str  # Normal | BlackHole | Reject
    dst: int
    dst_len: int
    src: int
    src_len: int
    src_mask: int
    next_hop_port: str | None
    gateway: int | None
    weight: int


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Routes grouped by destination prefix: one dict probe per distinct prefix length.

    Within one (length, network) bucket routes are sorted by longest source prefix, then
    lowest weight, then id, so the first one whose source matches wins.
    """

    levels: tuple[tuple[int, Mapping[int, tuple[RouteSnap, ...]]], ...]  # (mask, buckets)

    @classmethod
    def build(cls, routes: Iterable[RouteSnap]) -> RouteTable:
        by_len: dict[int, dict[int, list[RouteSnap]]] = {}
        for r in routes:
            by_len.setdefault(r.dst_len, {}).setdefault(r.dst, []).append(r)
        levels = []
        for length in sorted(by_len, reverse=True):
            buckets = {
                net: tuple(sorted(rs, key=lambda r: (-r.src_len, r.weight, r.id)))
                for net, rs in by_len[length].items()
            }
            levels.append((prefix_mask(length), MappingProxyType(buckets)))
        return cls(tuple(levels))

    def __len__(self) -> int:
        return sum(len(rs) for _, b in self.levels for rs in b.values())


@dataclass(frozen=True, slots=True)
class RouterSnap:
    id: str
    name: str
    admin_up: bool
    inbound_filter: str | None
    outbound_filter: str | None
    ports: tuple[str, ...]
    port_by_addr: Mapping[int, str]
    routes: RouteTable
    inbound_mirrors: tuple[str, ...] = ()
    outbound_mirrors: tuple[str, ...] = ()
    # Held as a front (`tessera.agent.reach`): the router, its inbound filter and
    # mirrors, and the ports it was reached by, no routes. Enough to answer ARP and
    # drop what is not addressed to it; routing through it asks for the whole router.
    front: bool = False


@dataclass(frozen=True, slots=True)
class ChainSnap:
    id: str
    name: str
    rules: tuple[CompiledRule, ...]
    first_match: FirstMatchFn
    # Everything evaluating this chain depends on: itself, its rules, the groups they name.
    tags: frozenset[str]
    missing_rules: tuple[str, ...]
    # What the chain was compiled from, so that a rebuild can reuse it (`previous`).
    source: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    # Addresses its `dnat` rules take in, with the ports they must come in by: a router
    # answers ARP for them on those ports (floating IPs, `arp.owns_floating`).
    dnat_addresses: Mapping[int, frozenset[str]] = field(
        default_factory=lambda: _EMPTY, compare=False, repr=False
    )


@dataclass(frozen=True, slots=True)
class MirrorSnap:
    """A mirror: copies of what matches any of `conditions` (none: every packet) go to
    `to_port`. The conditions are compiled like rules (`rules.compile_rule`), in one
    `first_match` function; `tags` are the mirror and the groups its conditions name."""

    id: str
    name: str
    to_port: str
    conditions: tuple[CompiledRule, ...]
    first_match: FirstMatchFn
    tags: frozenset[str]


@dataclass(frozen=True)
class Snapshot:
    """Compiled devices plus learned state; immutable, shared freely between threads."""

    ports: Mapping[str, PortSnap]
    bridges: Mapping[str, BridgeSnap]
    routers: Mapping[str, RouterSnap]
    chains: Mapping[str, ChainSnap]
    port_groups: Mapping[str, frozenset[str]]
    ip_addr_groups: Mapping[str, frozenset[int]]
    mac_tables: Mapping[str, MacTable] = field(default_factory=lambda: _EMPTY)
    arp_tables: Mapping[str, ArpTable] = field(default_factory=lambda: _EMPTY)
    # Connection tracking entries and NAT bindings (see `flowstate`): learned state too.
    flow_state: FlowStateView = EMPTY_FLOW_STATE
    # Port id -> the stateful port group whose id keys its connections (lowest if several).
    stateful_groups: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    # Router id -> its load balancer with VIPs, pools and members (`loadbalancer`).
    load_balancers: Mapping[str, LoadBalancerSnap] = field(default_factory=lambda: _EMPTY)
    mirrors: Mapping[str, MirrorSnap] = field(default_factory=lambda: _EMPTY)

    # -- lookups that tell a missing object apart ---------------------------------------

    def port(self, id: str) -> PortSnap:
        try:
            return self.ports[id]
        except KeyError:
            raise NotYetLoaded("port", id) from None

    def bridge(self, id: str) -> BridgeSnap:
        try:
            return self.bridges[id]
        except KeyError:
            raise NotYetLoaded("bridge", id) from None

    def router(self, id: str) -> RouterSnap:
        try:
            return self.routers[id]
        except KeyError:
            raise NotYetLoaded("router", id) from None

    def chain(self, id: str) -> ChainSnap:
        try:
            chain = self.chains[id]
        except KeyError:
            raise NotYetLoaded("chain", id) from None
        if chain.missing_rules:
            raise NotYetLoaded("rule", chain.missing_rules[0])
        return chain

    def mirror(self, id: str) -> MirrorSnap:
        try:
            return self.mirrors[id]
        except KeyError:
            raise NotYetLoaded("mirror", id) from None

    def mac_table(self, bridge_id: str) -> MacTable:
        return self.mac_tables.get(bridge_id, _EMPTY)

    def arp_table(self, router_id: str) -> ArpTable:
        return self.arp_tables.get(router_id, _EMPTY)

    def conn_device(self, port: PortSnap) -> str:
        """The "device" connections through `port` are keyed by: its stateful port
        group's id if it has one, else its bridge's or router's."""
        return self.stateful_groups.get(port.id, port.device_id)

    def with_state(
        self,
        mac_tables: Mapping[str, MacTable] | None = None,
        arp_tables: Mapping[str, ArpTable] | None = None,
        flow_state: FlowStateView | None = None,
    ) -> Snapshot:
        """The same compiled topology with other learned tables: O(1), nothing recompiled."""
        return replace(
            self,
            mac_tables=self.mac_tables if mac_tables is None else mac_tables,
            arp_tables=self.arp_tables if arp_tables is None else arp_tables,
            flow_state=self.flow_state if flow_state is None else flow_state,
        )

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_objects(
        cls,
        objects: Iterable[StoredObject] | Mapping[str, StoredObject],
        mac_tables: Mapping[str, MacTable] | None = None,
        arp_tables: Mapping[str, ArpTable] | None = None,
        *,
        previous: Snapshot | None = None,
        flow_state: FlowStateView | None = None,
        fronts: Iterable[str] = (),
    ) -> Snapshot:
        """Compile model objects (any kinds mixed; hosts and tunnel zones are ignored).
        `fronts`: routers given without their routes and other ports (`RouterSnap.front`).

        With `previous` (the snapshot this one replaces), chains whose chain, rules and
        groups are unchanged are taken from it instead of compiled again: compiling rules
        is most of the cost of a build, and a change touches few chains.
        """
        items = objects.values() if isinstance(objects, Mapping) else objects
        by_kind: dict[type, list[Any]] = {}
        for obj in items:
            by_kind.setdefault(type(obj), []).append(obj)
        port_objs: list[Port] = by_kind.get(Port, [])
        ports = {p.id: _compile_port(p) for p in port_objs}
        ports_of: dict[str, list[PortSnap]] = {}
        for p in ports.values():
            ports_of.setdefault(p.device_id, []).append(p)
        subnets_of: dict[str, list[DhcpSubnet]] = {}
        for s in by_kind.get(DhcpSubnet, []):
            subnets_of.setdefault(s.bridge_id, []).append(s)
        routes_of: dict[str, list[Route]] = {}
        for r in by_kind.get(Route, []):
            routes_of.setdefault(r.router_id, []).append(r)

        bridges = {
            b.id: _compile_bridge(b, ports_of.get(b.id, []), ports, subnets_of.get(b.id, []))
            for b in by_kind.get(Bridge, [])
        }
        front = frozenset(fronts)
        routers = {
            r.id: _compile_router(r, ports_of.get(r.id, []), routes_of.get(r.id, []), r.id in front)
            for r in by_kind.get(Router, [])
        }
        port_groups = {g.id: frozenset(g.port_ids) for g in by_kind.get(PortGroup, [])}
        stateful: dict[str, str] = {}
        for g in sorted(by_kind.get(PortGroup, []), key=lambda g: g.id, reverse=True):
            if g.stateful:
                stateful.update(dict.fromkeys(g.port_ids, g.id))
        ip_groups = {
            g.id: frozenset(ip_from_str(a) for a in g.addrs) for g in by_kind.get(IpAddrGroup, [])
        }
        rules = {r.id: r for r in by_kind.get(Rule, [])}
        old = previous.chains if previous is not None else _EMPTY
        chains = {
            c.id: _compile_chain(c, rules, port_groups, ip_groups, old.get(c.id))
            for c in by_kind.get(Chain, [])
        }
        mirrors = {
            m.id: _compile_mirror(m, port_groups, ip_groups) for m in by_kind.get(Mirror, [])
        }
        return cls(
            ports=MappingProxyType(ports),
            bridges=MappingProxyType(bridges),
            routers=MappingProxyType(routers),
            chains=MappingProxyType(chains),
            port_groups=MappingProxyType(port_groups),
            ip_addr_groups=MappingProxyType(ip_groups),
            mac_tables=mac_tables if mac_tables is not None else _EMPTY,
            arp_tables=arp_tables if arp_tables is not None else _EMPTY,
            flow_state=flow_state if flow_state is not None else EMPTY_FLOW_STATE,
            stateful_groups=MappingProxyType(stateful),
            load_balancers=compile_load_balancers(
                by_kind.get(LoadBalancer, []),
                by_kind.get(Vip, []),
                by_kind.get(Pool, []),
                by_kind.get(PoolMember, []),
                routers,
            ),
            mirrors=MappingProxyType(mirrors),
        )


# -- compilers ----------------------------------------------------------------------------


def _router_mac(port: Port) -> int:
    """The port's MAC, or the one the store would have given it (`router_port_mac` of
    its tunnel key; of bits of its id for a port without one, as in tests)."""
    if port.port_mac is not None:
        return mac_from_str(port.port_mac)
    return mac_from_str(router_port_mac(port.tunnel_key or (uuid.UUID(port.id).int & 0xFFFFFF)))


def _compile_port(p: Port) -> PortSnap:
    common: dict[str, Any] = {
        "id": p.id,
        "device_id": p.device_id,
        "is_router": p.type == "Router",
        "admin_up": p.admin_state_up,
        "inbound_filter": p.inbound_filter_id,
        "outbound_filter": p.outbound_filter_id,
        "peer_id": p.peer_id,
        "host_id": p.host_id,
        "interface_name": p.interface_name,
        "tunnel_key": p.tunnel_key,
        "vlan": p.vlan_id or 0,
        "inbound_mirrors": tuple(p.inbound_mirror_ids),
        "outbound_mirrors": tuple(p.outbound_mirror_ids),
    }
    if p.type != "Router":
        return PortSnap(**common)
    assert p.port_address is not None and p.network_length is not None
    netmask = prefix_mask(p.network_length)
    address = ip_from_str(p.port_address)
    return PortSnap(
        **common,
        address=address,
        network=address & netmask,
        netmask=netmask,
        length=p.network_length,
        mac=_router_mac(p),
    )


def _compile_bridge(
    b: Bridge,
    own: list[PortSnap],
    ports: Mapping[str, PortSnap],
    subnets: list[DhcpSubnet],
) -> BridgeSnap:
    own = sorted(own, key=lambda p: p.id)
    segments: dict[int, list[str]] = {}
    static_macs: dict[int, str] = {}
    arp_known: dict[int, tuple[int, str]] = {}
    unresolved: list[str] = []
    for p in own:
        segments.setdefault(p.vlan, []).append(p.id)
        if p.peer_id is None:
            continue
        peer = ports.get(p.peer_id)
        if peer is None:
            unresolved.append(p.peer_id)
        elif peer.is_router:
            static_macs[peer.mac] = p.id
            arp_known[peer.address] = (peer.mac, peer.id)
    dhcp_hosts: dict[int, DhcpLease] = {}
    for s in sorted(subnets, key=lambda s: s.id):
        if not s.enabled:
            continue
        snap = _compile_subnet(s, arp_known)
        # Clients renewing unicast ARP for the server: the bridge answers for it too.
        arp_known.setdefault(snap.server, (snap.server_mac, s.id))
        for h in s.hosts:
            mac = mac_from_str(h.mac_addr)
            ip = ip_from_str(h.ip_addr)
            dhcp_hosts.setdefault(mac, DhcpLease(snap, ip, h.name))
            arp_known.setdefault(ip, (mac, s.id))
    return BridgeSnap(
        id=b.id,
        name=b.name,
        admin_up=b.admin_state_up,
        inbound_filter=b.inbound_filter_id,
        outbound_filter=b.outbound_filter_id,
        ports=tuple(p.id for p in own),
        port_vlan=MappingProxyType({p.id: p.vlan for p in own}),
        segments=MappingProxyType({v: tuple(ids) for v, ids in segments.items()}),
        static_macs=MappingProxyType(static_macs),
        arp_known=MappingProxyType(arp_known),
        dhcp_hosts=MappingProxyType(dhcp_hosts),
        dhcp_subnets=tuple(sorted(s.id for s in subnets)),
        unresolved_peers=tuple(unresolved),
        inbound_mirrors=tuple(b.inbound_mirror_ids),
        outbound_mirrors=tuple(b.outbound_mirror_ids),
    )


def _compile_subnet(s: DhcpSubnet, arp_known: Mapping[int, tuple[int, str]]) -> DhcpSubnetSnap:
    network = ip_from_str(s.subnet_prefix)
    gateway = ip_from_str(s.default_gateway) if s.default_gateway else None
    if s.server_addr:
        server = ip_from_str(s.server_addr)
    elif gateway is not None:
        server = gateway
    else:
        server = network + 1  # the subnet's first address, as MidoNet does
    known = arp_known.get(server)
    if known is not None:
        server_mac = known[0]
    else:
        digest = hashlib.sha256(s.id.encode()).digest()
        server_mac = (0x02 << 40) | int.from_bytes(digest[:5], "big")
    routes = tuple(
        (ip_from_str(r.destination_prefix), r.destination_length, ip_from_str(r.gateway_addr))
        for r in s.opt121_routes
    )
    return DhcpSubnetSnap(
        id=s.id,
        network=network,
        length=s.subnet_length,
        gateway=gateway,
        server=server,
        server_mac=server_mac,
        dns=tuple(ip_from_str(a) for a in s.dns_server_addrs),
        mtu=s.interface_mtu,
        routes121=routes,
    )


def _compile_router(
    r: Router, own: list[PortSnap], routes: list[Route], front: bool = False
) -> RouterSnap:
    own = sorted(own, key=lambda p: p.id)
    table = RouteTable.build(_compile_route(x) for x in routes)
    return RouterSnap(
        id=r.id,
        name=r.name,
        admin_up=r.admin_state_up,
        inbound_filter=r.inbound_filter_id,
        outbound_filter=r.outbound_filter_id,
        ports=tuple(p.id for p in own),
        port_by_addr=MappingProxyType({p.address: p.id for p in own}),
        routes=table,
        inbound_mirrors=tuple(r.inbound_mirror_ids),
        outbound_mirrors=tuple(r.outbound_mirror_ids),
        front=front,
    )


def _compile_route(r: Route) -> RouteSnap:
    dst_mask = prefix_mask(r.dst_network_length)
    src_mask = prefix_mask(r.src_network_length)
    return RouteSnap(
        id=r.id,
        type=r.type,
        dst=ip_from_str(r.dst_network_addr) & dst_mask,
        dst_len=r.dst_network_length,
        src=ip_from_str(r.src_network_addr) & src_mask,
        src_len=r.src_network_length,
        src_mask=src_mask,
        next_hop_port=r.next_hop_port,
        gateway=ip_from_str(r.next_hop_gateway) if r.next_hop_gateway else None,
        weight=r.weight,
    )


def _compile_chain(
    c: Chain,
    rules: Mapping[str, Rule],
    port_groups: Mapping[str, frozenset[str]],
    ip_groups: Mapping[str, frozenset[int]],
    previous: ChainSnap | None = None,
) -> ChainSnap:
    own = tuple(rules.get(rule_id) for rule_id in c.rule_ids)
    groups: list[frozenset[str] | frozenset[int] | None] = []
    for r in own:
        if r is None:
            continue
        if r.port_group is not None:
            groups.append(port_groups.get(r.port_group))
        for gid in (r.ip_addr_group_src, r.ip_addr_group_dst):
            if gid is not None:
                groups.append(ip_groups.get(gid))
    source = (c, own, tuple(groups))
    if previous is not None and previous.source == source:
        return previous
    compiled: list[CompiledRule] = []
    missing: list[str] = []
    tags = {c.id}
    # A rule unchanged at the same position, naming no group, compiles the same.
    was: tuple[Rule | None, ...] = previous.source[1] if previous is not None else ()
    reuse = {cr.position: cr for cr in previous.rules} if previous is not None else {}
    for position, rule_id in enumerate(c.rule_ids, start=1):
        rule = rules.get(rule_id)
        if rule is None:
            missing.append(rule_id)
            continue
        cr_old = reuse.get(position)
        if (
            cr_old is not None
            and not cr_old.group_tags
            and position <= len(was)
            and was[position - 1] == rule
        ):
            cr = cr_old
        else:
            cr = compile_rule(rule, position, port_groups, ip_groups)
        compiled.append(cr)
        tags.add(rule.id)
        tags.update(cr.group_tags)
    return ChainSnap(
        id=c.id,
        name=c.name,
        rules=tuple(compiled),
        first_match=compile_first_match(
            compiled, previous.first_match if previous is not None else None
        ),
        tags=frozenset(tags),
        missing_rules=tuple(missing),
        source=source,
        dnat_addresses=MappingProxyType(_dnat_addresses(r for r in own if r is not None)),
    )


def _compile_mirror(
    m: Mirror,
    port_groups: Mapping[str, frozenset[str]],
    ip_groups: Mapping[str, frozenset[int]],
) -> MirrorSnap:
    compiled = tuple(
        compile_conditions(c, m.id, position, port_groups, ip_groups)
        for position, c in enumerate(m.conditions, start=1)
    )
    tags = {m.id}
    for c in compiled:
        tags.update(c.group_tags)
    return MirrorSnap(
        id=m.id,
        name=m.name,
        to_port=m.to_port_id,
        conditions=compiled,
        first_match=compile_first_match(compiled),
        tags=frozenset(tags),
    )


def _dnat_addresses(rules: Iterable[Rule]) -> dict[int, frozenset[str]]:
    """The single addresses (/32, not inverted) that `dnat` rules rewrite for packets
    coming in by named ports (`in_ports`, not inverted): what a floating IP is."""
    out: dict[int, frozenset[str]] = {}
    for r in rules:
        if r.type != "dnat" or r.nw_dst_address is None or r.nw_dst_length != 32:
            continue
        if r.inv_nw_dst or r.inv_in_ports or not r.in_ports:
            continue
        address = ip_from_str(r.nw_dst_address)
        out[address] = out.get(address, frozenset()) | frozenset(r.in_ports)
    return out
