"""Parsing command-line values into the API's field values.

Each parser takes the text a user typed and returns what the API expects, or raises
`ValueError` with a message that says what was expected; `convert` turns that into a
one-line usage error naming the option. Checking here, before any request, lets the CLI
say "--tp-dst: 90:80 is not a port range" rather than relay a generic 422.

On `update`, the word `none` clears an optional field (`--inbound-filter-id none`).
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from tessera.client.errors import BadArgument
from tessera.nsdb import connect

T = TypeVar("T")

CLEAR_WORDS = frozenset({"none", "null"})


class Clear:
    """The value of an option given as `none`: set the field to null (or empty)."""

    _instance: Clear | None = None

    def __new__(cls) -> Clear:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "CLEAR"


CLEAR = Clear()


def convert_one(option: str, raw: str, parser: Callable[[str], T]) -> T:
    """`parser(raw)`, with a failure reported as a usage error naming `option`."""
    try:
        return parser(raw)
    except ValueError as exc:
        raise BadArgument(f"invalid value for {option}: {exc}") from None


def convert(option: str, raw: str | None, parser: Callable[[str], T]) -> T | None:
    """`convert_one` for an option that may be absent (None stays None)."""
    return None if raw is None else convert_one(option, raw, parser)


def convert_clearable(option: str, raw: str | None, parser: Callable[[str], T]) -> T | Clear | None:
    """Like `convert`, but `none` means "clear this field"."""
    if raw is not None and raw.strip().lower() in CLEAR_WORDS:
        return CLEAR
    return convert(option, raw, parser)


def convert_many(option: str, raws: Iterable[str] | None, parser: Callable[[str], T]) -> list[T]:
    """Repeated and/or comma-separated values (`--in-ports A,B --in-ports C`)."""
    out: list[T] = []
    for raw in raws or ():
        for part in raw.split(","):
            part = part.strip()
            if part:
                out.append(convert_one(option, part, parser))
    return out


# -- scalars ----------------------------------------------------------------------


def parse_uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise ValueError(f"'{text}' is not an id (expected a UUID)") from None


def parse_ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise ValueError(f"'{text}' is not an IPv4 address") from None


_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")


def parse_mac(text: str) -> str:
    text = text.strip()
    if not _MAC_RE.match(text):
        raise ValueError(f"'{text}' is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    return text.replace("-", ":").lower()


def parse_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 0)
        except ValueError:
            raise ValueError(f"'{text}' is not a number") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is not in {low}..{high}")
        return value

    return parse


@dataclass(frozen=True)
class Cidr:
    address: str
    length: int

    def __str__(self) -> str:
        return f"{self.address}/{self.length}"

    @property
    def network(self) -> Cidr:
        """The same prefix with host bits cleared (10.0.0.1/24 -> 10.0.0.0/24)."""
        net = ipaddress.IPv4Network(str(self), strict=False)
        return Cidr(str(net.network_address), self.length)


def parse_cidr(text: str) -> Cidr:
    """`ADDR/LEN`, or a bare `ADDR` meaning `/32`; host bits are kept, as MidoNet does."""
    text = text.strip()
    addr, slash, length = text.partition("/")
    address = parse_ipv4(addr)
    if not slash:
        return Cidr(address, 32)
    try:
        plen = int(length)
    except ValueError:
        raise ValueError(f"'{text}' is not ADDR/LEN (bad prefix length '{length}')") from None
    if not 0 <= plen <= 32:
        raise ValueError(f"'{text}' has prefix length {plen}, expected 0..32")
    return Cidr(address, plen)


def parse_network(text: str) -> Cidr:
    """`ADDR/LEN` naming a network: the length is required and host bits are refused."""
    if "/" not in text:
        raise ValueError(f"'{text}' is not a network (expected ADDR/LEN, e.g. 10.0.0.0/24)")
    cidr = parse_cidr(text)
    net = ipaddress.IPv4Network(str(cidr), strict=False)
    if str(net.network_address) != cidr.address:
        raise ValueError(f"'{text}' has host bits set (did you mean {net}?)")
    return cidr


def parse_interface_address(text: str) -> Cidr:
    """A router port's `ADDR/LEN`: the port's own address within its network."""
    if "/" not in text:
        raise ValueError(f"'{text}' needs a prefix length (e.g. 10.0.0.1/24)")
    return parse_cidr(text)


def parse_port_range(text: str) -> dict[str, int]:
    """`80`, `80:90` or `80-90`, as the API's `{start, end}`."""
    text = text.strip()
    parts = re.split(r"[:-]", text)
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise ValueError(f"'{text}' is not a port or port range (expected PORT or START:END)")
    start, end = int(parts[0]), int(parts[-1])
    for port in (start, end):
        if port > 65535:
            raise ValueError(f"port {port} in '{text}' is greater than 65535")
    if start > end:
        raise ValueError(f"port range '{text}' starts after it ends")
    return {"start": start, "end": end}


