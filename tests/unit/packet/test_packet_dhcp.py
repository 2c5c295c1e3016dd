"""DHCP options, RFC 3442 routes and the replies the agent's DHCP server sends."""

from __future__ import annotations

import pytest

from tessera.packet import (
    BROADCAST_IP,
    BROADCAST_MAC,
    Dhcp,
    Ethernet,
    IPv4,
    PacketError,
    Udp,
    dhcp,
    dhcp_reply,
    ip_from_str,
)
from tessera.packet.dhcp import decode_classless_routes, encode_classless_routes

# RFC 3442 §3 table: destination descriptors for each (subnet, mask width).
RFC3442_EXAMPLES = [
    ("0.0.0.0", 0, "00"),
    ("10.0.0.0", 8, "080a"),
    ("10.0.0.0", 24, "180a0000"),
    ("10.17.0.0", 16, "100a11"),
    ("10.27.129.0", 24, "180a1b81"),
    ("10.229.0.128", 25, "190ae50080"),
    ("10.198.122.47", 32, "200ac67a2f"),
]
ROUTER = ip_from_str("10.0.0.1")


@pytest.mark.parametrize(("network", "width", "descriptor"), RFC3442_EXAMPLES)
def test_classless_route_encoding_follows_rfc3442(
    network: str, width: int, descriptor: str
) -> None:
    route = (ip_from_str(network), width, ROUTER)
    encoded = bytes.fromhex(descriptor + "0a000001")
    assert encode_classless_routes([route]) == encoded
    assert decode_classless_routes(encoded) == (route,)


def test_classless_routes_concatenate() -> None:
    routes = tuple((ip_from_str(n), w, ROUTER) for n, w, _ in RFC3442_EXAMPLES)
    assert decode_classless_routes(encode_classless_routes(routes)) == routes


def test_classless_route_with_host_bits_is_refused() -> None:
    with pytest.raises(PacketError):
        encode_classless_routes([(ip_from_str("10.0.0.1"), 8, ROUTER)])


@pytest.mark.parametrize("raw", ["21", "180a00", "080a0a0000"])
def test_malformed_classless_routes(raw: str) -> None:
    with pytest.raises(PacketError):
        decode_classless_routes(bytes.fromhex(raw))


def _request(**fields: object) -> Dhcp:
    base: dict[str, object] = {"op": dhcp.BOOTREQUEST, "xid": 0x1234, "chaddr": 0x0200000000AA}
    base.update(fields)
    return Dhcp(**base)  # type: ignore[arg-type]


def test_build_is_at_least_300_bytes_and_starts_with_message_type() -> None:
    raw = _request(message_type=dhcp.REQUEST, requested_ip=5).build()
    assert len(raw) == dhcp.MIN_MESSAGE_LEN
    assert raw[236:240] == dhcp.MAGIC_COOKIE
    assert raw[240:243] == b"\x35\x01\x03"


def test_long_options_are_split_and_rejoined_rfc3396() -> None:
    dns = tuple(range(1, 101))  # 400 bytes: needs two instances of option 6
    msg = _request(dns_servers=dns, options=((dhcp.OPT_DOMAIN_NAME, b"x" * 300),))
    raw = msg.build()
    assert raw.count(b"\x06\xff") >= 1
    assert Dhcp.parse(raw) == msg


def test_all_typed_options_round_trip() -> None:
    msg = Dhcp(
        op=dhcp.BOOTREPLY,
        xid=0xDEADBEEF,
        chaddr=0x0200000000AA,
        message_type=dhcp.ACK,
        yiaddr=ip_from_str("10.0.0.5"),
        server_id=ip_from_str("10.0.0.2"),
        requested_ip=ip_from_str("10.0.0.5"),
        lease_time=86400,
        subnet_mask=ip_from_str("255.255.255.0"),
        routers=(ip_from_str("10.0.0.1"),),
        dns_servers=(ip_from_str("8.8.8.8"), ip_from_str("1.1.1.1")),
        mtu=1450,
        classless_routes=((ip_from_str("169.254.169.254"), 32, ip_from_str("10.0.0.2")),),
        hostname="vm-1",
        param_request_list=(1, 3, 6, 121),
        sname=b"server",
        file=b"pxelinux.0",
    )
    assert Dhcp.parse(msg.build()) == msg


