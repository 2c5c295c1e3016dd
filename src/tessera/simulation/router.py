"""The router: ARP, its own addresses, TTL, longest-prefix routing, next-hop MACs.

In order, as MidoNet's router does:
1. a router that is down drops, answering ICMP administratively prohibited from the
   ingress port (see `icmp.prohibited`); ARP is handled before any filter (`arp.py`);
   anything but IPv4 is dropped, and so is a frame not sent to the ingress port's MAC
   (a router an agent holds only as a front, `RouterSnap.front`, gets this far: what
   passes needs its routes, and raises `NotYetLoaded` for the whole router);
2. the router's inbound filter (a `reject` answers ICMP administratively prohibited; a
   `drop` of a first fragment answers "fragmentation needed", see below), then its load
   balancer: a VIP connection's packet is DNATed to its member (`loadbalancer.inbound`);
3. a packet for one of the router's own addresses is delivered to it: a ping is
   answered, anything else dropped;
4. TTL 1 or less: ICMP time exceeded;
5. route lookup — longest destination prefix, then longest source prefix, then lowest
   weight (then route id, so the choice is stable) — no route: ICMP net unreachable;
   BlackHole: silent drop; Reject: ICMP unreachable (administratively prohibited, as in
   MidoNet);
6. an egress port that is down: ICMP administratively prohibited (MidoNet's router
   port rejects); the router's outbound filter, with the egress port as `out_ports`
   (its verdicts answered as the inbound filter's), then the load balancer's reverse
   translation of a member's reply (`loadbalancer.outbound`);
7. the next hop's MAC (the peer's for a router-to-router link, else ARP; see
   `arp.resolve`), then the rewrites: source MAC := egress port's, destination MAC :=
   next hop's, TTL - 1.

A filter that drops a first fragment makes the router answer ICMP "fragmentation
needed" from the ingress port's address (MidoNet's RouterBase.dropIn; `icmp.frag_needed`),
so that a sender whose datagrams a filter cannot pass in pieces — dynamic NAT, which has
no ports to read in later fragments; a rule written for first fragments — falls back to
path-MTU discovery. MidoNet answered only for its inbound filter; tessera answers for
the outbound filter too, where source NAT lives, so that a fragmented datagram through
SNAT is not lost without a word.
"""

from __future__ import annotations

from tessera.packet import icmp as icmp_codes
from tessera.packet.addr import ip_to_str
from tessera.packet.ethernet import ETH_TYPE_ARP, ETH_TYPE_IPV4
from tessera.packet.ipv4 import PROTO_ICMP
from tessera.packet.match import FlowMatch
from tessera.simulation import arp, icmp, loadbalancer
from tessera.simulation.actions import DeviceAction, ToPort
from tessera.simulation.chain import apply_chain
from tessera.simulation.context import Simulation
from tessera.simulation.errors import NotYetLoaded
from tessera.simulation.port import reject
from tessera.simulation.result import TraceNode
from tessera.simulation.topology import PortSnap, RouterSnap, RouteSnap, RouteTable


def lookup(table: RouteTable, m: FlowMatch) -> RouteSnap | None:
    """The winning route for the packet, reading the source address only when a
    candidate route has a source prefix."""
    dst = m.ip_dst
    src = -1
    for mask, buckets in table.levels:
        candidates = buckets.get(dst & mask)
        if candidates is None:
            continue
        for r in candidates:
            if not r.src_len:
                return r
            if src < 0:
                src = m.ip_src
            if src & r.src_mask == r.src:
                return r
    return None


