"""Small topologies built in memory, and the packets to send through them.

`Topo` makes model objects (validated by the model exactly as the API would) and keeps
learned MAC/ARP state; `snapshot()` compiles them. Frame helpers build real bytes with
the packet layer, so every test goes through the same parsing an agent does.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any, cast

from tessera.model import (
    Bridge,
    Chain,
    Conditions,
    DhcpSubnet,
    IpAddrGroup,
    Mirror,
    Port,
    PortGroup,
    Route,
    Router,
    RouteType,
    Rule,
    RuleType,
    StoredObject,
)
from tessera.packet import (
    ETH_TYPE_ARP,
    ETH_TYPE_IPV4,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    Arp,
    Dhcp,
    Ethernet,
    FlowMatch,
    Icmp,
    IPv4,
    Tcp,
    Udp,
    arp,
    ip_from_str,
    mac_from_str,
)
from tessera.packet import dhcp as dhcp_codes
from tessera.packet import icmp as icmp_codes
from tessera.simulation import (
    ConnKey,
    ConntrackEntry,
    FlowStateView,
    NatBinding,
    NatKey,
    SimulationResult,
    Snapshot,
    simulate,
)

NOW = 1_700_000_000.0
BROADCAST = 0xFFFF_FFFF_FFFF

_counter = itertools.count(1)


def uid() -> str:
    return str(uuid.UUID(int=next(_counter) | (0x4A << 120)))


def mac(n: int) -> int:
    """02:00:00:00:00:nn — a VM's MAC."""
    return 0x02_00_00_00_00_00 | n


def ip(text: str) -> int:
    return ip_from_str(text)


class Topo:
    def __init__(self) -> None:
        self.objects: dict[str, StoredObject] = {}
        self.macs: dict[str, dict[tuple[int, int], str]] = {}
        self.arps: dict[str, dict[int, tuple[int, float]]] = {}
        self.conns: set[ConnKey] = set()
        self.nat: dict[NatKey, NatBinding] = {}

    # -- objects -----------------------------------------------------------------------

    def add(self, obj: StoredObject) -> Any:
        self.objects[obj.id] = obj
        return obj

    def set(self, obj: StoredObject, **changes: Any) -> Any:
        """Replace an object by a re-validated copy with `changes`."""
        data = self.objects[obj.id].model_dump()
        data.update(changes)
        new = type(obj).model_validate(data)
        self.objects[obj.id] = new
        return new

    def get(self, obj: StoredObject) -> Any:
        return self.objects[obj.id]

    def bridge(self, name: str = "br", **kw: Any) -> Bridge:
        return self.add(Bridge(id=uid(), name=name, **kw))  # type: ignore[no-any-return]

    def router(self, name: str = "rt", **kw: Any) -> Router:
        return self.add(Router(id=uid(), name=name, **kw))  # type: ignore[no-any-return]

    def bridge_port(self, bridge: Bridge, **kw: Any) -> Port:
        return self.add(Port(id=uid(), device_id=bridge.id, type="Bridge", **kw))  # type: ignore[no-any-return]

    def router_port(
        self, router: Router, cidr: str, port_mac: str | None = None, **kw: Any
    ) -> Port:
        addr, _, length = cidr.partition("/")
        return self.add(  # type: ignore[no-any-return]
            Port(
                id=uid(),
                device_id=router.id,
                type="Router",
                port_address=addr,
                network_address=addr,
                network_length=int(length),
                port_mac=port_mac,
                **kw,
            )
        )

    def link(self, a: Port, b: Port) -> None:
        self.set(a, peer_id=b.id)
        self.set(b, peer_id=a.id)

    def route(
        self,
        router: Router,
        dst: str,
        port: Port | None = None,
        *,
        gw: str | None = None,
        type: str = "Normal",
        src: str = "0.0.0.0/0",
        weight: int = 100,
    ) -> Route:
        dst_addr, _, dst_len = dst.partition("/")
        src_addr, _, src_len = src.partition("/")
        return self.add(  # type: ignore[no-any-return]
            Route(
                id=uid(),
                router_id=router.id,
                dst_network_addr=dst_addr,
                dst_network_length=int(dst_len),
                src_network_addr=src_addr,
                src_network_length=int(src_len),
                type=cast(RouteType, type),  # validated by the model
                next_hop_port=port.id if port is not None else None,
                next_hop_gateway=gw,
                weight=weight,
            )
        )

    def chain(self, name: str = "chain") -> Chain:
        return self.add(Chain(id=uid(), name=name))  # type: ignore[no-any-return]

    def rule(self, chain: Chain, type: str, **conditions: Any) -> Rule:
        """Append a rule to the chain (position = its index + 1)."""
        r = self.add(Rule(id=uid(), chain_id=chain.id, type=cast(RuleType, type), **conditions))
        current = self.get(chain)
        self.set(chain, rule_ids=[*current.rule_ids, r.id])
        return r  # type: ignore[no-any-return]

    def mirror(self, to_port: Port, *conditions: dict[str, Any], name: str = "") -> Mirror:
        """A mirror to `to_port`: copies what matches any of `conditions` (none: all)."""
        return self.add(  # type: ignore[no-any-return]
            Mirror(
                id=uid(),
                name=name,
                to_port_id=to_port.id,
                conditions=[Conditions.model_validate(c) for c in conditions],
            )
        )

    def port_group(self, *ports: StoredObject) -> PortGroup:
        return self.add(PortGroup(id=uid(), port_ids=[p.id for p in ports]))  # type: ignore[no-any-return]

    def ip_group(self, *addrs: str) -> IpAddrGroup:
        return self.add(IpAddrGroup(id=uid(), addrs=list(addrs)))  # type: ignore[no-any-return]

    def dhcp_subnet(self, bridge: Bridge, cidr: str, **kw: Any) -> DhcpSubnet:
        prefix, _, length = cidr.partition("/")
        return self.add(  # type: ignore[no-any-return]
            DhcpSubnet(
                id=uid(), bridge_id=bridge.id, subnet_prefix=prefix, subnet_length=int(length), **kw
            )
        )

    # -- learned state -----------------------------------------------------------------

    def learn_mac(self, bridge: Bridge, mac_addr: int, port: Port, vlan: int = 0) -> None:
        self.macs.setdefault(bridge.id, {})[(vlan, mac_addr)] = port.id

    def learn_arp(
        self, router: Router, ip_addr: str, mac_addr: int, expiry: float = NOW + 600
    ) -> None:
        self.arps.setdefault(router.id, {})[ip(ip_addr)] = (mac_addr, expiry)

    def install(self, result: SimulationResult) -> None:
        """What an agent does with a result's flow state: install every entry."""
        for entry in result.flow_state:
            if isinstance(entry, ConntrackEntry):
                self.conns.add(entry.key)
            else:
                self.nat[entry.key] = entry.binding

    def snapshot(self) -> Snapshot:
        return Snapshot.from_objects(
            self.objects,
            self.macs,
            self.arps,
            flow_state=FlowStateView(frozenset(self.conns), dict(self.nat)),
        )

    def send(self, port: Port, frame: bytes, *, now: float = NOW, **kw: Any) -> SimulationResult:
        m = FlowMatch.from_frame(port.id, frame)
        return simulate(self.snapshot(), m, frame, now, trace=True, **kw)


