"""Command-line value parsers: what they accept, what they refuse, in what words."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.client.errors import BadArgument
from tessera.clikit.params import (
    CLEAR,
    Cidr,
    convert,
    convert_clearable,
    convert_many,
    parse_cidr,
    parse_dl_type,
    parse_ifname,
    parse_interface_address,
    parse_listen,
    parse_mac,
    parse_nat_target,
    parse_network,
    parse_nsdb_url,
    parse_nw_proto,
    parse_opt121_route,
    parse_port_range,
    parse_subnet_key,
    parse_uuid,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("80", (80, 80)), ("80:90", (80, 90)), ("80-90", (80, 90)), ("0:65535", (0, 65535))],
)
def test_port_range_forms(text: str, expected: tuple[int, int]) -> None:
    assert parse_port_range(text) == {"start": expected[0], "end": expected[1]}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("90:80", "starts after it ends"),
        ("70000", "greater than 65535"),
        ("http", "not a port"),
        ("1:2:3", "not a port"),
        ("-5", "not a port"),
        ("", "not a port"),
    ],
)
def test_port_range_refusals(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_port_range(text)


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_port_range_accepts_exactly_ordered_pairs(a: int, b: int) -> None:
    if a <= b:
        assert parse_port_range(f"{a}:{b}") == {"start": a, "end": b}
    else:
        with pytest.raises(ValueError):
            parse_port_range(f"{a}:{b}")


@given(st.ip_addresses(v=4), st.integers(0, 32))
def test_cidr_keeps_address_and_length(addr: ipaddress.IPv4Address, length: int) -> None:
    cidr = parse_cidr(f"{addr}/{length}")
    assert cidr == Cidr(str(addr), length)
    assert ipaddress.IPv4Address(cidr.network.address) in ipaddress.IPv4Network(
        f"{addr}/{length}", strict=False
    )


def test_cidr_bare_address_is_a_host_route() -> None:
    assert parse_cidr("10.1.2.3") == Cidr("10.1.2.3", 32)


@pytest.mark.parametrize("text", ["10.0.0.0/33", "10.0.0/24", "10.0.0.0/x", "a.b.c.d", ""])
def test_cidr_refusals(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cidr(text)


def test_network_needs_a_length_and_no_host_bits() -> None:
    assert parse_network("10.0.0.0/24") == Cidr("10.0.0.0", 24)
    with pytest.raises(ValueError, match=re.escape("did you mean 10.0.0.0/24")):
        parse_network("10.0.0.1/24")
    with pytest.raises(ValueError, match="expected ADDR/LEN"):
        parse_network("10.0.0.0")


def test_interface_address_keeps_host_bits_and_knows_its_network() -> None:
    cidr = parse_interface_address("10.0.0.1/24")
    assert (cidr.address, cidr.network.address, cidr.length) == ("10.0.0.1", "10.0.0.0", 24)
    with pytest.raises(ValueError, match="prefix length"):
        parse_interface_address("10.0.0.1")


def test_mac_is_normalised() -> None:
    assert parse_mac("AA-BB-CC-00-11-22") == "aa:bb:cc:00:11:22"
    for bad in ("aa:bb:cc:00:11", "aa:bb:cc:00:11:zz", "aabbcc001122"):
        with pytest.raises(ValueError, match="not a MAC address"):
            parse_mac(bad)


def test_uuid_is_normalised() -> None:
    assert parse_uuid("6F1E9D2C9A514E2B8A441C2D3E4F5A6B") == "6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b"
    with pytest.raises(ValueError, match="not an id"):
        parse_uuid("bridge-1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", {"address_from": "10.0.0.1", "address_to": "10.0.0.1"}),
        (
            "10.0.0.1-10.0.0.9:1024-65535",
            {
                "address_from": "10.0.0.1",
                "address_to": "10.0.0.9",
                "port_from": 1024,
                "port_to": 65535,
            },
        ),
        (
            "192.0.2.5:80",
            {
                "address_from": "192.0.2.5",
                "address_to": "192.0.2.5",
                "port_from": 80,
                "port_to": 80,
            },
        ),
    ],
)
def test_nat_target_forms(text: str, expected: dict[str, object]) -> None:
    assert parse_nat_target(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("10.0.0.9-10.0.0.1", "starts after it ends"),
        ("10.0.0.1:90-80", "bad ports"),
        ("host:80", "not an IPv4 address"),
    ],
)
def test_nat_target_refusals(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_nat_target(text)


def test_named_ethertypes_and_protocols() -> None:
    assert parse_dl_type("ipv4") == 0x0800
    assert parse_dl_type("0x86dd") == 0x86DD
    assert parse_dl_type("2054") == 0x0806
    assert parse_nw_proto("TCP") == 6
    assert parse_nw_proto("132") == 132
    with pytest.raises(ValueError, match="not an EtherType"):
        parse_dl_type("0x10000")
    assert parse_dl_type("0x0600") == 0x0600
    for length in ("0x05ff", "0", "1500"):  # IEEE 802.3 lengths, not EtherTypes
        with pytest.raises(ValueError, match="0x0600 to 0xffff"):
            parse_dl_type(length)
    with pytest.raises(ValueError, match="not an IP protocol"):
        parse_nw_proto("256")


def test_subnet_keys_and_opt121_routes() -> None:
    assert parse_subnet_key("10.0.0.0/24") == "10.0.0.0_24"
    assert parse_subnet_key("10.0.0.0_24") == "10.0.0.0_24"
    assert parse_opt121_route("172.16.0.0/16,10.0.0.254") == {
        "destination_prefix": "172.16.0.0",
        "destination_length": 16,
        "gateway_addr": "10.0.0.254",
    }
    with pytest.raises(ValueError, match="DEST/LEN,GATEWAY"):
        parse_opt121_route("172.16.0.0/16")


def test_interface_names_follow_linux_rules() -> None:
    assert parse_ifname("veth-vm1") == "veth-vm1"
    for bad in ("", "a" * 16, "a/b", "eth 0", "eth0:1", "..", "tap\x1b0", "tap\u202e", "tapé"):
        with pytest.raises(ValueError, match="not an interface name"):
            parse_ifname(bad)


def test_listen_and_nsdb_urls() -> None:
    assert parse_listen("0.0.0.0:8181") == "0.0.0.0:8181"
    assert parse_listen("[::1]:8181") == "[::1]:8181"
    for bad in ("8181", ":8181", "host:0", "host:http", "[::1:80"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    for good in ("memory", "memory:lab1", "zk://127.0.0.1:2181/tessera", "zk://a:1,b:2/t"):
        assert parse_nsdb_url(good) == good
    for bad in ("zk://", "zk:///root", "mysql://x", ""):
        with pytest.raises(ValueError, match="not an NSDB URL"):
            parse_nsdb_url(bad)


def test_convert_names_the_option_and_none_clears() -> None:
    with pytest.raises(BadArgument, match="invalid value for --tp-dst: port range '9:8'"):
        convert("--tp-dst", "9:8", parse_port_range)
    assert convert("--tp-dst", None, parse_port_range) is None
    assert convert_clearable("--tp-dst", "None", parse_port_range) is CLEAR
    assert convert_many("--in-ports", ["a1,b2", " c3 "], str.upper) == ["A1", "B2", "C3"]
    assert BadArgument.exit_code == 2