def parse_nat_target(text: str) -> dict[str, Any]:
    """`ADDR[-ADDR][:PORT[-PORT]]` as the API's `{address_from, address_to, port_from,
    port_to}`; ports left out are left to the server's default."""
    text = text.strip()
    addrs, colon, ports = text.partition(":")
    first, dash, last = addrs.partition("-")
    target: dict[str, Any] = {"address_from": parse_ipv4(first)}
    target["address_to"] = parse_ipv4(last) if dash else target["address_from"]
    if ipaddress.IPv4Address(target["address_from"]) > ipaddress.IPv4Address(target["address_to"]):
        raise ValueError(f"address range in '{text}' starts after it ends")
    if colon:
        try:
            prange = parse_port_range(ports)
        except ValueError as exc:
            raise ValueError(f"bad ports in NAT target '{text}': {exc}") from None
        target["port_from"], target["port_to"] = prange["start"], prange["end"]
    return target


_DL_TYPES = {"ipv4": 0x0800, "ip": 0x0800, "arp": 0x0806, "ipv6": 0x86DD, "vlan": 0x8100}


def parse_dl_type(text: str) -> int:
    """An EtherType: `0x0800`, `2048`, or a name (`ipv4`, `arp`, `ipv6`, `vlan`)."""
    named = _DL_TYPES.get(text.strip().lower())
    if named is not None:
        return named
    try:
        return parse_int(0x0600, 0xFFFF)(text)
    except ValueError:
        raise ValueError(
            f"'{text}' is not an EtherType (0x0600 to 0xffff, e.g. 0x0800, or one of "
            f"{', '.join(_DL_TYPES)})"
        ) from None


_PROTOCOLS = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "sctp": 132}


def parse_nw_proto(text: str) -> int:
    """An IP protocol number or name (`tcp`, `udp`, `icmp`...)."""
    named = _PROTOCOLS.get(text.strip().lower())
    if named is not None:
        return named
    try:
        return parse_int(0, 255)(text)
    except ValueError:
        raise ValueError(
            f"'{text}' is not an IP protocol (a number 0..255 or one of {', '.join(_PROTOCOLS)})"
        ) from None


def parse_choice(choices: Iterable[str]) -> Callable[[str], str]:
    """Case-insensitive choice, answered in the API's own spelling."""
    by_lower = {c.lower(): c for c in choices}

    def parse(text: str) -> str:
        found = by_lower.get(text.strip().lower())
        if found is None:
            raise ValueError(f"'{text}' is not one of {', '.join(by_lower.values())}")
        return found

    return parse


def parse_subnet_key(text: str) -> str:
    """A DHCP subnet as named in REST paths (`10.0.0.0_24`), from `10.0.0.0/24` too."""
    cidr = parse_network(text.strip().replace("_", "/", 1))
    return f"{cidr.address}_{cidr.length}"


def parse_opt121_route(text: str) -> dict[str, Any]:
    """`DEST/LEN,GATEWAY` as an option-121 classless static route."""
    dest, comma, gateway = text.partition(",")
    if not comma:
        raise ValueError(f"'{text}' is not a route (expected DEST/LEN,GATEWAY)")
    cidr = parse_network(dest)
    return {
        "destination_prefix": cidr.address,
        "destination_length": cidr.length,
        "gateway_addr": parse_ipv4(gateway),
    }


def parse_ifname(text: str) -> str:
    """A Linux interface name, checked as the API will (model/text.py): 1-15 printable
    ASCII characters, no '/', ':' or spaces, not '.' or '..'."""
    # Imported here: the model package costs a third of a second to import, which every
    # other command would pay at start-up for nothing.
    from tessera.model.text import check_ifname

    try:
        return check_ifname(text)
    except ValueError as exc:
        raise ValueError(f"'{text}' is not an interface name ({exc})") from None


def parse_listen(text: str) -> str:
    """`ADDR:PORT` (`[v6addr]:PORT` for IPv6), checked and returned as given."""
    host, colon, port = text.strip().rpartition(":")
    if not colon or not host:
        raise ValueError(f"'{text}' is not ADDR:PORT (e.g. 127.0.0.1:8181)")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"'{text}' has an unbalanced IPv6 bracket")
    parse_int(1, 65535)(port)
    return text.strip()


def parse_nsdb_url(text: str) -> str:
    """`memory`, `memory:NAME` or `zk://HOST:PORT[,HOST:PORT...]/ROOT`, as the NSDB
    parses it (`tessera.nsdb.connect`), with one message for every malformed URL."""
    text = text.strip()
    try:
        return connect.parse_nsdb_url(text).url
    except ValueError:
        raise ValueError(
            f"'{text}' is not an NSDB URL (use 'memory' or 'zk://HOST:PORT/ROOT')"
        ) from None