def process(
    sim: Simulation,
    m: FlowMatch,
    router: RouterSnap,
    in_port: PortSnap,
    hops: int,
    node: TraceNode | None,
) -> DeviceAction:
    sim.tags.add(router.id)
    if not router.admin_up:
        icmp.prohibited(sim, m, in_port, hops, node)
        sim.drop(f"router {router.name or router.id} is down", node)
        return None
    eth_type = m.eth_type
    if eth_type == ETH_TYPE_ARP:
        arp.router_arp(sim, m, router, in_port, hops, node)
        return None
    if eth_type != ETH_TYPE_IPV4:
        sim.drop(f"EtherType {eth_type:#06x} is not routed", node)
        return None
    if m.eth_dst != in_port.mac:
        sim.drop("frame not addressed to the router port's MAC", node)
        return None
    if router.front:
        # Held without its routes (`RouterSnap.front`): what is routed needs them all.
        raise NotYetLoaded("router", router.id)
    if router.inbound_filter is not None:
        verdict = apply_chain(
            sim, router.inbound_filter, m, in_port.id, None, node, "inbound filter", router.id
        )
        if verdict != "accept":
            _refuse(sim, m, in_port, verdict, hops, node)
            return None
    lb = sim.snap.load_balancers.get(router.id)
    if lb is not None and not loadbalancer.inbound(sim, m, lb, node):
        return None

    dst = m.ip_dst
    if dst in router.port_by_addr:
        _deliver_locally(sim, m, in_port, hops, node)
        return None

    if not m.ip_ttl_above(1):
        icmp.send_error(
            sim, m, in_port, icmp_codes.TIME_EXCEEDED, icmp_codes.TTL_EXCEEDED, hops, node
        )
        sim.drop("TTL exceeded", node)
        return None

    route = lookup(router.routes, m)
    if route is None:
        icmp.send_error(
            sim, m, in_port, icmp_codes.DEST_UNREACHABLE, icmp_codes.NET_UNREACHABLE, hops, node
        )
        sim.drop(f"no route to {ip_to_str(dst)}", node)
        return None
    sim.tags.add(route.id)
    if node is not None:
        node.add("route", route.id, _describe(route))
    if route.type == "BlackHole":
        sim.drop(f"BlackHole route to {ip_to_str(route.dst)}/{route.dst_len}", node)
        return None
    if route.type == "Reject":
        icmp.send_error(
            sim, m, in_port, icmp_codes.DEST_UNREACHABLE, icmp_codes.ADMIN_PROHIBITED, hops, node
        )
        sim.drop(f"Reject route to {ip_to_str(route.dst)}/{route.dst_len}", node)
        return None

    assert route.next_hop_port is not None  # the model requires it for Normal routes
    out_port = sim.snap.port(route.next_hop_port)
    if out_port.device_id != router.id:
        sim.drop(f"route {route.id} leads to a port of another device", node)
        return None
    sim.tags.add(out_port.id)
    if not out_port.admin_up:  # before ARP: nothing may be sent out of a down port
        icmp.send_error(
            sim, m, in_port, icmp_codes.DEST_UNREACHABLE, icmp_codes.ADMIN_PROHIBITED, hops, node
        )
        sim.drop(f"port {out_port.id} is down", node)
        return None
    if router.outbound_filter is not None:
        verdict = apply_chain(
            sim,
            router.outbound_filter,
            m,
            in_port.id,
            out_port.id,
            node,
            "outbound filter",
            router.id,
        )
        if verdict != "accept":
            _refuse(sim, m, in_port, verdict, hops, node)
            return None
    if lb is not None:
        loadbalancer.outbound(sim, m, lb, node)
    next_hop = route.gateway if route.gateway is not None else dst
    mac = arp.resolve(
        sim, m, router, out_port, next_hop, route.gateway is None, in_port, hops, node
    )
    if mac is None:
        return None
    m.set_eth_src(out_port.mac)
    m.set_eth_dst(mac)
    m.decrement_ip_ttl()
    return ToPort(out_port.id, in_port, m)


def _refuse(
    sim: Simulation,
    m: FlowMatch,
    in_port: PortSnap,
    verdict: str,
    hops: int,
    node: TraceNode | None,
) -> None:
    """End the branch a router filter refused; a dropped first fragment is answered."""
    if verdict == "drop":
        icmp.frag_needed(sim, m, in_port, hops, node)
    reject(sim, m, in_port, verdict, hops, node)


def _deliver_locally(
    sim: Simulation, m: FlowMatch, in_port: PortSnap, hops: int, node: TraceNode | None
) -> None:
    if (
        m.ip_proto == PROTO_ICMP
        and m.tp_src == icmp_codes.ECHO_REQUEST
        and m.tp_dst == 0
        and m.ip_frag == 0
    ):
        if icmp.send_echo_reply(sim, m, in_port, hops, node):
            sim.consume("ping answered by the router", node)
        else:
            sim.drop("malformed ICMP echo request", node)
        return
    sim.drop(f"addressed to the router ({ip_to_str(m.ip_dst)}): only ping is answered", node)


def _describe(route: RouteSnap) -> str:
    text = f"route {ip_to_str(route.dst)}/{route.dst_len}"
    if route.src_len:
        text += f" from {ip_to_str(route.src)}/{route.src_len}"
    text += f" {route.type}"
    if route.type == "Normal":
        via = f" via {ip_to_str(route.gateway)}" if route.gateway is not None else ""
        text += f" to port {route.next_hop_port}{via}"
    return text + f" (weight {route.weight})"
