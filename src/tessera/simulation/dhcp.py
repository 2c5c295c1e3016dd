"""The DHCP server of a bridge: static leases from its subnets' hosts, answered locally.

DISCOVER gets an OFFER and REQUEST an ACK (or a NAK when the client asks for another
address than its host entry's), with options 1 (mask), 3 (router), 6 (DNS), 26 (MTU),
51 (lease time), 54 (server id) and 121 (classless routes; the default route is added to
them when there is a gateway, since RFC 3442 clients ignore option 3 once 121 is
present). A client without a host entry is not ours: its request is bridged like any
packet, so a DHCP server on a VM of the bridge still works.

Every DHCP request makes the result uncacheable: the answer depends on the message
body, which no flow match holds.
"""

from __future__ import annotations

from tessera.packet import dhcp as d
from tessera.packet.addr import ip_to_str, mac_to_str, prefix_mask
from tessera.packet.builders import dhcp_reply
from tessera.packet.errors import PacketError
from tessera.packet.ethernet import ETH_TYPE_IPV4
from tessera.packet.ipv4 import PROTO_UDP, IPv4
from tessera.packet.match import FlowMatch
from tessera.packet.udp import Udp
from tessera.simulation.context import Simulation
from tessera.simulation.result import TraceNode
from tessera.simulation.topology import BridgeSnap, DhcpLease, PortSnap

LEASE_TIME = 86_400
"""Seconds; leases are static, so this only paces renewals."""

_DEFAULT_ROUTE = 0

MAX_CLIENT_ID = 255
"""Bytes of a client identifier (option 61) the server echoes: one option instance. A
longer one is refused, so that any reply fits a datagram (DUIDs take at most 130)."""


def serve(
    sim: Simulation,
    m: FlowMatch,
    bridge: BridgeSnap,
    port: PortSnap,
    hops: int,
    node: TraceNode | None,
) -> bool:
    """Whether the bridge's DHCP server took the packet (answered it or ignored it)."""
    if (
        m.eth_type != ETH_TYPE_IPV4
        or m.ip_proto != PROTO_UDP
        or m.tp_dst != d.SERVER_PORT
        or m.tp_src != d.CLIENT_PORT
    ):
        return False
    sim.uncacheable = True
    if not bridge.admin_up:
        return False  # the bridge drops it, and says so
    try:
        ip = sim.packet().payload
    except PacketError as exc:
        sim.drop(f"malformed DHCP request: {exc}", node)
        return True
    udp = ip.payload if isinstance(ip, IPv4) else None
    msg = udp.payload if isinstance(udp, Udp) else None
    if not isinstance(msg, d.Dhcp) or msg.op != d.BOOTREQUEST:
        return False
    lease = bridge.dhcp_hosts.get(msg.chaddr)
    if lease is None:
        if node is not None:
            node.add("note", bridge.id, f"DHCP: no host entry for {mac_to_str(msg.chaddr)}")
        return False
    sim.tags.add(lease.subnet.id)
    client_id = msg.option(d.OPT_CLIENT_ID)
    if client_id is not None and len(client_id) > MAX_CLIENT_ID:
        # Echoed in our reply (RFC 6842): tens of KB of it would not fit one datagram.
        sim.drop(
            f"malformed DHCP request: client identifier of {len(client_id)} bytes "
            f"(at most {MAX_CLIENT_ID})",
            node,
        )
        return True
    dnode = None
    if node is not None:
        dnode = node.add("dhcp", lease.subnet.id, f"DHCP {_type_name(msg.message_type)}")
    reply_type = _reply_type(msg, lease)
    if reply_type is None:
        sim.consume("DHCP message needs no answer", dnode)
        return True
    subnet = lease.subnet
    server_mac = subnet.server_mac
    vlan = sim.packet().vlan_id
    if reply_type == d.NAK:
        reply = dhcp_reply(msg, d.NAK, server_mac=server_mac, server_ip=subnet.server, vlan_id=vlan)
    else:
        routes = subnet.routes121
        if routes and subnet.gateway is not None and all(r[1] != 0 for r in routes):
            routes = (*routes, (_DEFAULT_ROUTE, 0, subnet.gateway))
        inform = msg.message_type == d.INFORM
        reply = dhcp_reply(
            msg,
            reply_type,
            server_mac=server_mac,
            server_ip=subnet.server,
            your_ip=0 if inform else lease.ip,
            subnet_mask=prefix_mask(subnet.length),
            routers=(subnet.gateway,) if subnet.gateway is not None else (),
            dns_servers=subnet.dns,
            lease_time=None if inform else LEASE_TIME,
            mtu=subnet.mtu,
            classless_routes=routes,
            hostname=lease.name or None,
            vlan_id=vlan,
        )
    if dnode is not None:
        what = "NAK" if reply_type == d.NAK else f"{_type_name(reply_type)} {ip_to_str(lease.ip)}"
        dnode.text += f" -> {what}"
    sim.generate(port.id, reply, "dhcp_reply", hops, dnode)
    sim.consume("answered by the bridge's DHCP server", dnode)
    return True


def _reply_type(msg: d.Dhcp, lease: DhcpLease) -> int | None:
    kind = msg.message_type
    if kind == d.DISCOVER:
        return d.OFFER
    if kind == d.REQUEST:
        if msg.server_id is not None and msg.server_id != lease.subnet.server:
            return None  # the client chose another server's offer
        asked = msg.requested_ip if msg.requested_ip is not None else msg.ciaddr
        if asked and asked != lease.ip:
            return d.NAK
        return d.ACK
    if kind == d.INFORM:
        return d.ACK
    return None  # DECLINE, RELEASE, or a server's message type: nothing to answer


def _type_name(kind: int | None) -> str:
    return {
        d.DISCOVER: "DISCOVER",
        d.OFFER: "OFFER",
        d.REQUEST: "REQUEST",
        d.DECLINE: "DECLINE",
        d.ACK: "ACK",
        d.NAK: "NAK",
        d.RELEASE: "RELEASE",
        d.INFORM: "INFORM",
    }.get(kind or 0, f"message type {kind}")
