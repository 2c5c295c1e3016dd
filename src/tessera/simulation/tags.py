"""Flow tags the simulation attaches to a result: what its decision depended on.

The scheme is the agent's (`tessera.agent.tags`, which also says which NSDB change
invalidates which tags): a topology object is tagged by its bare id (UUIDs are unique
across kinds); learned state by a prefixed name. Absent learned entries are tagged too:
a flood towards an unknown MAC carries the tag of that MAC, so learning it invalidates
the flood; a packet held for ARP carries the tag of the entry it waits for.
"""

from __future__ import annotations

from functools import lru_cache

from tessera.packet.addr import ip_to_str, mac_to_str


@lru_cache(maxsize=1 << 16)
def mac_tag(bridge_id: str, vlan_id: int, mac: int) -> str:
    """A bridge's knowledge of one MAC in one VLAN: learned, moved or forgotten."""
    return f"mac:{bridge_id}:{vlan_id}:{mac_to_str(mac)}"


@lru_cache(maxsize=1 << 16)
def arp_tag(router_id: str, ip: int) -> str:
    """A router's resolution of one IPv4 address."""
    return f"arp:{router_id}:{ip_to_str(ip)}"
