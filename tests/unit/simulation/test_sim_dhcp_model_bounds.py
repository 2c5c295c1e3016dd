"""Any DHCP subnet the model accepts is one the bridge's DHCP server can serve.

The model's bounds (issue 13, item 4) are exactly what the packet builders need: each
option in one 255-byte instance, RFC 3442 routes without host bits, a host name that
is a DNS name. These tests draw subnets up to those bounds, push DISCOVER and REQUEST
through the simulation, and check the reply is built, parses back to the configuration
and fits a 1500-byte IP packet; the configurations that used to make the server raise
are refused by the model instead.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sim_topo import Topo, dhcp_request, ip, mac, parse

from tessera.model import DhcpSubnet
from tessera.model.dhcp import opt121_size
from tessera.model.limits import MAX_DNS_SERVERS, MAX_OPT121_BYTES
from tessera.packet import Dhcp, IPv4, Udp, dhcp
from tessera.simulation import Verdict

CLIENT = 5


def _addr(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


@st.composite
def subnets(draw: st.DrawFn) -> dict[str, Any]:
    """Fields of a DHCP subnet (with one host, the client) within the model's bounds."""
    length = draw(st.one_of(st.sampled_from([0, 1, 8, 24, 29, 30]), st.integers(0, 30)))
    size = 1 << (32 - length)
    network = draw(st.integers(0, (1 << 32) - 1)) & ~(size - 1) & 0xFFFF_FFFF
    last = size - 2  # offsets 1..last are the subnet's host addresses
    client = draw(st.integers(1, last))
    others = st.one_of(st.none(), st.integers(1, last).filter(lambda o: o != client))
    gateway, server = draw(others), draw(others)
    if gateway is None and server is None and client == 1:
        client = 2  # the first address is then the server's
    dns = draw(
        st.one_of(
            st.lists(st.integers(0, (1 << 32) - 1), max_size=8),
            st.just([0x0A000002] * MAX_DNS_SERVERS),
        )
    )
    routes: list[dict[str, Any]] = []
    budget = MAX_OPT121_BYTES - (5 if gateway is not None else 0)
    for _ in range(draw(st.integers(0, 60))):
        rlen = draw(st.one_of(st.sampled_from([1, 8, 16, 24, 32]), st.integers(1, 32)))
        dest = draw(st.integers(0, (1 << 32) - 1)) & (0xFFFF_FFFF << (32 - rlen)) & 0xFFFF_FFFF
        cost = 1 + (rlen + 7) // 8 + 4
        if cost > budget:
            break
        budget -= cost
        routes.append(
            {
                "destination_prefix": _addr(dest),
                "destination_length": rlen,
                "gateway_addr": _addr(draw(st.integers(0, (1 << 32) - 1))),
            }
        )
    label = st.text("abcxyz0189-_", min_size=1, max_size=63).map(
        lambda t: "a" + t[1:-1] + "z" if len(t) > 1 else "a"
    )
    name = draw(st.one_of(st.just(""), label, st.just("a" * 31 + "." + "b" * 31)))
    return {
        "subnet_prefix": _addr(network),
        "subnet_length": length,
        "default_gateway": None if gateway is None else _addr(network + gateway),
        "server_addr": None if server is None else _addr(network + server),
        "dns_server_addrs": [_addr(a) for a in dns],
        "interface_mtu": draw(st.one_of(st.none(), st.integers(68, 65535))),
        "opt121_routes": routes,
        "hosts": [
            {"mac_addr": "02:00:00:00:00:05", "ip_addr": _addr(network + client), "name": name}
        ],
    }


def _serve(fields: dict[str, Any], message_type: int, **request: Any) -> tuple[Dhcp, IPv4]:
    t = Topo()
    br = t.bridge()
    vm = t.bridge_port(br)
    sub = DhcpSubnet(id="5a1d7a3c-0000-4000-8000-000000000001", bridge_id=br.id, **fields)
    t.add(sub)
    # The request comes from the lease's MAC (anything() may draw another one).
    client = int(fields["hosts"][0]["mac_addr"].replace(":", ""), 16)
    res = t.send(vm, dhcp_request(client, message_type, **request))
    assert res.verdict is Verdict.CONSUMED, res.drop_reason
    (emitted,) = res.emitted
    packet = parse(emitted.frame).payload
    assert isinstance(packet, IPv4) and isinstance(packet.payload, Udp)
    assert isinstance(packet.payload.payload, Dhcp)
    return packet.payload.payload, packet


