"""Single-object checks that used to pass and left the data plane something it cannot
use (issue 13, item 6): router port MACs and addresses, DHCP leases, EtherTypes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from tessera.model import Conditions, DhcpSubnet, Mirror, Port, Rule, new_id
from tessera.model.text import STORED_CONTEXT


def router_port(address: str = "10.0.0.1", length: int = 24, **kw: Any) -> Port:
    return Port(
        device_id=new_id(),
        type="Router",
        port_address=address,
        network_address=address,
        network_length=length,
        **kw,
    )


@pytest.mark.parametrize(
    ("mac", "fragment"),
    [
        ("00:00:00:00:00:00", "is not a usable MAC address"),
        ("ff:ff:ff:ff:ff:ff", "is a broadcast address"),
        ("01:00:5e:00:00:01", "is a multicast address"),
        ("33:33:00:00:00:01", "is a multicast address"),
        ("03:00:00:00:00:01", "is a multicast address"),
    ],
)
def test_router_port_macs_are_unicast(mac: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=f"port_mac\n.*{mac} {fragment}"):
        router_port(port_mac=mac)


@pytest.mark.parametrize("mac", ["02:7e:55:00:00:01", "fa:16:3e:00:00:01", "00:00:00:00:00:01"])
def test_unicast_router_port_macs_pass(mac: str) -> None:
    assert router_port(port_mac=mac).port_mac == mac


@pytest.mark.parametrize(
    ("address", "length", "fragment"),
    [
        ("10.0.0.0", 24, "is the network address of 10.0.0.0/24"),
        ("10.0.0.255", 24, "is the broadcast address of 10.0.0.0/24"),
        ("10.0.0.4", 30, "is the network address of 10.0.0.4/30"),
        ("10.0.0.7", 30, "is the broadcast address of 10.0.0.4/30"),
        ("0.0.0.0", 8, "port_address 0.0.0.0 is not a usable address"),
        ("0.0.0.0", 32, "port_address 0.0.0.0 is not a usable address"),
        ("10.0.0.1", 0, "network_length 0 is not allowed for a router port"),
        ("0.0.0.0", 0, "network_length 0 is not allowed for a router port"),
        ("224.0.0.1", 24, "not a unicast address"),
        ("255.255.255.255", 32, "not a unicast address"),
    ],
)
def test_router_port_addresses_are_host_addresses(address: str, length: int, fragment: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(fragment)):
        router_port(address, length)


@pytest.mark.parametrize(
    ("address", "length"), [("10.0.0.0", 31), ("10.0.0.1", 31), ("10.0.0.9", 32), ("10.0.0.1", 30)]
)
def test_point_to_point_links_use_every_address(address: str, length: int) -> None:
    """RFC 3021: a /31 has no network or broadcast address; a /32 is its own."""
    assert router_port(address, length).port_address == address


def subnet(**kw: Any) -> DhcpSubnet:
    fields: dict[str, Any] = {
        "bridge_id": new_id(),
        "subnet_prefix": "10.0.0.0",
        "subnet_length": 24,
        "default_gateway": "10.0.0.1",
        "server_addr": "10.0.0.2",
    }
    return DhcpSubnet.model_validate(fields | kw)


def host(ip: str = "10.0.0.10", mac: str = "02:00:00:00:00:10") -> dict[str, str]:
    return {"mac_addr": mac, "ip_addr": ip}


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"hosts": [host("10.0.0.0")]}, "10.0.0.0 is the network address of 10.0.0.0/24"),
        ({"hosts": [host("10.0.0.255")]}, "10.0.0.255 is the broadcast address of 10.0.0.0/24"),
        ({"hosts": [host("10.0.0.1")]}, "10.0.0.1 is the subnet's default_gateway"),
        ({"hosts": [host("10.0.0.2")]}, "10.0.0.2 is the subnet's server_addr"),
        (
            {"default_gateway": None, "server_addr": None, "hosts": [host("10.0.0.1")]},
            "10.0.0.1 is the DHCP server's",
        ),
        ({"hosts": [host(mac="01:00:5e:00:00:01")]}, "01:00:5e:00:00:01 is a multicast"),
        ({"hosts": [host(mac="ff:ff:ff:ff:ff:ff")]}, "ff:ff:ff:ff:ff:ff is a broadcast"),
        ({"hosts": [host(mac="00:00:00:00:00:00")]}, "00:00:00:00:00:00 is not a usable MAC"),
        (
            {"subnet_length": 31, "default_gateway": None, "server_addr": None},
            "less than or equal to 30",
        ),
        (
            {"subnet_length": 32, "default_gateway": None, "server_addr": None},
            "less than or equal to 30",
        ),
    ],
)
def test_dhcp_leases_a_client_can_use(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(fragment)):
        subnet(**fields)


def test_a_usable_lease_passes() -> None:
    assert subnet(hosts=[host("10.0.0.254")]).hosts[0].ip_addr == "10.0.0.254"
    # With neither gateway nor server address, only the first address is the server's.
    assert subnet(default_gateway=None, server_addr=None, hosts=[host("10.0.0.2")]).hosts


@pytest.mark.parametrize("dl_type", [0, 0x05DC, 0x05FF])
def test_dl_type_is_an_ethertype(dl_type: int) -> None:
    with pytest.raises(ValidationError, match=f"dl_type {dl_type:#06x} is not an EtherType"):
        Rule(chain_id=new_id(), type="drop", dl_type=dl_type)
    with pytest.raises(ValidationError, match="is not an EtherType"):
        Mirror(to_port_id=new_id(), conditions=[{"dl_type": dl_type}])
    assert Rule(chain_id=new_id(), type="drop", dl_type=0x0600).dl_type == 0x0600


def test_objects_stored_before_the_checks_stay_readable() -> None:
    """The NSDB reads objects under STORED_CONTEXT: what an older version stored loads."""
    raw = router_port().model_dump() | {"port_address": "10.0.0.0", "network_address": "10.0.0.0"}
    assert Port.model_validate(raw, context=STORED_CONTEXT).port_address == "10.0.0.0"
    rule = Rule.model_validate(
        Rule(chain_id=new_id(), type="drop").model_dump() | {"dl_type": 5}, context=STORED_CONTEXT
    )
    assert rule.conditions().dl_type == 5
    assert rule.model_copy(update={"position": 3}).position == 3  # as the store presents it
    bad_route = {
        "destination_prefix": "172.16.0.1",
        "destination_length": 12,
        "gateway_addr": "10.0.0.1",
    }
    raw_subnet = subnet().model_dump() | {"opt121_routes": [bad_route]}
    assert DhcpSubnet.model_validate(raw_subnet, context=STORED_CONTEXT).opt121_routes
    with pytest.raises(ValidationError):
        Conditions.model_validate({"dl_type": 5})
