"""Flow tags: the names of what a flow depended on; the one place that builds them.

A tag is a string. A topology object is tagged by its bare id (UUIDs are unique across
kinds); learned state and host locations by the prefixed names built here, from the
values the simulation works with (MACs and addresses as ints). The simulation attaches
MAC and ARP tags to its results; the agent uses the same functions when a learned entry
or a host's location changes (`tessera.agent.tags` says which NSDB change invalidates
which tags), so a name can never be spelt two ways.

Absent learned entries are tagged too: a flood towards an unknown MAC carries the tag
of that MAC, so learning it invalidates the flood; a packet held for ARP carries the
tag of the entry it waits for. Flow state likewise: a flow that found no connection
tracking entry or NAT binding carries the tag of the one it looked for, so that its
arrival (pushed by another host) invalidates it.
"""

from __future__ import annotations

from functools import lru_cache

from tessera.packet.addr import ip_to_str, mac_to_str
from tessera.simulation.flowstate import ConnKey, NatKey


@lru_cache(maxsize=1 << 16)
def mac_tag(bridge_id: str, vlan_id: int, mac: int) -> str:
    """A bridge's knowledge of one MAC in one VLAN: learned, moved or forgotten."""
    return f"mac:{bridge_id}:{vlan_id}:{mac_to_str(mac)}"


@lru_cache(maxsize=1 << 16)
def arp_tag(router_id: str, ip: int) -> str:
    """A router's resolution of one IPv4 address."""
    return f"arp:{router_id}:{ip_to_str(ip)}"


def host_tag(host_id: str) -> str:
    """Where a host is reached (its underlay address in a tunnel zone): the agent tags
    flows to remote ports with it, since the simulation knows nothing of hosts."""
    return f"host:{host_id}"


def conntrack_tag(key: ConnKey) -> str:
    """One connection tracking entry: flows that found it, missed it or created it."""
    return (
        f"ct:{key.device}:{key.proto}:{ip_to_str(key.src)}:{key.sport}:"
        f"{ip_to_str(key.dst)}:{key.dport}"
    )


def nat_tag(key: NatKey) -> str:
    """One NAT binding: flows that found it, missed it (reverse NAT) or created it."""
    return (
        f"nat:{key.device}:{key.kind}:{key.proto}:{ip_to_str(key.src)}:{key.sport}:"
        f"{ip_to_str(key.dst)}:{key.dport}"
    )


def lb_member_tag(ip: int) -> str:
    """Whether `ip` is a load-balancer member's address: a router with a load balancer
    decides by it whether a packet it routes may be a VIP connection's reply."""
    return f"lbmember:{ip_to_str(ip)}"
