"""ARP: a bridge answering for addresses it knows, a router answering for its ports,
learning from what it hears, and resolving its next hops.

A bridge sends a request for a linked router port's address to that port alone, so the
router answers and learns the asker; it answers a request for a DHCP host's address
itself, out of the port the request came in by. Either way such requests are never
flooded (and never cross hosts). The bridge stays silent when the asker is the
address's owner (an address conflict probe, RFC 5227): that one must go unanswered.

A router learns the sender of a request for its own address and of a reply addressed
to it (or a gratuitous one), if the sender is on the port's network — as MidoNet does;
from outside that network it neither answers nor learns. It also answers, with the
port's MAC, for a floating address on that port: one that a `dnat` rule of its inbound
filter takes in (destination that single address, `in_ports` naming the port) and that
lies in the port's network — what the Neutron translation writes for a floating IP, and
what MidoNet answered through the external network's ARP table. Deriving it from the
rules keeps one source of truth: the address is answered for exactly while the rule
that takes its packets in exists, and the answer carries the chain's tags.

Every address the router's decision depends on is read through the flow match (sender
and target addresses are its `ip_src`/`ip_dst`), so that the mask holds them; only the
MACs inside the message, which no flow match holds, come from its body, and that makes
the result uncacheable.

Resolution never drops the first packet of a new destination: the router emits an ARP
request and the packet is held (`Verdict.HOLD`); the agent simulates it again when the
entry arrives. If the request was answered inside this same simulation (a bridge that
knows the address), forwarding goes on at once.
"""

from __future__ import annotations

from tessera.packet import arp as arp_codes
from tessera.packet import icmp as icmp_codes
from tessera.packet.addr import BROADCAST_MAC, ip_to_str, mac_to_str
from tessera.packet.arp import Arp
from tessera.packet.builders import arp_reply, arp_request
from tessera.packet.errors import PacketError
from tessera.packet.match import FlowMatch
from tessera.simulation import icmp
from tessera.simulation.context import Simulation
from tessera.simulation.result import ArpLearned, ArpWait, TraceNode
from tessera.simulation.tags import arp_tag
from tessera.simulation.topology import BridgeSnap, PortSnap, RouterSnap

ARP_LIFETIME = 3600.0
"""Seconds a learned entry stays valid (MidoNet's ARP expiration)."""


def _arp_body(sim: Simulation, node: TraceNode | None) -> Arp | None:
    try:
        body = sim.packet().payload
    except PacketError as exc:
        sim.drop(f"malformed ARP: {exc}", node)
        return None
    if not isinstance(body, Arp):
        sim.drop("malformed ARP", node)
        return None
    return body


def toward_router(
    sim: Simulation,
    m: FlowMatch,
    bridge: BridgeSnap,
    in_port: PortSnap,
    node: TraceNode | None,
) -> str | None:
    """The bridge port linked to the router port that owns the requested address, in the
    asker's VLAN segment; None if the address is not a linked router port's there."""
    known = bridge.arp_known.get(m.ip_dst)
    if known is None:
        return None
    mac, owner = known
    link = bridge.static_macs.get(mac)
    if link is None or link == in_port.id or bridge.port_vlan.get(link) != in_port.vlan:
        return None
    if sim.snap.port(link).peer_id != owner:
        return None  # a DHCP server sharing the router port's MAC: the bridge answers
    sim.tags.add(owner)
    if node is not None:
        node.add("forward", link, f"ARP for router port {owner}: to port {link} only")
    return link


def bridge_reply(
    sim: Simulation,
    m: FlowMatch,
    bridge: BridgeSnap,
    in_port: PortSnap,
    hops: int,
    node: TraceNode | None,
) -> bool:
    """Answer an ARP request (the caller checked it is one) if the bridge knows the
    address; False lets the bridge forward it."""
    known = bridge.arp_known.get(m.ip_dst)
    if known is None:
        return False
    sim.uncacheable = True
    request = _arp_body(sim, node)
    if request is None:
        return True
    mac, tag = known
    sim.tags.add(tag)
    if request.sender_mac == mac or m.ip_src == m.ip_dst:
        return False  # the owner probing or announcing: not ours to answer
    reply = arp_reply(
        mac, request.target_ip, request.sender_mac, request.sender_ip, vlan_id=sim.packet().vlan_id
    )
    gnode = None
    if node is not None:
        text = f"ARP reply: {ip_to_str(request.target_ip)} is at {mac_to_str(mac)}"
        gnode = node.add("generated", in_port.id, text)
    sim.generate(in_port.id, reply, "arp_reply", hops, gnode)
    sim.consume("ARP request answered by the bridge", node)
    return True


