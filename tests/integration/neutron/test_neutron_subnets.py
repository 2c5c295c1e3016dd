"""Subnets ⇄ DHCP subnets of the network's bridge, with Neutron's errors."""

from __future__ import annotations

import pytest
from neutron_helpers import Neutron, dump

from tessera.model import DhcpSubnet
from tessera.nsdb.store import TopologyStore


def test_a_subnet_is_a_dhcp_subnet_of_the_bridge(neutron: Neutron) -> None:
    net = neutron.network(mtu=1400)
    sub = neutron.subnet(
        net["id"],
        "10.0.0.0/24",
        dns_nameservers=["8.8.8.8"],
        host_routes=[{"destination": "10.9.0.0/16", "nexthop": "10.0.0.254"}],
    )
    assert sub["gateway_ip"] == "10.0.0.1"
    assert sub["allocation_pools"] == [{"start": "10.0.0.2", "end": "10.0.0.254"}]
    (dhcp,) = TopologyStore(neutron.nsdb).dhcp_subnets_of(net["id"])
    assert dhcp.id == sub["tessera:dhcp_subnet_id"] and dhcp.key == sub["tessera:dhcp_subnet"]
    assert (dhcp.subnet_prefix, dhcp.subnet_length) == ("10.0.0.0", 24)
    assert dhcp.default_gateway == "10.0.0.1" and dhcp.dns_server_addrs == ["8.8.8.8"]
    assert dhcp.interface_mtu == 1400 and dhcp.enabled
    (route,) = dhcp.opt121_routes
    assert (route.destination_prefix, route.destination_length, route.gateway_addr) == (
        "10.9.0.0",
        16,
        "10.0.0.254",
    )
    listed = neutron.client.get(f"/v2.0/networks/{net['id']}").json()["network"]
    assert listed["subnets"] == [sub["id"]]


def test_list_attributes_are_present_when_not_given(neutron: Neutron) -> None:
    net = neutron.network()
    sub = neutron.subnet(net["id"], gateway_ip=None)
    assert sub["dns_nameservers"] == [] and sub["host_routes"] == [] and sub["tags"] == []
    assert sub["gateway_ip"] is None
    assert sub["allocation_pools"] == [{"start": "10.0.0.1", "end": "10.0.0.254"}]
    shown = neutron.client.get(f"/v2.0/subnets/{sub['id']}").json()["subnet"]
    assert shown == sub


def test_given_pools_and_disabled_dhcp(neutron: Neutron) -> None:
    net = neutron.network()
    pools = [{"start": "10.0.0.10", "end": "10.0.0.20"}, {"start": "10.0.0.30", "end": "10.0.0.30"}]
    sub = neutron.subnet(net["id"], allocation_pools=pools, enable_dhcp=False)
    assert sub["allocation_pools"] == pools and sub["enable_dhcp"] is False
    assert not TopologyStore(neutron.nsdb).dhcp_subnets_of(net["id"])[0].enabled


@pytest.mark.parametrize(
    ("cidr", "more"),
    [
        ("10.0.0.0/33", {}),
        ("10.0.0.1/24", {}),  # host bits: not a recommended CIDR
        ("nonsense", {}),
        ("10.0.0.0", {}),
        ("fd00::/64", {}),
        ("10.0.0.0/31", {}),
        ("10.0.0.0/24", {"gateway_ip": "10.1.0.1"}),
        ("10.0.0.0/24", {"gateway_ip": "10.0.0.255"}),
        ("10.0.0.0/24", {"allocation_pools": [{"start": "10.0.0.200", "end": "10.0.1.5"}]}),
        ("10.0.0.0/24", {"allocation_pools": [{"start": "10.0.0.9", "end": "10.0.0.5"}]}),
        (
            "10.0.0.0/24",
            {
                "allocation_pools": [
                    {"start": "10.0.0.5", "end": "10.0.0.9"},
                    {"start": "10.0.0.9", "end": "10.0.0.12"},
                ]
            },
        ),
        ("10.0.0.0/24", {"ip_version": 6}),
    ],
)
def test_invalid_subnets_are_400(neutron: Neutron, cidr: str, more: dict) -> None:
    net = neutron.network()
    before = dump(neutron.nsdb)
    body = {"subnet": {"network_id": net["id"], "cidr": cidr, "ip_version": 4, **more}}
    neutron.error("POST", "/v2.0/subnets", 400, json=body)
    assert dump(neutron.nsdb) == before


