"""DHCP subnets served by a bridge, with their static hosts (MidoNet's DHCP)."""

from __future__ import annotations

import ipaddress
from typing import ClassVar

from pydantic import Field, model_validator

from tessera.model.base import Ref, StoredObject
from tessera.model.types import IPv4Addr, MacAddr, Name, PrefixLen, TesseraModel, Uuid


class Opt121Route(TesseraModel):
    destination_prefix: IPv4Addr
    destination_length: PrefixLen
    gateway_addr: IPv4Addr


class DhcpHost(TesseraModel):
    mac_addr: MacAddr
    ip_addr: IPv4Addr
    name: Name = ""


class DhcpSubnet(StoredObject):
    """A subnet whose DHCP requests the bridge answers locally; hosts are kept inline."""

    kind: ClassVar[str] = "dhcp_subnets"
    refs: ClassVar[tuple[Ref, ...]] = (Ref("bridge_id", ("bridges",), "cascade"),)
    read_only: ClassVar[tuple[str, ...]] = ("id", "bridge_id", "hosts")

    bridge_id: Uuid
    subnet_prefix: IPv4Addr
    # Not PrefixLen: a second `le` beside the annotated one is silently overridden by it.
    subnet_length: int = Field(ge=0, le=30)
    default_gateway: IPv4Addr | None = None
    server_addr: IPv4Addr | None = None
    dns_server_addrs: list[IPv4Addr] = Field(default_factory=list)
    interface_mtu: int | None = Field(default=None, ge=68, le=65535)
    opt121_routes: list[Opt121Route] = Field(default_factory=list)
    enabled: bool = True
    hosts: list[DhcpHost] = Field(default_factory=list)

    @model_validator(mode="after")
    def _in_subnet(self) -> DhcpSubnet:
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
        seen_mac: set[str] = set()
        seen_ip: set[str] = set()
        for h in self.hosts:
            if ipaddress.IPv4Address(h.ip_addr) not in net:
                raise ValueError(f"DHCP host address {h.ip_addr} is not in {net}")
            if h.mac_addr in seen_mac:
                raise ValueError(f"DHCP host MAC {h.mac_addr} appears twice")
            if h.ip_addr in seen_ip:
                raise ValueError(f"DHCP host address {h.ip_addr} appears twice")
            seen_mac.add(h.mac_addr)
            seen_ip.add(h.ip_addr)
        return self

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.subnet_prefix}/{self.subnet_length}", strict=False)

    @property
    def key(self) -> str:
        """The subnet's name in REST paths: `{prefix}_{len}`."""
        return f"{self.subnet_prefix}_{self.subnet_length}"