def router_arp(
    sim: Simulation,
    m: FlowMatch,
    router: RouterSnap,
    port: PortSnap,
    hops: int,
    node: TraceNode | None,
) -> None:
    """An ARP packet entering a router port: answer, learn, or ignore it."""
    sim.uncacheable = True
    dst = m.eth_dst
    if dst != BROADCAST_MAC and dst != port.mac:
        sim.drop("ARP frame not addressed to the router port", node)
        return
    op = m.ip_proto
    if op not in (arp_codes.REQUEST, arp_codes.REPLY):
        sim.drop(f"ARP opcode {op} is not handled", node)
        return
    spa, tpa = m.ip_src, m.ip_dst  # the sender and target protocol addresses
    if not port.on_link(spa):
        sim.drop(f"ARP from {ip_to_str(spa)}, outside the port's network", node)
        return
    msg = _arp_body(sim, node)
    if msg is None:
        return
    if op == arp_codes.REQUEST:
        if tpa == spa:
            learn(sim, router, spa, msg.sender_mac, node)
            sim.consume("gratuitous ARP request learned", node)
            return
        if tpa != port.address and not owns_floating(sim, router, port, tpa):
            sim.drop(f"ARP request for {ip_to_str(tpa)}, not the port's address", node)
            return
        learn(sim, router, spa, msg.sender_mac, node)
        reply = arp_reply(port.mac, tpa, msg.sender_mac, spa)
        gnode = None
        if node is not None:
            what = "" if tpa == port.address else f" for floating address {ip_to_str(tpa)}"
            gnode = node.add("generated", port.id, f"ARP reply from port {port.id}{what}")
        sim.generate(port.id, reply, "arp_reply", hops, gnode)
        sim.consume("ARP request answered by the router", node)
        return
    gratuitous = tpa == spa
    if not gratuitous and (tpa != port.address or msg.target_mac != port.mac):
        sim.drop("ARP reply not addressed to the router port", node)
        return
    learn(sim, router, spa, msg.sender_mac, node)
    sim.consume("ARP reply learned", node)


def owns_floating(sim: Simulation, router: RouterSnap, port: PortSnap, ip: int) -> bool:
    """Whether `ip` is a floating address of `router` on `port`: a `dnat` rule of its
    inbound filter takes in that one address (/32) by that port, and the address is in
    the port's network. The answer depends on the filter's rules, hence its tags."""
    if router.inbound_filter is None or not port.on_link(ip):
        return False
    chain = sim.snap.chain(router.inbound_filter)
    sim.tags |= chain.tags
    return port.id in chain.dnat_addresses.get(ip, ())


def learn(sim: Simulation, router: RouterSnap, ip: int, mac: int, node: TraceNode | None) -> None:
    sim.arp_overlay[(router.id, ip)] = mac
    sim.tags.add(arp_tag(router.id, ip))
    update = ArpLearned(router.id, ip, mac, sim.now + ARP_LIFETIME)
    if update not in sim.updates:
        sim.updates.append(update)
    if node is not None:
        node.add("learn", router.id, f"ARP {ip_to_str(ip)} is at {mac_to_str(mac)}")


def resolve(
    sim: Simulation,
    m: FlowMatch,
    router: RouterSnap,
    out_port: PortSnap,
    next_hop: int,
    on_link: bool,
    in_port: PortSnap,
    hops: int,
    node: TraceNode | None,
) -> int | None:
    """The MAC of `next_hop` behind `out_port`, or None when the branch ended (held for
    ARP, or unreachable after ARP failed). `on_link`: the next hop is the destination
    itself (host unreachable if it does not answer), not a gateway (net unreachable)."""
    if out_port.peer_id is not None:
        peer = sim.snap.port(out_port.peer_id)
        if peer.is_router:
            sim.tags.add(peer.id)
            return peer.mac
    key = (router.id, next_hop)
    sim.tags.add(arp_tag(router.id, next_hop))
    mac = sim.arp_overlay.get(key)
    if mac is not None:
        return mac
    entry = sim.snap.arp_table(router.id).get(next_hop)
    if entry is not None and entry[1] > sim.now:
        return entry[0]
    if key in sim.arp_failed:
        code = icmp_codes.HOST_UNREACHABLE if on_link else icmp_codes.NET_UNREACHABLE
        icmp.send_error(sim, m, in_port, icmp_codes.DEST_UNREACHABLE, code, hops, node)
        sim.drop(f"{ip_to_str(next_hop)} does not answer ARP", node)
        return None
    request = arp_request(out_port.mac, out_port.address, next_hop)
    gnode = None
    if node is not None:
        gnode = node.add("generated", out_port.id, f"ARP request: who has {ip_to_str(next_hop)}?")
    sim.generate(out_port.id, request, "arp_request", hops, gnode)
    mac = sim.arp_overlay.get(key)
    if mac is not None:
        return mac
    sim.hold(ArpWait(router.id, next_hop, out_port.id), node)
    return None