@settings(max_examples=60)
@given(subnets(), st.sampled_from([dhcp.DISCOVER, dhcp.REQUEST, dhcp.INFORM]))
def test_every_subnet_the_model_accepts_is_served(fields: dict[str, Any], kind: int) -> None:
    reply, packet = _serve(fields, kind)
    assert reply.message_type in (dhcp.OFFER, dhcp.ACK)
    assert reply.dns_servers == tuple(ip(a) for a in fields["dns_server_addrs"])
    assert reply.mtu == fields["interface_mtu"]
    sent = {(ip(r["destination_prefix"]), r["destination_length"]) for r in fields["opt121_routes"]}
    assert sent <= {(net, length) for net, length, _ in reply.classless_routes}
    assert (reply.hostname or "") == fields["hosts"][0]["name"]
    # Every option in one instance (no reliance on RFC 3396), the reply in 1500 bytes.
    codes = _option_codes(reply.build())
    assert len(codes) == len(set(codes)), codes
    assert len(packet.build()) <= 1500


@st.composite
def anything(draw: st.DrawFn) -> dict[str, Any]:
    """Subnet fields from a wider space than the model's bounds: host bits in routes,
    too many DNS servers or routes, any text as a host name, any lease address or MAC."""
    fields = draw(subnets())
    u32 = st.integers(0, (1 << 32) - 1)
    if draw(st.booleans()):
        fields["dns_server_addrs"] = [
            _addr(a) for a in draw(st.lists(u32, min_size=60, max_size=70))
        ]
    if draw(st.booleans()):
        fields["opt121_routes"] = [
            {"destination_prefix": _addr(d), "destination_length": n, "gateway_addr": _addr(g)}
            for d, n, g in draw(st.lists(st.tuples(u32, st.integers(0, 32), u32), max_size=60))
        ]
    network, size = ip(fields["subnet_prefix"]), 1 << (32 - fields["subnet_length"])
    lease = fields["hosts"][0]
    if draw(st.booleans()):
        lease["ip_addr"] = _addr(network + draw(st.integers(0, min(size - 1, 300))))
    if draw(st.booleans()):
        lease["mac_addr"] = ":".join(f"{b:02x}" for b in draw(st.binary(min_size=6, max_size=6)))
    if draw(st.booleans()):
        lease["name"] = draw(st.text(max_size=80))
    return fields


@settings(max_examples=80)
@given(anything())
def test_whatever_the_model_accepts_the_server_serves(fields: dict[str, Any]) -> None:
    """The other direction: from a wider space, whatever passes the model is served
    (DISCOVER answered, each option in one instance, within 1500 bytes)."""
    try:
        DhcpSubnet(bridge_id="5a1d7a3c-0000-4000-8000-000000000003", **fields)
    except ValidationError:
        return
    reply, packet = _serve(fields, dhcp.DISCOVER)
    assert reply.message_type == dhcp.OFFER
    codes = _option_codes(reply.build())
    assert len(codes) == len(set(codes)), codes
    assert len(packet.build()) <= 1500


def _option_codes(message: bytes) -> list[int]:
    """The option codes of a DHCP message in wire order, one per instance."""
    codes, i = [], dhcp.OPTIONS_OFFSET
    while i < len(message) and message[i] != dhcp.OPT_END:
        if message[i] == dhcp.OPT_PAD:
            i += 1
            continue
        codes.append(message[i])
        i += 2 + message[i + 1]
    return codes


