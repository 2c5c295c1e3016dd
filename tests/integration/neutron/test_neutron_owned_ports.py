"""Ports and twins that belong to someone else: the port API refuses to delete a router
interface, router gateway or floating IP port (Neutron's `ServicePortInUse`); deleting a
VM port disassociates its floating IPs in the same transaction; the v1 API refuses to
delete an object that is a Neutron object's twin (on both NSDB backends)."""

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


def _world(neutron: Neutron) -> dict[str, Any]:
    """lan -- router (interface, gateway) -- public; a VM port with a floating IP."""
    lan = neutron.subnet(neutron.network(name="lan")["id"], "10.0.0.0/24")
    public = neutron.network(name="public", **{"router:external": True})
    neutron.subnet(public["id"], "203.0.113.0/24", gateway_ip="203.0.113.1")
    r = neutron.create("router", name="r", external_gateway_info={"network_id": public["id"]})
    got = neutron.client.put(
        f"/v2.0/routers/{r['id']}/add_router_interface", json={"subnet_id": lan["id"]}
    )
    assert got.status_code == 200, got.text
    vm = neutron.port(lan["network_id"], port_security_enabled=False)
    fip = neutron.create("floatingip", floating_network_id=public["id"], port_id=vm["id"])
    router = neutron.client.get(f"/v2.0/routers/{r['id']}").json()["router"]
    return {
        "router": router,
        "lan": lan,
        "vm": vm,
        "fip": fip,
    }


def _owned(neutron: Neutron, owner: str) -> list[dict[str, Any]]:
    ports = neutron.client.get("/v2.0/ports", params={"device_owner": owner}).json()["ports"]
    return ports  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "owner", ["network:router_interface", "network:router_gateway", "network:floatingip"]
)
def test_the_port_api_refuses_to_delete_a_service_port(neutron: Neutron, owner: str) -> None:
    _world(neutron)
    (port,) = _owned(neutron, owner)
    before = dump(neutron.nsdb)
    err = neutron.error("DELETE", f"/v2.0/ports/{port['id']}", 409)
    assert err["type"] == "ServicePortInUse"
    assert err["message"] == (
        f"Port {port['id']} cannot be deleted directly via the port API: has device owner {owner}."
    )
    assert dump(neutron.nsdb) == before


def test_deleting_a_vm_port_disassociates_its_floating_ip(neutron: Neutron) -> None:
    w = _world(neutron)
    store = TopologyStore(neutron.nsdb)
    r = w["router"]
    chains = (r["tessera:inbound_chain_id"], r["tessera:outbound_chain_id"])
    nat_before = sum(len(store.get(Chain, c).rule_ids) for c in chains)
    assert neutron.client.delete(f"/v2.0/ports/{w['vm']['id']}").status_code == 204
    fip = neutron.client.get(f"/v2.0/floatingips/{w['fip']['id']}").json()["floatingip"]
    assert (fip["port_id"], fip["fixed_ip_address"], fip["router_id"]) == (None, None, None)
    assert fip["status"] == "DOWN"
    # the dnat and snat of the floating IP are gone, nothing else
    assert sum(len(store.get(Chain, c).rule_ids) for c in chains) == nat_before - 2
    assert all(
        rule.nw_dst_address != fip["floating_ip_address"]
        for rule in store.list(Rule)
        if rule.type == "dnat"
    )
    # the floating IP can be associated again and deleted cleanly
    vm2 = neutron.port(w["lan"]["network_id"], port_security_enabled=False)
    got = neutron.client.put(
        f"/v2.0/floatingips/{fip['id']}", json={"floatingip": {"port_id": vm2["id"]}}
    )
    assert got.status_code == 200, got.text


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/routers/{router}",
        "/api/v1/bridges/{network}",
        "/api/v1/ports/{vm}",
        "/api/v1/ports/{interface}",
        "/api/v1/bridges/{network}/dhcp_subnets/{dhcp}",
        "/api/v1/chains/{chain}",
    ],
)
def test_the_v1_api_refuses_to_delete_a_neutron_twin(any_neutron: Neutron, path: str) -> None:
    neutron = any_neutron
    w = _world(neutron)
    ids = {
        "router": w["router"]["tessera:router_id"],
        "network": w["lan"]["network_id"],
        "vm": w["vm"]["tessera:port_id"],
        "dhcp": w["lan"]["tessera:dhcp_subnet"],
        "chain": w["router"]["tessera:inbound_chain_id"],
        # the router's side of its interface: a plain tessera port, no Ref names it
        "interface": TopologyStore(neutron.nsdb)
        .get(NeutronRouter, w["router"]["id"])
        .interfaces[0]
        .router_port_id,
    }
    before = dump(neutron.nsdb)
    with TestClient(create_app(neutron.nsdb)) as v1:
        r = v1.delete(path.format(**ids))
    assert r.status_code == 409, r.text
    assert "managed by the Neutron API" in r.json()["message"]
    if "dhcp_subnets" not in path:  # a DHCP subnet is named by its id, not its path key
        assert path.format(**ids).rsplit("/", 1)[1] in r.json()["message"]
    assert dump(neutron.nsdb) == before


def test_the_v1_api_still_deletes_its_own_objects_next_to_neutron_ones(neutron: Neutron) -> None:
    _world(neutron)
    with TestClient(create_app(neutron.nsdb)) as v1:
        bridge = v1.post("/api/v1/bridges", json={"name": "mine"}).json()
        assert v1.delete(f"/api/v1/bridges/{bridge['id']}").status_code == 204


def test_deleting_an_external_network_deletes_its_idle_floating_ips(neutron: Neutron) -> None:
    """Neutron's `delete_disassociated_floatingips` (tempest's
    test_delete_external_networks_with_floating_ip); a router gateway (and the
    associated floating IP behind it) keeps it in use."""
    before = dump(neutron.nsdb)
    public = neutron.network(name="public", **{"router:external": True})
    neutron.subnet(public["id"], "203.0.113.0/24")
    fip = neutron.create("floatingip", floating_network_id=public["id"])
    assert neutron.client.delete(f"/v2.0/networks/{public['id']}").status_code == 204
    assert neutron.client.get(f"/v2.0/floatingips/{fip['id']}").status_code == 404
    assert dump(neutron.nsdb) == before
    w = _world(neutron)  # a router gateway, a floating IP associated with the VM port
    public_id = w["fip"]["floating_network_id"]
    err = neutron.error("DELETE", f"/v2.0/networks/{public_id}", 409)
    assert err["type"] == "NetworkInUse"
