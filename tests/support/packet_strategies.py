"""Hypothesis strategies for valid headers: anything they draw must build and round-trip."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from tessera.packet import Arp, Dhcp, Ethernet, Icmp, IPv4, Tcp, Udp, dhcp
from tessera.packet.addr import prefix_mask

macs = st.integers(0, 2**48 - 1)
ips = st.integers(0, 2**32 - 1)
u8 = st.integers(0, 255)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
small_payloads = st.binary(max_size=64)


def word_aligned(max_words: int) -> st.SearchStrategy[bytes]:
    return st.integers(0, max_words).flatmap(lambda k: st.binary(min_size=4 * k, max_size=4 * k))


def _not_dhcp_ports() -> st.SearchStrategy[tuple[int, int]]:
    return st.tuples(u16, u16).filter(lambda p: not (p[0] in (67, 68) and p[1] in (67, 68)))


tcps = st.builds(
    Tcp,
    src_port=u16,
    dst_port=u16,
    seq=u32,
    ack=u32,
    flags=st.integers(0, 0x0FFF),
    window=u16,
    urgent=u16,
    options=word_aligned(10),
    payload=small_payloads,
)
udps = _not_dhcp_ports().flatmap(
    lambda p: st.builds(Udp, st.just(p[0]), st.just(p[1]), small_payloads)
)
icmps = st.builds(Icmp, type=u8, code=u8, ident=u16, seq=u16, payload=small_payloads)
arps = st.builds(Arp, op=u16, sender_mac=macs, sender_ip=ips, target_mac=macs, target_ip=ips)


@st.composite
def routes(draw: st.DrawFn) -> tuple[int, int, int]:
    length = draw(st.integers(0, 32))
    return (draw(ips) & prefix_mask(length), length, draw(ips))


_other_option_codes = st.integers(1, 254).filter(lambda c: c not in dhcp._TYPED_CODES)

dhcps = st.builds(
    Dhcp,
    op=st.sampled_from([dhcp.BOOTREQUEST, dhcp.BOOTREPLY]),
    xid=u32,
    chaddr=macs,
    message_type=st.none() | st.integers(1, 8),
    ciaddr=ips,
    yiaddr=ips,
    siaddr=ips,
    giaddr=ips,
    flags=u16,
    secs=u16,
    hops=u8,
    sname=st.binary(max_size=64).map(lambda b: b.rstrip(b"\x00")),
    file=st.binary(max_size=128).map(lambda b: b.rstrip(b"\x00")),
    requested_ip=st.none() | ips,
    server_id=st.none() | ips,
    lease_time=st.none() | u32,
    subnet_mask=st.none() | ips,
    routers=st.lists(ips, max_size=3).map(tuple),
    dns_servers=st.lists(ips, max_size=70).map(tuple),  # may exceed 255 bytes
    mtu=st.none() | u16,
    classless_routes=st.lists(routes(), max_size=4).map(tuple),
    hostname=st.none() | st.text(max_size=20),
    param_request_list=st.lists(u8, max_size=10).map(tuple),
    options=st.dictionaries(_other_option_codes, st.binary(max_size=300), max_size=4).map(
        lambda d: tuple(d.items())
    ),
)
dhcp_udps = st.builds(
    Udp,
    src_port=st.sampled_from([67, 68]),
    dst_port=st.sampled_from([67, 68]),
    payload=dhcps,
)

_L4: dict[int, st.SearchStrategy[Tcp | Udp | Icmp]] = {6: tcps, 17: udps, 1: icmps}


@st.composite
def ipv4s(draw: st.DrawFn) -> IPv4:
    kind = draw(
        st.sampled_from(["tcp", "udp", "icmp", "dhcp", "raw", "first_fragment", "later_fragment"])
    )
    fields: dict[str, Any] = {
        "src": draw(ips),
        "dst": draw(ips),
        "ttl": draw(u8),
        "tos": draw(u8),
        "ident": draw(u16),
        "dont_fragment": draw(st.booleans()),
        "options": draw(word_aligned(10)),
    }
    if kind in ("tcp", "udp", "icmp"):
        proto = {"tcp": 6, "udp": 17, "icmp": 1}[kind]
        return IPv4(proto=proto, payload=draw(_L4[proto]), **fields)
    if kind == "dhcp":
        return IPv4(proto=17, payload=draw(dhcp_udps), **fields)
    if kind == "raw":
        proto = draw(u8.filter(lambda p: p not in _L4))
        return IPv4(proto=proto, payload=draw(small_payloads), **fields)
    if kind == "first_fragment":
        proto = draw(st.sampled_from([1, 6, 17]))
        payload: Tcp | Udp | Icmp | bytes = draw(_L4[proto] | st.binary(max_size=7))
        return IPv4(proto=proto, payload=payload, more_fragments=True, **fields)
    return IPv4(
        proto=draw(u8),
        payload=draw(small_payloads),
        more_fragments=draw(st.booleans()),
        frag_offset=draw(st.integers(1, 0x1FFF)),
        **fields,
    )


@st.composite
def ethernets(draw: st.DrawFn) -> Ethernet:
    tagged = draw(st.booleans())
    vlan_id = draw(st.integers(0, 4095)) if tagged else None
    pcp = draw(st.integers(0, 7)) if tagged else 0
    payload: IPv4 | Arp | bytes = draw(st.one_of(ipv4s(), arps, small_payloads))
    if isinstance(payload, IPv4):
        ethertype = 0x0800
    elif isinstance(payload, Arp):
        ethertype = 0x0806
    else:
        ethertype = draw(u16.filter(lambda t: t not in (0x0800, 0x0806, 0x8100)))
    return Ethernet(draw(macs), draw(macs), ethertype, payload, vlan_id, pcp)
