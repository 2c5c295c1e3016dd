"""A packet built from a megaflow's match, to simulate an installed flow again.

After a restart the agent finds flows in the kernel that it did not simulate itself. To
know whether one is still right it simulates a packet carrying the flow's masked values
(other fields zero). That is enough: a simulation's path depends only on the fields it
reads, and the flow's mask is exactly those fields, so this packet takes the same path
as the one that created the flow — and if the topology changed, the simulation says
what the flow should be now.
"""

from __future__ import annotations

from tessera.datapath.base import Match
from tessera.packet import ETH_TYPE_ARP, ETH_TYPE_IPV4, Arp, Ethernet, Icmp, IPv4, Tcp, Udp
from tessera.packet.match import FIELD_NAMES

_ICMP, _TCP, _UDP = 1, 6, 17


def frame_for(match: Match) -> bytes:
    v = dict(zip(FIELD_NAMES, match.values, strict=True))
    vlan = v["vlan_id"] or None
    eth_type = v["eth_type"]
    payload: Arp | IPv4 | bytes
    if eth_type == ETH_TYPE_ARP:
        payload = Arp(v["ip_proto"] or 1, v["eth_src"], v["ip_src"], 0, v["ip_dst"])
    elif eth_type == ETH_TYPE_IPV4:
        proto = v["ip_proto"]
        if not proto and v["ct_state"]:
            # A flow keyed on the datapath's connection answer, not on the protocol:
            # only a packet with a connection gets that answer, so make one (TCP).
            proto = _TCP
        l4: Icmp | Tcp | Udp | bytes
        if v["ip_frag"] == 2:
            l4 = b"\x00" * 8
        elif proto == _TCP:
            l4 = Tcp(v["tp_src"], v["tp_dst"], flags=0x10)
        elif proto == _UDP:
            l4 = Udp(v["tp_src"], v["tp_dst"], b"\x00" * 8)
        elif proto == _ICMP:
            l4 = Icmp(v["tp_src"], v["tp_dst"], v["icmp_id"], 0, b"\x00" * 8)
        else:
            l4 = b"\x00" * 8
        payload = IPv4(
            v["ip_src"],
            v["ip_dst"],
            proto,
            l4,
            ttl=v["ip_ttl"] or 64,
            tos=v["ip_tos"],
            more_fragments=v["ip_frag"] == 1,
            frag_offset=1 if v["ip_frag"] == 2 else 0,
        )
    else:
        payload = b"\x00" * 46
    return Ethernet(v["eth_dst"], v["eth_src"], eth_type, payload, vlan).build()