# -- frames ------------------------------------------------------------------------------


def eth(src: int, dst: int, payload: Any, ethertype: int = ETH_TYPE_IPV4, **kw: Any) -> bytes:
    return Ethernet(dst, src, ethertype, payload, **kw).build()


def tcp(
    src_mac: int,
    dst_mac: int,
    src_ip: str,
    dst_ip: str,
    sport: int = 40000,
    dport: int = 80,
    *,
    ttl: int = 64,
    **ip_kw: Any,
) -> bytes:
    return eth(
        src_mac,
        dst_mac,
        IPv4(ip(src_ip), ip(dst_ip), PROTO_TCP, Tcp(sport, dport), ttl=ttl, **ip_kw),
    )


def udp(
    src_mac: int,
    dst_mac: int,
    src_ip: str,
    dst_ip: str,
    sport: int = 40000,
    dport: int = 53,
    *,
    ttl: int = 64,
) -> bytes:
    return eth(
        src_mac, dst_mac, IPv4(ip(src_ip), ip(dst_ip), PROTO_UDP, Udp(sport, dport, b"x"), ttl=ttl)
    )


def ping(
    src_mac: int, dst_mac: int, src_ip: str, dst_ip: str, *, ttl: int = 64, icmp_type: int = 8
) -> bytes:
    message = Icmp(icmp_type, 0, 7, 1, b"hello")
    return eth(src_mac, dst_mac, IPv4(ip(src_ip), ip(dst_ip), PROTO_ICMP, message, ttl=ttl))


def fragment(src_mac: int, dst_mac: int, src_ip: str, dst_ip: str, *, later: bool) -> bytes:
    """A TCP fragment to port 80: the first (header) or a later one (no header)."""
    if later:
        packet = IPv4(ip(src_ip), ip(dst_ip), PROTO_TCP, b"\x00" * 16, frag_offset=3)
    else:
        packet = IPv4(ip(src_ip), ip(dst_ip), PROTO_TCP, Tcp(40000, 80), more_fragments=True)
    return eth(src_mac, dst_mac, packet)


def arp_req(src_mac: int, src_ip: str, target_ip: str) -> bytes:
    message = Arp(arp.REQUEST, src_mac, ip(src_ip), 0, ip(target_ip))
    return eth(src_mac, BROADCAST, message, ETH_TYPE_ARP)


def arp_rep(src_mac: int, src_ip: str, dst_mac: int, dst_ip: str) -> bytes:
    message = Arp(arp.REPLY, src_mac, ip(src_ip), dst_mac, ip(dst_ip))
    return eth(src_mac, dst_mac, message, ETH_TYPE_ARP)


def dhcp_request(client_mac: int, message_type: int = dhcp_codes.DISCOVER, **fields: Any) -> bytes:
    message = Dhcp(
        op=dhcp_codes.BOOTREQUEST,
        xid=0x1234,
        chaddr=client_mac,
        message_type=message_type,
        **fields,
    )
    datagram = Udp(dhcp_codes.CLIENT_PORT, dhcp_codes.SERVER_PORT, message)
    return eth(client_mac, BROADCAST, IPv4(0, 0xFFFFFFFF, PROTO_UDP, datagram))


def parse(frame: bytes) -> Ethernet:
    return Ethernet.parse(frame)


__all__ = [
    "BROADCAST",
    "NOW",
    "Topo",
    "arp_rep",
    "arp_req",
    "dhcp_request",
    "eth",
    "fragment",
    "icmp_codes",
    "ip",
    "mac",
    "mac_from_str",
    "parse",
    "ping",
    "tcp",
    "udp",
    "uid",
]
