"""Ports ⇄ bridge ports (same id): addresses, DHCP hosts, MACs, bindings."""

from __future__ import annotations

import pytest
from neutron_helpers import Neutron, dump

from tessera.model import DhcpSubnet, Port, new_id
from tessera.model.neutron import NeutronPort
from tessera.neutron.ports import interface_name
from tessera.nsdb.errors import Conflict
from tessera.nsdb.store import TopologyStore


@pytest.fixture
def net(neutron: Neutron) -> dict:
    network = neutron.network()
    network["subnet"] = neutron.subnet(network["id"], "10.0.0.0/24")
    return network


def _dhcp(neutron: Neutron, net: dict) -> DhcpSubnet:
    return TopologyStore(neutron.nsdb).get(DhcpSubnet, net["subnet"]["tessera:dhcp_subnet_id"])


def test_a_port_is_a_bridge_port_with_an_address_and_a_dhcp_host(
    neutron: Neutron, net: dict
) -> None:
    port = neutron.port(net["id"], name="vm1", device_owner="compute:nova", device_id="vm-1")
    assert port["fixed_ips"] == [{"subnet_id": net["subnet"]["id"], "ip_address": "10.0.0.2"}]
    assert port["mac_address"].startswith("fa:16:3e:")
    assert port["status"] == "DOWN" and port["binding:vif_type"] == "unbound"
    for attr in ("allowed_address_pairs", "tags", "extra_dhcp_opts"):
        assert port[attr] == []
    assert len(port["security_groups"]) == 1  # the project's default group
    twin = TopologyStore(neutron.nsdb).get(Port, port["id"])
    assert twin.device_id == net["id"] and twin.type == "Bridge" and twin.tunnel_key > 0
    assert port["tessera:port_id"] == twin.id
    (host,) = _dhcp(neutron, net).hosts
    assert (host.mac_addr, host.ip_addr) == (port["mac_address"], "10.0.0.2")
    second = neutron.port(net["id"])
    assert second["fixed_ips"][0]["ip_address"] == "10.0.0.3"


def test_requested_addresses_and_their_errors(neutron: Neutron, net: dict) -> None:
    sub_id = net["subnet"]["id"]
    port = neutron.port(net["id"], fixed_ips=[{"ip_address": "10.0.0.50"}])
    assert port["fixed_ips"] == [{"subnet_id": sub_id, "ip_address": "10.0.0.50"}]
    by_subnet = neutron.port(net["id"], fixed_ips=[{"subnet_id": sub_id}])
    assert by_subnet["fixed_ips"][0]["ip_address"] == "10.0.0.2"
    before = dump(neutron.nsdb)
    cases = [
        (409, "IpAddressInUse", [{"subnet_id": sub_id, "ip_address": "10.0.0.50"}]),
        (400, "InvalidIpForSubnet", [{"subnet_id": sub_id, "ip_address": "10.0.1.5"}]),
        (400, "InvalidIpForSubnet", [{"subnet_id": sub_id, "ip_address": "10.0.0.255"}]),
        (400, "InvalidIpForNetwork", [{"ip_address": "192.168.0.5"}]),
        (404, "SubnetNotFound", [{"subnet_id": "6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b"}]),
    ]
    for status, type, fixed in cases:
        body = {"port": {"network_id": net["id"], "fixed_ips": fixed}}
        assert neutron.error("POST", "/v2.0/ports", status, json=body)["type"] == type
    assert dump(neutron.nsdb) == before


def test_a_subnet_of_another_network_is_400(neutron: Neutron, net: dict) -> None:
    other = neutron.network()
    other_sub = neutron.subnet(other["id"], "10.5.0.0/24")
    body = {"port": {"network_id": net["id"], "fixed_ips": [{"subnet_id": other_sub["id"]}]}}
    neutron.error("POST", "/v2.0/ports", 400, json=body)


def test_an_exhausted_pool_is_409(neutron: Neutron) -> None:
    network = neutron.network()
    neutron.subnet(network["id"], "10.0.0.0/30")  # one address besides the gateway
    neutron.port(network["id"])
    err = neutron.error("POST", "/v2.0/ports", 409, json={"port": {"network_id": network["id"]}})
    assert err["type"] == "IpAddressGenerationFailure"


def test_a_network_without_subnets_gives_no_address(neutron: Neutron) -> None:
    network = neutron.network()
    assert neutron.port(network["id"])["fixed_ips"] == []


def test_mac_address_given_and_in_use(neutron: Neutron, net: dict) -> None:
    port = neutron.port(net["id"], mac_address="FA:16:3E:00:00:01")
    assert port["mac_address"] == "fa:16:3e:00:00:01"
    body = {"port": {"network_id": net["id"], "mac_address": "fa:16:3e:00:00:01"}}
    assert neutron.error("POST", "/v2.0/ports", 409, json=body)["type"] == "MacAddressInUse"
    other = neutron.network()
    neutron.port(other["id"], mac_address="fa:16:3e:00:00:01")  # another network may