def test_the_largest_subnet_the_model_accepts_is_served_whole() -> None:
    # 27 routes of 9 bytes and one of 7: with the default route (5), 255 bytes exactly.
    routes = [
        {"destination_prefix": f"10.{i}.0.{4 * i}", "destination_length": 30,
         "gateway_addr": "192.168.0.1"}
        for i in range(27)
    ] + [{"destination_prefix": "172.16.0.0", "destination_length": 16,
          "gateway_addr": "192.168.0.1"}]  # fmt: skip
    sub = DhcpSubnet(bridge_id="5a1d7a3c-0000-4000-8000-000000000002", **_largest(routes))
    assert opt121_size(sub.opt121_routes) + 5 == MAX_OPT121_BYTES
    reply, packet = _serve(_largest(routes), dhcp.DISCOVER)
    assert len(reply.dns_servers) == MAX_DNS_SERVERS
    assert len(reply.classless_routes) == 29  # and the default route the server adds
    assert reply.hostname is not None and len(reply.hostname) == 63
    codes = _option_codes(reply.build())
    assert len(codes) == len(set(codes)), codes
    assert len(packet.build()) <= 1500


def _largest(routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "subnet_prefix": "192.168.0.0",
        "subnet_length": 16,
        "default_gateway": "192.168.0.1",
        "dns_server_addrs": [f"10.0.0.{i}" for i in range(1, MAX_DNS_SERVERS + 1)],
        "interface_mtu": 9000,
        "opt121_routes": routes,
        "hosts": [
            {"mac_addr": "02:00:00:00:00:05", "ip_addr": "192.168.0.5",
             "name": "h" * 31 + "." + "d" * 31},
        ],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        # Each of these was accepted, then every DISCOVER on the subnet raised.
        (
            {"opt121_routes": [{"destination_prefix": "172.16.0.1", "destination_length": 12,
                                "gateway_addr": "192.168.0.1"}]},
            "host bits set for /12",
        ),
        ({"dns_server_addrs": ["10.0.0.1"] * 20_000}, "at most 63 items"),
        ({"dns_server_addrs": ["10.0.0.1"] * (MAX_DNS_SERVERS + 1)}, "at most 63 items"),
        (
            {"opt121_routes": [{"destination_prefix": f"10.0.{i}.{i}", "destination_length": 32,
                                "gateway_addr": "192.168.0.1"} for i in range(28)]},
            "encode to 257 bytes with the default route",
        ),
        ({"hosts": [{"mac_addr": "02:00:00:00:00:05", "ip_addr": "192.168.0.5",
                     "name": "vm\udc80"}]}, "U+DC80"),
        ({"hosts": [{"mac_addr": "02:00:00:00:00:05", "ip_addr": "192.168.0.5",
                     "name": "a" * 64}]}, "63 characters at most"),
        ({"interface_mtu": 67}, "greater than or equal to 68"),
        ({"interface_mtu": 65536}, "less than or equal to 65535"),
    ],
)  # fmt: skip
def test_what_the_server_cannot_serve_is_refused(change: dict[str, Any], fragment: str) -> None:
    fields = {**_largest([]), "dns_server_addrs": [], **change}
    with pytest.raises(ValidationError, match=re.escape(fragment)):
        DhcpSubnet(bridge_id="5a1d7a3c-0000-4000-8000-000000000002", **fields)


def test_a_client_identifier_too_long_to_echo_is_dropped_not_raised() -> None:
    """The server echoes option 61 (RFC 6842): 64 KB of it made the reply unbuildable
    and the simulation raise; now the request is dropped with a reason."""
    t = Topo()
    br = t.bridge()
    vm = t.bridge_port(br)
    t.add(DhcpSubnet(bridge_id=br.id, **_largest([])))
    ok = t.send(vm, dhcp_request(mac(CLIENT), dhcp.DISCOVER, options=((61, b"c" * 255),)))
    assert ok.verdict is Verdict.CONSUMED and len(ok.emitted) == 1
    huge = dhcp_request(mac(CLIENT), dhcp.DISCOVER, options=((61, b"c" * 64_600),))
    res = t.send(vm, huge)
    assert res.verdict is Verdict.DROP and not res.emitted
    assert res.drop_reason == (
        "malformed DHCP request: client identifier of 64600 bytes (at most 255)"
    )
