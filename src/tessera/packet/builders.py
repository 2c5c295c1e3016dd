"""Packets the simulation emits itself: ARP, ICMP echo replies and errors, DHCP replies.

They return header objects rather than bytes so that the simulation can run them through
the topology (an ICMP error leaves a router port and is routed like any packet) and the
trace can show them; `.build()` gives the bytes to send.
"""

from __future__ import annotations

from tessera.packet import arp, dhcp, icmp
from tessera.packet.addr import BROADCAST_IP, BROADCAST_MAC, is_multicast_ip
from tessera.packet.arp import Arp
from tessera.packet.dhcp import Dhcp, Route
from tessera.packet.errors import PacketError
from tessera.packet.ethernet import ETH_TYPE_ARP, ETH_TYPE_IPV4, Ethernet
from tessera.packet.icmp import Icmp
from tessera.packet.ipv4 import PROTO_ICMP, PROTO_UDP, IPv4
from tessera.packet.udp import Udp

ICMP_QUOTE_PAYLOAD = 8


def arp_request(
    sender_mac: int, sender_ip: int, target_ip: int, *, vlan_id: int | None = None
) -> Ethernet:
    """Broadcast "who has target_ip", e.g. a router resolving its next hop."""
    message = Arp(arp.REQUEST, sender_mac, sender_ip, 0, target_ip)
    return Ethernet(BROADCAST_MAC, sender_mac, ETH_TYPE_ARP, message, vlan_id)


def arp_reply(
    sender_mac: int,
    sender_ip: int,
    target_mac: int,
    target_ip: int,
    *,
    vlan_id: int | None = None,
) -> Ethernet:
    """Unicast "sender_ip is at sender_mac" to the asker (target)."""
    message = Arp(arp.REPLY, sender_mac, sender_ip, target_mac, target_ip)
    return Ethernet(target_mac, sender_mac, ETH_TYPE_ARP, message, vlan_id)


def icmp_echo_reply_for(frame: bytes | Ethernet, *, ttl: int = 64) -> Ethernet | None:
    """The reply a router port gives to a ping addressed to it; None if `frame` is no ping.

    Addresses are swapped, so the reply comes from the MAC and IP the request was sent
    to; identifier, sequence and data are echoed as RFC 792 requires.
    """
    request = Ethernet.parse(frame) if isinstance(frame, bytes | bytearray) else frame
    ip = request.payload
    if not isinstance(ip, IPv4) or ip.is_fragment:
        return None
    ping = ip.payload
    if not isinstance(ping, Icmp) or ping.type != icmp.ECHO_REQUEST:
        return None
    reply = Icmp(icmp.ECHO_REPLY, 0, ping.ident, ping.seq, ping.payload)
    packet = IPv4(ip.dst, ip.src, PROTO_ICMP, reply, ttl=ttl, tos=ip.tos)
    return Ethernet(request.src, request.dst, ETH_TYPE_IPV4, packet, request.vlan_id)


def icmp_error_for(
    original: bytes | IPv4,
    icmp_type: int,
    code: int,
    src_ip: int,
    *,
    ttl: int = 64,
    mtu: int = 0,
) -> IPv4 | None:
    """An ICMP error about `original` (an IP packet), sent from `src_ip` to its source.

    None where RFC 1122 §3.2.2 forbids an error: about an ICMP error, about a non-first
    fragment, or about a packet whose source is not one host (unspecified, broadcast,
    multicast, loopback) or whose destination is broadcast or multicast — that is how
    error storms are avoided. `mtu` is the next-hop MTU for "fragmentation needed".
    """
    data = original.build() if isinstance(original, IPv4) else original
    header, total = IPv4.parse_quoted(data)
    if header.frag_offset:
        return None
    src = header.src
    if src == 0 or src == BROADCAST_IP or is_multicast_ip(src) or src >> 24 == 127:
        return None
    if header.dst == BROADCAST_IP or is_multicast_ip(header.dst):
        return None
    if header.proto == PROTO_ICMP:
        inner = header.payload
        if not isinstance(inner, bytes | bytearray) or not inner or inner[0] in icmp.ERROR_TYPES:
            return None
    hlen = 20 + len(header.options)
    quote = bytes(data[: min(total, hlen + ICMP_QUOTE_PAYLOAD)])
    message = Icmp(icmp_type, code, 0, mtu, quote)
    return IPv4(src_ip, src, PROTO_ICMP, message, ttl=ttl)


def dhcp_reply(
    request: Dhcp,
    message_type: int,
    *,
    server_mac: int,
    server_ip: int,
    your_ip: int = 0,
    subnet_mask: int | None = None,
    routers: tuple[int, ...] = (),
    dns_servers: tuple[int, ...] = (),
    lease_time: int | None = None,
    mtu: int | None = None,
    classless_routes: tuple[Route, ...] = (),
    hostname: str | None = None,
    options: tuple[tuple[int, bytes], ...] = (),
    vlan_id: int | None = None,
) -> Ethernet:
    """An OFFER, ACK or NAK answering `request`, addressed as RFC 2131 §4.1 says.

    A NAK carries no configuration; the client identifier is echoed (RFC 6842). Relays
    (giaddr) get the reply on port 67 at the client's MAC, as tessera has no real relays.
    """
    if message_type not in (dhcp.OFFER, dhcp.ACK, dhcp.NAK):
        raise PacketError(f"DHCP message type {message_type} is not a server reply")
    extra = list(options)
    client_id = request.option(dhcp.OPT_CLIENT_ID)
    if client_id is not None and all(code != dhcp.OPT_CLIENT_ID for code, _ in extra):
        extra.append((dhcp.OPT_CLIENT_ID, client_id))
    nak = message_type == dhcp.NAK
    reply = Dhcp(
        op=dhcp.BOOTREPLY,
        xid=request.xid,
        chaddr=request.chaddr,
        message_type=message_type,
        ciaddr=0 if nak else request.ciaddr,
        yiaddr=0 if nak else your_ip,
        giaddr=request.giaddr,
        flags=request.flags,
        server_id=server_ip,
        lease_time=None if nak else lease_time,
        subnet_mask=None if nak else subnet_mask,
        routers=() if nak else routers,
        dns_servers=() if nak else dns_servers,
        mtu=None if nak else mtu,
        classless_routes=() if nak else classless_routes,
        hostname=None if nak else hostname,
        options=tuple(extra),
    )
    dst_port = dhcp.CLIENT_PORT
    dst_mac = request.chaddr
    if request.giaddr:
        dst_ip, dst_port = request.giaddr, dhcp.SERVER_PORT
    elif nak or (not request.ciaddr and request.broadcast):
        dst_ip, dst_mac = BROADCAST_IP, BROADCAST_MAC
    elif request.ciaddr:
        dst_ip = request.ciaddr
    else:
        dst_ip = your_ip
    datagram = Udp(dhcp.SERVER_PORT, dst_port, reply)
    packet = IPv4(server_ip, dst_ip, PROTO_UDP, datagram)
    return Ethernet(dst_mac, server_mac, ETH_TYPE_IPV4, packet, vlan_id)