@pytest.mark.parametrize(
    ("code", "value"),
    [(53, b""), (53, b"\x01\x02"), (51, b"\x00\x01"), (1, b"\xff\xff\xff"), (3, b"\x0a\x00"),
     (26, b"\x05")],
)  # fmt: skip
def test_typed_options_with_wrong_length_are_refused(code: int, value: bytes) -> None:
    raw = bytearray(_request().build())
    raw[240:243] = bytes((code, len(value))) + value + b"\xff" if value else bytes((code, 0, 255))
    with pytest.raises(PacketError):
        Dhcp.parse(bytes(raw))


def test_missing_cookie_and_truncated_options_are_refused() -> None:
    raw = _request(message_type=1).build()
    with pytest.raises(PacketError):
        Dhcp.parse(raw[:236] + b"\x00\x00\x00\x00" + raw[240:])
    with pytest.raises(PacketError):
        Dhcp.parse(raw[:241])  # option code without its length
    with pytest.raises(PacketError):
        Dhcp.parse(raw[:242])  # length 1 but no value


def test_options_given_twice_are_refused_on_build() -> None:
    with pytest.raises(PacketError):
        _request(options=((53, b"\x01"),)).build()
    with pytest.raises(PacketError):
        _request(options=((60, b"a"), (60, b"b"))).build()


SERVER_MAC = 0x0200000000FE
SERVER_IP = ip_from_str("10.0.0.2")
CLIENT_IP = ip_from_str("10.0.0.5")


def _reply(request: Dhcp, message_type: int = dhcp.OFFER) -> tuple[Ethernet, IPv4, Udp, Dhcp]:
    frame = dhcp_reply(
        request,
        message_type,
        server_mac=SERVER_MAC,
        server_ip=SERVER_IP,
        your_ip=CLIENT_IP,
        subnet_mask=ip_from_str("255.255.255.0"),
        routers=(ip_from_str("10.0.0.1"),),
        lease_time=3600,
        mtu=1450,
    )
    parsed = Ethernet.parse(frame.build())
    assert parsed == frame
    ip = parsed.payload
    assert isinstance(ip, IPv4) and isinstance(ip.payload, Udp)
    assert isinstance(ip.payload.payload, Dhcp)
    return parsed, ip, ip.payload, ip.payload.payload


def test_offer_unicasts_to_the_offered_address() -> None:
    request = _request(message_type=dhcp.DISCOVER, options=((61, b"\x01abcdef"),))
    eth, ip, udp, msg = _reply(request)
    assert (eth.dst, eth.src, ip.src, ip.dst) == (request.chaddr, SERVER_MAC, SERVER_IP, CLIENT_IP)
    assert (udp.src_port, udp.dst_port) == (67, 68)
    assert (msg.op, msg.xid, msg.message_type) == (dhcp.BOOTREPLY, request.xid, dhcp.OFFER)
    assert (msg.yiaddr, msg.server_id, msg.lease_time, msg.mtu) == (
        CLIENT_IP,
        SERVER_IP,
        3600,
        1450,
    )
    assert msg.option(61) == b"\x01abcdef"  # client id echoed (RFC 6842)


def test_broadcast_flag_gets_a_broadcast_reply() -> None:
    eth, ip, _, _ = _reply(_request(message_type=dhcp.DISCOVER, flags=dhcp.FLAG_BROADCAST))
    assert (eth.dst, ip.dst) == (BROADCAST_MAC, BROADCAST_IP)


def test_renewal_is_answered_to_ciaddr() -> None:
    _, ip, _, msg = _reply(_request(message_type=dhcp.REQUEST, ciaddr=CLIENT_IP), dhcp.ACK)
    assert ip.dst == CLIENT_IP and msg.ciaddr == CLIENT_IP


def test_nak_is_broadcast_and_carries_no_configuration() -> None:
    eth, ip, _, msg = _reply(_request(message_type=dhcp.REQUEST, ciaddr=CLIENT_IP), dhcp.NAK)
    assert (eth.dst, ip.dst) == (BROADCAST_MAC, BROADCAST_IP)
    assert (msg.yiaddr, msg.lease_time, msg.routers, msg.subnet_mask) == (0, None, (), None)
    assert msg.server_id == SERVER_IP


def test_relayed_request_is_answered_to_the_relay() -> None:
    relay = ip_from_str("10.0.0.254")
    _, ip, udp, _ = _reply(_request(message_type=dhcp.DISCOVER, giaddr=relay))
    assert (ip.dst, udp.dst_port) == (relay, 67)


def test_reply_type_must_be_a_server_message() -> None:
    with pytest.raises(PacketError):
        dhcp_reply(_request(), dhcp.DISCOVER, server_mac=1, server_ip=2)
