"""DHCP subnets served by a bridge, with their static hosts (MidoNet's DHCP).

What a subnet holds is what the bridge's DHCP server sends (`simulation/dhcp.py`), so
the model accepts exactly what the packet builders can serve: classless routes without
host bits, each option within one 255-byte option instance, host names that are DNS
names, leases a client can use (not the subnet's network, broadcast or gateway address,
to a unicast MAC).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from tessera.model.base import Ref, StoredObject
from tessera.model.devices import check_unicast_mac
from tessera.model.limits import (
    MAX_DHCP_HOSTNAME_LEN,
    MAX_DHCP_HOSTS,
    MAX_DNS_SERVERS,
    MAX_OPT121_BYTES,
    MAX_OPT121_ROUTES,
)
from tessera.model.text import END, check_text, is_stored
from tessera.model.types import IPv4Addr, MacAddr, PrefixLen, TesseraModel, Uuid

# RFC 1123 host names, with '_' as real DHCP clients accept it: dot-separated labels of
# letters, digits, '-' or '_', not starting or ending with '-'. Option 12 carries it, and
# clients refuse anything else as a host name.
_LABEL = "[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
HOSTNAME_PATTERN = f"^(?:{_LABEL}(?:\\.{_LABEL})*)?{END}"
"""The JSON schema `pattern` of a DHCP host name ("" for none)."""
_HOSTNAME_RE = re.compile(HOSTNAME_PATTERN)


def _hostname(value: Any, info: ValidationInfo) -> Any:
    """Checked as sent (before white space is stripped), like every name."""
    if not isinstance(value, str) or is_stored(info):
        return value
    if len(value) <= MAX_DHCP_HOSTNAME_LEN and _HOSTNAME_RE.fullmatch(value):
        return value
    check_text(value)
    raise ValueError(
        f"'{value}' is not a host name: dot-separated labels of letters, digits, '-' "
        f"or '_' (not starting or ending with '-'), {MAX_DHCP_HOSTNAME_LEN} characters at "
        "most; DHCP sends it as the client's host name"
    )


HostName = Annotated[
    str,
    BeforeValidator(_hostname),
    Field(json_schema_extra={"maxLength": MAX_DHCP_HOSTNAME_LEN, "pattern": HOSTNAME_PATTERN}),
]


def opt121_size(routes: list[Opt121Route]) -> int:
    """Bytes of option 121 for `routes` (RFC 3442: length, significant octets, gateway)."""
    return sum(1 + (r.destination_length + 7) // 8 + 4 for r in routes)


class Opt121Route(TesseraModel):
    """A classless static route (option 121) handed to clients."""

    destination_prefix: IPv4Addr
    destination_length: PrefixLen
    gateway_addr: IPv4Addr

    @model_validator(mode="after")
    def _no_host_bits(self, info: ValidationInfo) -> Opt121Route:
        if is_stored(info):
            return self
        net = ipaddress.IPv4Network(
            f"{self.destination_prefix}/{self.destination_length}", strict=False
        )
        if str(net.network_address) != self.destination_prefix:
            raise ValueError(
                f"destination_prefix {self.destination_prefix} has host bits set for "
                f"/{self.destination_length} (the network is {net.network_address}); "
                "RFC 3442 routes carry the network address only"
            )
        return self


class DhcpHost(TesseraModel):
    """A static lease: the client with `mac_addr` gets `ip_addr` and host name `name`."""

    mac_addr: MacAddr
    ip_addr: IPv4Addr
    name: HostName = ""

    @field_validator("mac_addr")
    @classmethod
    def _unicast(cls, mac: str, info: ValidationInfo) -> str:
        if not is_stored(info):
            check_unicast_mac(mac)
        return mac


class DhcpSubnet(StoredObject):
    """A subnet whose DHCP requests the bridge answers locally; hosts are kept inline."""

    kind: ClassVar[str] = "dhcp_subnets"
    refs: ClassVar[tuple[Ref, ...]] = (Ref("bridge_id", ("bridges",), "cascade"),)
    read_only: ClassVar[tuple[str, ...]] = ("id", "bridge_id", "hosts")

    bridge_id: Uuid
    subnet_prefix: IPv4Addr
    # Not PrefixLen: a second `le` beside the annotated one is silently overridden by it.
    # At most /30: a /31 or /32 has no address to lease besides the gateway's.
    subnet_length: int = Field(ge=0, le=30)
    default_gateway: IPv4Addr | None = None
    server_addr: IPv4Addr | None = None
    dns_server_addrs: list[IPv4Addr] = Field(default_factory=list, max_length=MAX_DNS_SERVERS)
    # RFC 2132 §9.1: an MTU option below 68 is invalid; the option has two bytes.
    interface_mtu: int | None = Field(default=None, ge=68, le=65535)
    opt121_routes: list[Opt121Route] = Field(default_factory=list, max_length=MAX_OPT121_ROUTES)
    enabled: bool = True
    hosts: list[DhcpHost] = Field(default_factory=list, max_length=MAX_DHCP_HOSTS)

    @model_validator(mode="after")
    def _in_subnet(self, info: ValidationInfo) -> DhcpSubnet:
        net = self.network
        if net.network_address != ipaddress.IPv4Address(self.subnet_prefix):
            raise ValueError(
                f"subnet_prefix {self.subnet_prefix} has host bits set for /{self.subnet_length}"
            )
        for label, addr in (
            ("default_gateway", self.default_gateway),
            ("server_addr", self.server_addr),
        ):
            if addr is not None and ipaddress.IPv4Address(addr) not in net:
                raise ValueError(f"{label} {addr} is not in {net}")
        strict = not is_stored(info)
        if strict:
            self._check_opt121_size()
        seen_mac: set[str] = set()
        seen_ip: set[str] = set()
        for h in self.hosts:
            if ipaddress.IPv4Address(h.ip_addr) not in net:
                raise ValueError(f"DHCP host address {h.ip_addr} is not in {net}")
            if strict:
                self._check_lease(h, net)
            if h.mac_addr in seen_mac:
                raise ValueError(f"DHCP host MAC {h.mac_addr} appears twice")
            if h.ip_addr in seen_ip:
                raise ValueError(f"DHCP host address {h.ip_addr} appears twice")
            seen_mac.add(h.mac_addr)
            seen_ip.add(h.ip_addr)
        return self

    def _check_opt121_size(self) -> None:
        """Option 121 as sent must fit one option instance (see `MAX_OPT121_BYTES`)."""
        if not self.opt121_routes:
            return
        size = opt121_size(self.opt121_routes)
        implicit = self.default_gateway is not None and all(
            r.destination_length != 0 for r in self.opt121_routes
        )
        if implicit:
            size += 5  # the default route through default_gateway the server adds
        if size > MAX_OPT121_BYTES:
            added = " with the default route the server adds through default_gateway"
            raise ValueError(
                f"opt121_routes encode to {size} bytes{added if implicit else ''}, more than "
                f"the {MAX_OPT121_BYTES} bytes of one DHCP option (a route takes 5 to 9 "
                "bytes: 1 + the prefix's significant octets + 4)"
            )

    def _check_lease(self, h: DhcpHost, net: ipaddress.IPv4Network) -> None:
        addr = ipaddress.IPv4Address(h.ip_addr)
        if addr == net.network_address:
            raise ValueError(f"DHCP host address {addr} is the network address of {net}")
        if addr == net.broadcast_address:
            raise ValueError(f"DHCP host address {addr} is the broadcast address of {net}")
        for label, other in (
            ("default_gateway", self.default_gateway),
            ("server_addr", self.server_addr),
        ):
            if other is not None and h.ip_addr == other:
                raise ValueError(f"DHCP host address {addr} is the subnet's {label}")
        implicit_server = self.server_addr is None and self.default_gateway is None
        if implicit_server and addr == net.network_address + 1:
            raise ValueError(
                f"DHCP host address {addr} is the DHCP server's (the subnet's first "
                "address when neither server_addr nor default_gateway is set)"
            )

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.subnet_prefix}/{self.subnet_length}", strict=False)

    @property
    def key(self) -> str:
        """The subnet's name in REST paths: `{prefix}_{len}`."""
        return f"{self.subnet_prefix}_{self.subnet_length}"
