"""ICMP a router generates: echo replies to its own addresses, and errors.

Errors (TTL exceeded, net/host unreachable, administratively prohibited) leave by the
router port the packet came in on, from that port's address and MAC, towards the MAC
the packet came from — the previous hop on that link — so no route lookup or ARP is
needed to send them back (MidoNet routed them; going back the way the packet came gives
the same answer on every topology a packet can arrive through, without waiting on ARP).

Whether an error may be sent is decided on the flow match, so that the decision is in
the mask: never about an ICMP error, a later fragment, or a packet whose source is not
one host or whose destination is broadcast or multicast (RFC 1122 §3.2.2).

"Fragmentation needed" (`frag_needed`) answers a first fragment a router's filter
dropped, as MidoNet's RouterBase.dropIn does: see `frag_needed`.
"""

from __future__ import annotations

from dataclasses import replace

from tessera.packet import icmp
from tessera.packet.addr import BROADCAST_IP, is_multicast_ip
from tessera.packet.builders import icmp_echo_reply_for, icmp_error_for
from tessera.packet.errors import PacketError
from tessera.packet.ethernet import ETH_TYPE_IPV4, Ethernet
from tessera.packet.ipv4 import PROTO_ICMP
from tessera.packet.match import FlowMatch
from tessera.simulation.context import Simulation
from tessera.simulation.result import TraceNode
from tessera.simulation.topology import PortSnap

_NAMES = {
    (icmp.TIME_EXCEEDED, icmp.TTL_EXCEEDED): "time exceeded",
    (icmp.DEST_UNREACHABLE, icmp.NET_UNREACHABLE): "net unreachable",
    (icmp.DEST_UNREACHABLE, icmp.HOST_UNREACHABLE): "host unreachable",
    (icmp.DEST_UNREACHABLE, icmp.ADMIN_PROHIBITED): "administratively prohibited",
    (icmp.DEST_UNREACHABLE, icmp.FRAGMENTATION_NEEDED): "fragmentation needed",
}

FRAG_NEEDED_MTU = 576
"""The next-hop MTU "fragmentation needed" announces. The router drops the fragment for
being a fragment, not for its size, so no size would let it through; it names the
datagram size every IPv4 host and path must carry (RFC 791), so that a sender doing
path-MTU discovery sends datagrams no link fragments again. (MidoNet sent 0, "unknown",
which Linux turns into its 552-byte floor with path-MTU discovery switched off.)"""


def prohibited(
    sim: Simulation,
    m: FlowMatch,
    port: PortSnap,
    hops: int,
    node: TraceNode | None,
    *,
    from_down_port: bool = False,
) -> None:
    """Answer "communication administratively prohibited" from router `port`, as MidoNet
    does for a router or router port that is down: only about an IPv4 packet sent to the
    port's MAC, so that a flood reaching a down router makes nobody an error about
    traffic that was never for it."""
    if m.eth_type == ETH_TYPE_IPV4 and m.eth_dst == port.mac:
        send_error(
            sim,
            m,
            port,
            icmp.DEST_UNREACHABLE,
            icmp.ADMIN_PROHIBITED,
            hops,
            node,
            from_down_port=from_down_port,
        )


def frag_needed(
    sim: Simulation, m: FlowMatch, port: PortSnap, hops: int, node: TraceNode | None
) -> None:
    """Answer "fragmentation needed" from router `port` (where the packet came in) when
    the packet a filter of the router dropped is a first fragment (MidoNet's
    RouterBase.dropIn): filters that cannot judge a datagram by its fragments (dynamic
    NAT, rules on ports that later fragments lack) then push the sender to path-MTU
    discovery instead of losing its datagrams silently.

    Not an amplifier: one error per dropped first fragment — so at most one per datagram,
    never about a later fragment — and the error (headers plus 8 bytes of the fragment)
    is smaller than the fragment. The fragment kind is read through the match, so a drop
    flow made for an unfragmented packet does not swallow the first fragments that must
    be answered."""
    if m.ip_frag != 1:
        return
    if node is not None:
        text = "a first fragment was dropped: its sender is told to send smaller datagrams"
        node.add("note", None, text)
    code = icmp.FRAGMENTATION_NEEDED
    send_error(sim, m, port, icmp.DEST_UNREACHABLE, code, hops, node, mtu=FRAG_NEEDED_MTU)


def error_allowed(m: FlowMatch) -> bool:
    if m.ip_frag == 2:
        return False
    src = m.ip_src
    if src == 0 or src == BROADCAST_IP or is_multicast_ip(src) or src >> 24 == 127:
        return False
    dst = m.ip_dst
    if dst == BROADCAST_IP or is_multicast_ip(dst):
        return False
    return not (m.ip_proto == PROTO_ICMP and m.tp_src in icmp.ERROR_TYPES)


def send_error(
    sim: Simulation,
    m: FlowMatch,
    port: PortSnap,
    icmp_type: int,
    code: int,
    hops: int,
    node: TraceNode | None,
    *,
    from_down_port: bool = False,
    mtu: int = 0,
) -> None:
    """Send an ICMP error about the packet on this branch back out of router `port`
    (`from_down_port`: even though `port` is down, the error being its refusal; `mtu`:
    the next-hop MTU of "fragmentation needed")."""
    name = _NAMES.get((icmp_type, code), f"type {icmp_type} code {code}")
    if not error_allowed(m):
        if node is not None:
            node.add("note", None, f"no ICMP {name}: not sent about this kind of packet")
        return
    previous_hop = m.eth_src
    ip = sim.current_ip(m)
    if ip is None:
        return
    try:
        error = icmp_error_for(ip, icmp_type, code, port.address, mtu=mtu)
    except PacketError:
        error = None
    if error is None:
        return
    eth = Ethernet(previous_hop, port.mac, ETH_TYPE_IPV4, error, sim.vlan_id())
    gnode = None
    if node is not None:
        what = f" (next-hop MTU {mtu})" if mtu else ""
        gnode = node.add("generated", port.id, f"ICMP {name}{what} from port {port.id}")
    sim.generate(port.id, eth, "icmp_error", hops, gnode, from_down_port=from_down_port)


def send_echo_reply(
    sim: Simulation, m: FlowMatch, port: PortSnap, hops: int, node: TraceNode | None
) -> bool:
    """Answer a ping to one of the router's addresses out of `port`; False if malformed."""
    previous_hop = m.eth_src
    try:
        reply = icmp_echo_reply_for(sim.packet())
    except PacketError:
        reply = None
    if reply is None:
        return False
    eth = replace(reply, src=port.mac, dst=previous_hop)
    gnode = None
    if node is not None:
        gnode = node.add("generated", port.id, f"ICMP echo reply from port {port.id}")
    sim.generate(port.id, eth, "icmp_echo_reply", hops, gnode)
    return True
