"""tessera.packet: parse and build frames, and the flow match a simulation reads.

Pure Python and free of I/O. Addresses are ints (48-bit MACs, 32-bit IPv4); anything
malformed raises `PacketError`. The names below are the public API; protocol constants
live in their modules (`tessera.packet.icmp.TIME_EXCEEDED`, `tessera.packet.dhcp.ACK`...).
"""

from tessera.packet.addr import (
    BROADCAST_IP,
    BROADCAST_MAC,
    ip_from_str,
    ip_to_str,
    is_multicast_ip,
    is_multicast_mac,
    mac_from_str,
    mac_to_str,
    prefix_mask,
)
from tessera.packet.arp import Arp
from tessera.packet.builders import (
    arp_reply,
    arp_request,
    dhcp_reply,
    icmp_echo_reply_for,
    icmp_error_for,
)
from tessera.packet.checksum import internet_checksum, l4_checksum
from tessera.packet.dhcp import Dhcp
from tessera.packet.errors import PacketError
from tessera.packet.ethernet import ETH_TYPE_ARP, ETH_TYPE_IPV4, ETH_TYPE_VLAN, Ethernet
from tessera.packet.icmp import Icmp
from tessera.packet.ipv4 import PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP, IPv4
from tessera.packet.match import ALL_FIELDS, Field, FlowMatch, IpFrag
from tessera.packet.offload import complete_l4_checksum
from tessera.packet.tcp import Tcp
from tessera.packet.udp import Udp

__all__ = [
    "ALL_FIELDS",
    "BROADCAST_IP",
    "BROADCAST_MAC",
    "ETH_TYPE_ARP",
    "ETH_TYPE_IPV4",
    "ETH_TYPE_VLAN",
    "PROTO_ICMP",
    "PROTO_SCTP",
    "PROTO_TCP",
    "PROTO_UDP",
    "Arp",
    "Dhcp",
    "Ethernet",
    "Field",
    "FlowMatch",
    "IPv4",
    "Icmp",
    "IpFrag",
    "PacketError",
    "Tcp",
    "Udp",
    "arp_reply",
    "arp_request",
    "complete_l4_checksum",
    "dhcp_reply",
    "icmp_echo_reply_for",
    "icmp_error_for",
    "internet_checksum",
    "ip_from_str",
    "ip_to_str",
    "is_multicast_ip",
    "is_multicast_mac",
    "l4_checksum",
    "mac_from_str",
    "mac_to_str",
    "prefix_mask",
]
