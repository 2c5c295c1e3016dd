"""MAC and IPv4 addresses as plain ints, with text conversion at the edges.

The packet path compares and hashes addresses millions of times; ints are the cheapest
Python objects for that and map one-to-one onto the kernel flow key. Text only appears
where humans or the topology model are involved.
"""

from __future__ import annotations

import ipaddress
import re

from tessera.packet.errors import PacketError

MAC_MAX = 0xFFFF_FFFF_FFFF
IP_MAX = 0xFFFF_FFFF
BROADCAST_MAC = MAC_MAX
BROADCAST_IP = IP_MAX

_MAC_RE = re.compile(r"[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}")


def mac_to_str(mac: int) -> str:
    """Lower-case colon form, the same text the topology model stores."""
    if not 0 <= mac <= MAC_MAX:
        raise PacketError(f"{mac!r} is not a 48-bit MAC address")
    return mac.to_bytes(6, "big").hex(":")


def mac_from_str(text: str) -> int:
    """Accept `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff` (one separator throughout)."""
    if not isinstance(text, str) or not _MAC_RE.fullmatch(text):
        raise PacketError(f"{text!r} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    return int(text[0:2] + text[3:5] + text[6:8] + text[9:11] + text[12:14] + text[15:17], 16)


def ip_to_str(ip: int) -> str:
    if not 0 <= ip <= IP_MAX:
        raise PacketError(f"{ip!r} is not a 32-bit IPv4 address")
    return f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}"


def ip_from_str(text: str) -> int:
    """Strict dotted quad: leading zeros are refused because they are ambiguous (octal)."""
    try:
        return int(ipaddress.IPv4Address(text))
    except (ValueError, TypeError):
        raise PacketError(f"{text!r} is not an IPv4 address") from None


def is_multicast_mac(mac: int) -> bool:
    """True for group addresses, broadcast included (I/G bit of the first octet)."""
    return bool(mac & 0x0100_0000_0000)


def is_multicast_ip(ip: int) -> bool:
    return ip >> 28 == 0xE


def prefix_mask(length: int) -> int:
    """Netmask of a prefix length, e.g. 24 -> 0xFFFFFF00."""
    if not 0 <= length <= 32:
        raise PacketError(f"prefix length {length!r} is not in 0..32")
    return (IP_MAX << (32 - length)) & IP_MAX