def test_gateway_inside_a_pool_is_409(neutron: Neutron) -> None:
    net = neutron.network()
    pools = [{"start": "10.0.0.1", "end": "10.0.0.9"}]
    body = {"subnet": {"network_id": net["id"], "cidr": "10.0.0.0/24", "allocation_pools": pools}}
    err = neutron.error("POST", "/v2.0/subnets", 409, json=body)
    assert err["type"] == "GatewayConflictWithAllocationPools"


def test_overlapping_subnets_on_one_network_are_400(neutron: Neutron) -> None:
    net = neutron.network()
    neutron.subnet(net["id"], "10.0.0.0/16")
    body = {"subnet": {"network_id": net["id"], "cidr": "10.0.5.0/24", "ip_version": 4}}
    assert "overlaps" in neutron.error("POST", "/v2.0/subnets", 400, json=body)["message"]
    other = neutron.network()
    neutron.subnet(other["id"], "10.0.5.0/24")  # another network may reuse it


def test_subnet_on_a_missing_network_is_404(neutron: Neutron) -> None:
    body = {"subnet": {"network_id": "6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b", "cidr": "10.0.0.0/24"}}
    assert neutron.error("POST", "/v2.0/subnets", 404, json=body)["type"] == "NetworkNotFound"


def test_update_reaches_the_dhcp_subnet(neutron: Neutron) -> None:
    net = neutron.network()
    sub = neutron.subnet(net["id"])
    r = neutron.client.put(
        f"/v2.0/subnets/{sub['id']}",
        json={"subnet": {"enable_dhcp": False, "dns_nameservers": ["1.1.1.1"], "name": "s"}},
    )
    assert r.status_code == 200, r.text
    dhcp = TopologyStore(neutron.nsdb).get(DhcpSubnet, sub["tessera:dhcp_subnet_id"])
    assert not dhcp.enabled and dhcp.dns_server_addrs == ["1.1.1.1"]
    for attrs in ({"cidr": "10.1.0.0/24"}, {"network_id": net["id"]}, {"gateway_ip": "9.9.9.9"}):
        neutron.error("PUT", f"/v2.0/subnets/{sub['id']}", 400, json={"subnet": attrs})


def test_network_mtu_change_reaches_its_dhcp_subnets(neutron: Neutron) -> None:
    net = neutron.network()
    sub = neutron.subnet(net["id"])
    neutron.client.put(f"/v2.0/networks/{net['id']}", json={"network": {"mtu": 1280}})
    dhcp = TopologyStore(neutron.nsdb).get(DhcpSubnet, sub["tessera:dhcp_subnet_id"])
    assert dhcp.interface_mtu == 1280


def test_a_subnet_with_ports_is_in_use_and_delete_is_exact(neutron: Neutron) -> None:
    net = neutron.network()
    neutron.client.get("/v2.0/security-groups")  # the project's default group stays
    before = dump(neutron.nsdb)
    sub = neutron.subnet(net["id"])
    port = neutron.port(net["id"])
    assert neutron.error("DELETE", f"/v2.0/subnets/{sub['id']}", 409)["type"] == "SubnetInUse"
    assert neutron.client.delete(f"/v2.0/ports/{port['id']}").status_code == 204
    assert neutron.client.delete(f"/v2.0/subnets/{sub['id']}").status_code == 204
    assert dump(neutron.nsdb) == before
