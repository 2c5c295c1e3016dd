"""Frames for the agent's pure unit tests."""

from __future__ import annotations

from tessera.packet import ETH_TYPE_IPV4, Ethernet, IPv4, Udp


def frame_with_ttl(ttl: int) -> bytes:
    packet = IPv4(0x0A000001, 0x0A000202, 17, Udp(1, 2, b"x"), ttl=ttl)
    return Ethernet(0x020000000002, 0x020000000001, ETH_TYPE_IPV4, packet).build()
