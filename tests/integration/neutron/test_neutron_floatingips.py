"""Neutron floating IPs: an address of the external network, and once associated a
static NAT pair (dnat inbound, snat outbound, first in the router's chains); exact
removal, Neutron's errors, a packet to the floating address DNATed to the VM, and ARP
for the floating address answered by the router's gateway port."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from neutron_helpers import Neutron, dump

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from tessera.api.app import create_app
from tessera.model import Chain, Rule
from tessera.model.neutron import NeutronRouter
from tessera.nsdb.store import TopologyStore
from tessera.packet import Arp, Ethernet, ip_from_str, mac_from_str

VM_MAC = "fa:16:3e:00:00:20"
OUTSIDE_MAC = "fa:16:3e:00:00:99"


def put(neutron: Neutron, path: str, body: Any, status: int = 200) -> dict[str, Any]:
    r = neutron.client.put(path, json=body)
    assert r.status_code == status, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture
def world(neutron: Neutron) -> dict[str, Any]:
    """lan 10.0.0.0/24 -- router (gateway, SNAT) -- public 203.0.113.0/24; a VM port."""
    lan = neutron.subnet(neutron.network(name="lan")["id"], "10.0.0.0/24")
    public = neutron.network(name="public", **{"router:external": True})
    ext = neutron.subnet(public["id"], "203.0.113.0/24", gateway_ip="203.0.113.1")
    r = neutron.create("router", name="r", external_gateway_info={"network_id": public["id"]})
    put(neutron, f"/v2.0/routers/{r['id']}/add_router_interface", {"subnet_id": lan["id"]})
    # no security groups in the way (the default group admits only its members)
    vm = neutron.port(lan["network_id"], mac_address=VM_MAC, port_security_enabled=False)
    return {"lan": lan, "ext": ext, "router": r, "vm": vm, "public": public["id"]}


def _rules(neutron: Neutron, chain_id: str) -> list[Rule]:
    store = TopologyStore(neutron.nsdb)
    return [store.get(Rule, i) for i in store.get(Chain, chain_id).rule_ids]


def test_create_allocates_from_the_external_pool(neutron: Neutron, world: dict) -> None:
    before = dump(neutron.nsdb)
    fip = neutron.create("floatingip", floating_network_id=world["public"])
    assert fip["floating_ip_address"].startswith("203.0.113.")
    assert fip["port_id"] is None and fip["status"] == "DOWN"
    reserving = neutron.client.get(f"/v2.0/ports/{fip['tessera:floating_port_id']}").json()
    assert reserving["port"]["device_owner"] == "network:floatingip"
    assert neutron.client.delete(f"/v2.0/floatingips/{fip['id']}").status_code == 204
    assert dump(neutron.nsdb) == before


def test_associate_makes_static_nat_first_and_disassociate_removes_it(
    neutron: Neutron, world: dict
) -> None:
    r = world["router"]
    fip = neutron.create(
        "floatingip", floating_network_id=world["public"], floating_ip_address="203.0.113.50"
    )
    before = dump(neutron.nsdb)
    got = put(
        neutron, f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"port_id": world["vm"]["id"]}}
    )
    fixed = world["vm"]["fixed_ips"][0]["ip_address"]
    assert got["floatingip"]["fixed_ip_address"] == fixed
    assert got["floatingip"]["router_id"] == r["id"]
    inbound = _rules(neutron, r["tessera:inbound_chain_id"])
    outbound = _rules(neutron, r["tessera:outbound_chain_id"])
    assert [x.type for x in inbound] == ["dnat", "rev_snat"]
    assert [x.type for x in outbound] == ["snat", "snat"]
    assert (inbound[0].nw_dst_address, inbound[0].nat_targets[0].address_from) == (
        "203.0.113.50", fixed,
    )  # fmt: skip
    assert (outbound[0].nw_src_address, outbound[0].nat_targets[0].address_from) == (
        fixed, "203.0.113.50",
    )  # fmt: skip
    # the interface and the gateway it needs cannot go meanwhile
    err = neutron.error(
        "PUT", f"/v2.0/routers/{r['id']}/remove_router_interface", 409,
        json={"subnet_id": world["lan"]["id"]},
    )  # fmt: skip
    assert err["type"] == "RouterInterfaceInUseByFloatingIP"
    err = neutron.error(
        "PUT", f"/v2.0/routers/{r['id']}", 409, json={"router": {"external_gateway_info": {}}}
    )
    assert err["type"] == "RouterExternalGatewayInUseByFloatingIp"
    put(neutron, f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"port_id": None}})
    after = dump(neutron.nsdb)
    assert {k: v for k, v in after.items() if k != "neutron_floatingips"} == {
        k: v for k, v in before.items() if k != "neutron_floatingips"
    }


def test_errors(neutron: Neutron, world: dict) -> None:
    neutron.error("POST", "/v2.0/floatingips", 400, json={"floatingip": {}})
    lan_net = world["lan"]["network_id"]
    err = neutron.error(
        "POST", "/v2.0/floatingips", 400, json={"floatingip": {"floating_network_id": lan_net}}
    )
    assert err["type"] == "BadRequest"
    missing = world["router"]["id"]
    neutron.error(
        "POST", "/v2.0/floatingips", 404, json={"floatingip": {"floating_network_id": missing}}
    )
    fip = neutron.create("floatingip", floating_network_id=world["public"])
    taken = {
        "floating_network_id": world["public"],
        "floating_ip_address": fip["floating_ip_address"],
    }
    neutron.error("POST", "/v2.0/floatingips", 409, json={"floatingip": taken})
    path = f"/v2.0/floatingips/{fip['id']}"
    neutron.error("PUT", path, 404, json={"floatingip": {"port_id": missing}})
    vm = world["vm"]["id"]
    neutron.error(
        "PUT", path, 400, json={"floatingip": {"port_id": vm, "fixed_ip_address": "10.0.0.99"}}
    )
    # a port whose network no router connects to the external network
    alone = neutron.subnet(neutron.network(name="alone")["id"], "10.9.0.0/24")
    orphan = neutron.port(alone["network_id"])
    err = neutron.error("PUT", path, 404, json={"floatingip": {"port_id": orphan["id"]}})
    assert err["type"] == "ExternalGatewayForFloatingIPNotFound"
    put(neutron, path, {"floatingip": {"port_id": vm}})
    other = neutron.create("floatingip", floating_network_id=world["public"])
    err = neutron.error(
        "PUT", f"/v2.0/floatingips/{other['id']}", 409, json={"floatingip": {"port_id": vm}}
    )
    assert err["type"] == "FloatingIPPortAlreadyAssociated"
    neutron.error("GET", f"/v2.0/floatingips/{missing}", 404)
    # the external network cannot go while floating IPs hold addresses on it
    neutron.error("DELETE", f"/v2.0/networks/{world['public']}", 409)


def test_a_packet_to_the_floating_ip_reaches_the_vm(neutron: Neutron, world: dict) -> None:
    """From outside (a port on the external network) to the floating address, sent to
    the gateway port's MAC: the router DNATs it to the VM's fixed address."""
    fip = neutron.create(
        "floatingip", floating_network_id=world["public"], port_id=world["vm"]["id"]
    )
    outside = neutron.port(world["public"], mac_address=OUTSIDE_MAC, port_security_enabled=False)
    store = TopologyStore(neutron.nsdb)
    router = store.get(NeutronRouter, world["router"]["id"])
    assert router.gateway is not None
    gw_port = neutron.client.get(f"/v2.0/ports/{router.gateway.port_id}").json()["port"]
    with TestClient(create_app(neutron.nsdb)) as v1:
        r = v1.post(
            "/api/v1/traces",
            json={
                "port_id": outside["id"], "src_mac": OUTSIDE_MAC,
                "dst_mac": gw_port["mac_address"], "src_ip": "198.51.100.7",
                "dst_ip": fip["floating_ip_address"], "protocol": "tcp",
                "src_port": 40000, "dst_port": 22,
            },
        )  # fmt: skip
    assert r.status_code == 200, r.text
    trace = r.json()
    assert [o["port_id"] for o in trace["outputs"]] == [world["vm"]["id"]], trace["drop_reason"]
    assert trace["outputs"][0]["set_nw_dst"] == world["vm"]["fixed_ips"][0]["ip_address"]


def test_deleting_an_associated_floating_ip_restores_everything(
    neutron: Neutron, world: dict
) -> None:
    before = dump(neutron.nsdb)
    fip = neutron.create(
        "floatingip", floating_network_id=world["public"], port_id=world["vm"]["id"]
    )
    assert len(fip["tessera:rule_ids"]) == 2 and fip["status"] == "ACTIVE"
    assert neutron.client.delete(f"/v2.0/floatingips/{fip['id']}").status_code == 204
    assert dump(neutron.nsdb) == before
    neutron.error("DELETE", f"/v2.0/floatingips/{fip['id']}", 404)


def test_listing_filters_by_port(neutron: Neutron, world: dict) -> None:
    neutron.create("floatingip", floating_network_id=world["public"])
    fip = neutron.create(
        "floatingip", floating_network_id=world["public"], port_id=world["vm"]["id"]
    )
    got = neutron.client.get("/v2.0/floatingips", params={"port_id": world["vm"]["id"]})
    assert [f["id"] for f in got.json()["floatingips"]] == [fip["id"]]


def _arp_trace(neutron: Neutron, port_id: str, target: str) -> dict[str, Any]:
    """Trace an ARP request, broadcast by `port_id` (OUTSIDE_MAC, 203.0.113.77) for
    `target`."""
    with TestClient(create_app(neutron.nsdb)) as v1:
        r = v1.post(
            "/api/v1/traces",
            json={
                "port_id": port_id, "src_mac": OUTSIDE_MAC, "dst_mac": "ff:ff:ff:ff:ff:ff",
                "src_ip": "203.0.113.77", "dst_ip": target, "protocol": "arp",
            },
        )  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_the_router_answers_arp_for_an_associated_floating_ip(
    neutron: Neutron, world: dict
) -> None:
    """On the external network, who-has the floating address is answered with the
    gateway port's MAC while the address is associated (its dnat rule exists), and no
    longer once it is disassociated."""
    fip = neutron.create(
        "floatingip", floating_network_id=world["public"], port_id=world["vm"]["id"]
    )
    address = fip["floating_ip_address"]
    outside = neutron.port(
        world["public"], mac_address=OUTSIDE_MAC, port_security_enabled=False,
        fixed_ips=[{"ip_address": "203.0.113.77"}],
    )  # fmt: skip
    router = TopologyStore(neutron.nsdb).get(NeutronRouter, world["router"]["id"])
    assert router.gateway is not None
    gw_mac = neutron.client.get(f"/v2.0/ports/{router.gateway.port_id}").json()["port"][
        "mac_address"
    ]
    trace = _arp_trace(neutron, outside["id"], address)
    (reply,) = trace["emitted"]
    assert (reply["port_id"], reply["kind"]) == (outside["id"], "arp_reply")
    answer = Ethernet.parse(bytes.fromhex(reply["frame"])).payload
    assert isinstance(answer, Arp)
    assert (answer.sender_mac, answer.sender_ip) == (mac_from_str(gw_mac), ip_from_str(address))
    assert answer.target_mac == mac_from_str(OUTSIDE_MAC)
    # Another address of the external network is not the router's to answer.
    assert _arp_trace(neutron, outside["id"], "203.0.113.200")["emitted"] == []
    put(neutron, f"/v2.0/floatingips/{fip['id']}", {"floatingip": {"port_id": None}})
    trace = _arp_trace(neutron, outside["id"], address)
    assert trace["emitted"] == []