def test_security_attributes_are_stored(neutron: Neutron, net: dict) -> None:
    sgs = [
        neutron.client.post("/v2.0/security-groups", json={"security_group": {"name": n}}).json()[
            "security_group"
        ]["id"]
        for n in ("a", "b")
    ]
    neutron.error(
        "POST",
        "/v2.0/ports",
        404,
        json={"port": {"network_id": net["id"], "security_groups": [new_id()]}},
    )  # groups must exist
    port = neutron.port(
        net["id"],
        security_groups=sgs,
        allowed_address_pairs=[{"ip_address": "10.0.0.200/32"}],
    )
    assert port["security_groups"] == sgs
    assert port["allowed_address_pairs"] == [
        {"ip_address": "10.0.0.200/32", "mac_address": port["mac_address"]}
    ]
    stored = TopologyStore(neutron.nsdb).get(NeutronPort, port["id"])
    assert stored.security_groups == sgs
    plain = neutron.port(net["id"], port_security_enabled=False)
    assert plain["port_security_enabled"] is False
    body = {"port": {"allowed_address_pairs": [{"ip_address": "10.0.0.9"}]}}
    assert neutron.error("PUT", f"/v2.0/ports/{plain['id']}", 409, json=body)


def test_ports_inherit_the_network_port_security(neutron: Neutron) -> None:
    network = neutron.network(port_security_enabled=False)
    assert neutron.port(network["id"])["port_security_enabled"] is False


def test_binding_to_a_known_host_binds_the_twin(neutron: Neutron, net: dict) -> None:
    store = TopologyStore(neutron.nsdb)
    host = store.register_host("6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b", "compute1", [])
    port = neutron.port(net["id"], **{"binding:host_id": "compute1"})
    assert port["binding:vif_type"] == "tap" and port["status"] == "ACTIVE"
    twin = store.get(Port, port["id"])
    assert (twin.host_id, twin.interface_name) == (host.id, interface_name(port["id"]))
    assert port["tessera:interface_name"] == "tap" + port["id"][:11]
    r = neutron.client.put(f"/v2.0/ports/{port['id']}", json={"port": {"binding:host_id": ""}})
    assert r.json()["port"]["binding:vif_type"] == "unbound"
    assert store.get(Port, port["id"]).host_id is None
    r = neutron.client.put(f"/v2.0/ports/{port['id']}", json={"port": {"binding:host_id": host.id}})
    assert store.get(Port, port["id"]).host_id == host.id


def test_binding_to_an_unknown_host_fails_visibly(neutron: Neutron, net: dict) -> None:
    port = neutron.port(net["id"], **{"binding:host_id": "nowhere"})
    assert port["binding:vif_type"] == "binding_failed" and port["binding:host_id"] == "nowhere"
    assert TopologyStore(neutron.nsdb).get(Port, port["id"]).host_id is None


def test_update_moves_addresses_and_dhcp_hosts(neutron: Neutron, net: dict) -> None:
    port = neutron.port(net["id"])
    r = neutron.client.put(
        f"/v2.0/ports/{port['id']}",
        json={
            "port": {
                "fixed_ips": [{"ip_address": "10.0.0.77"}],
                "mac_address": "fa:16:3e:00:00:09",
                "admin_state_up": False,
            }
        },
    )
    assert r.status_code == 200, r.text
    updated = r.json()["port"]
    assert updated["fixed_ips"][0]["ip_address"] == "10.0.0.77"
    (host,) = _dhcp(neutron, net).hosts
    assert (host.mac_addr, host.ip_addr) == ("fa:16:3e:00:00:09", "10.0.0.77")
    assert TopologyStore(neutron.nsdb).get(Port, port["id"]).admin_state_up is False
    for attrs in ({"network_id": net["id"]}, {"id": port["id"]}, {"bogus": 1}):
        neutron.error("PUT", f"/v2.0/ports/{port['id']}", 400, json={"port": attrs})


def test_delete_removes_twin_and_dhcp_host_exactly(neutron: Neutron, net: dict) -> None:
    neutron.client.get("/v2.0/security-groups")  # the project's default group stays
    before = dump(neutron.nsdb)
    port = neutron.port(net["id"])
    assert neutron.client.delete(f"/v2.0/ports/{port['id']}").status_code == 204
    assert dump(neutron.nsdb) == before
    assert neutron.error("DELETE", f"/v2.0/ports/{port['id']}", 404)["type"] == "PortNotFound"


def test_deleting_the_twin_through_tessera_is_refused(neutron: Neutron, net: dict) -> None:
    """The v1 delete would leave the port's security chains and DHCP host behind."""
    port = neutron.port(net["id"])
    before = dump(neutron.nsdb)
    with pytest.raises(Conflict, match="managed by the Neutron API"):
        TopologyStore(neutron.nsdb).delete(Port, port["tessera:port_id"])
    assert dump(neutron.nsdb) == before
