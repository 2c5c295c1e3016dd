"""Frames built with tessera.packet, for tests of what consumes frames (datapaths, agent).

The packet layer's own encoding is taken as given here; tests of the packet layer and
of the kernel's parser compare against `support.rawframes` instead, which packs bytes by
hand.
"""

from __future__ import annotations

from tessera.packet import ETH_TYPE_ARP, ETH_TYPE_IPV4, Arp, Ethernet, IPv4, Tcp, Udp
from tessera.packet.addr import ip_from_str, mac_from_str

MAC1 = mac_from_str("02:00:00:00:00:01")
MAC2 = mac_from_str("02:00:00:00:00:02")
IP1 = ip_from_str("10.0.0.1")
IP2 = ip_from_str("10.0.0.2")
IP_FAR = ip_from_str("10.0.2.2")  # another subnet: a routed destination


def udp(
    src_port: int = 1000,
    dst_port: int = 2000,
    *,
    src: int = MAC1,
    dst: int = MAC2,
    ip_src: int = IP1,
    ip_dst: int = IP2,
    ttl: int = 64,
    payload: bytes = b"hello",
) -> bytes:
    packet = IPv4(ip_src, ip_dst, 17, Udp(src_port, dst_port, payload), ttl=ttl)
    return Ethernet(dst, src, ETH_TYPE_IPV4, packet).build()


def tcp(
    payload: bytes = b"x" * 100,
    *,
    seq: int = 1000,
    flags: int = 0x18,
    ip_src: int = IP1,
    ip_dst: int = IP2,
) -> bytes:
    segment = Tcp(40000, 5201, seq=seq, ack=1, flags=flags, window=1000, payload=payload)
    return Ethernet(MAC2, MAC1, ETH_TYPE_IPV4, IPv4(ip_src, ip_dst, 6, segment)).build()


def arp_request(sender_ip: int = IP1, target_ip: int = IP2) -> bytes:
    return Ethernet(
        0xFFFF_FFFF_FFFF, MAC1, ETH_TYPE_ARP, Arp(1, MAC1, sender_ip, 0, target_ip)
    ).build()
