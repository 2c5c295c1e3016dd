"""Neutron routers ⇄ tessera routers (same id): interfaces, the external gateway with
SNAT, static routes; each write one transaction, each removal exact, Neutron's errors;
and packets through the translation (the v1 trace API over the same NSDB)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from neutron_helpers import Neutron, dump

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from tessera.api.app import create_app
from tessera.model import Chain, Port, Route, Router, Rule
from tessera.model.neutron import NeutronRouter
from tessera.nsdb.store import TopologyStore

VM_MAC = "fa:16:3e:00:00:10"


def topology(neutron: Neutron) -> dict[str, Any]:
    """The NSDB dump but the Neutron routers, whose revision and time move on every
    change (as Neutron's do); their own state is checked separately."""
    return {k: v for k, v in dump(neutron.nsdb).items() if k != NeutronRouter.kind}


def router(neutron: Neutron, **attrs: Any) -> dict[str, Any]:
    return neutron.create("router", **{"name": "r", **attrs})


def put(neutron: Neutron, path: str, body: Any, status: int = 200) -> dict[str, Any]:
    r = neutron.client.put(path, json=body)
    assert r.status_code == status, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture
def lan(neutron: Neutron) -> dict[str, Any]:
    net = neutron.network(name="lan")
    return neutron.subnet(net["id"], "10.0.0.0/24")


@pytest.fixture
def ext(neutron: Neutron) -> dict[str, Any]:
    net = neutron.network(name="public", **{"router:external": True})
    return neutron.subnet(net["id"], "203.0.113.0/24", gateway_ip="203.0.113.1")


def test_a_router_is_a_tessera_router_with_its_own_chains(neutron: Neutron) -> None:
    r = router(neutron, project_id="p1", admin_state_up=False)
    assert r["external_gateway_info"] is None and r["routes"] == []
    store = TopologyStore(neutron.nsdb)
    twin = store.get(Router, r["id"])
    assert (twin.name, twin.tenant_id, twin.admin_state_up) == ("r", "p1", False)
    assert twin.inbound_filter_id == r["tessera:inbound_chain_id"]
    assert twin.outbound_filter_id == r["tessera:outbound_chain_id"]
    assert store.get(Chain, twin.inbound_filter_id).rule_ids == []
    assert store.get(NeutronRouter, r["id"]).router_id == r["id"]


def test_update_and_unknown_attributes(neutron: Neutron) -> None:
    r = router(neutron)
    got = put(neutron, f"/v2.0/routers/{r['id']}", {"router": {"name": "n"}})["router"]
    assert (got["name"], got["revision_number"]) == ("n", 1)
    assert TopologyStore(neutron.nsdb).get(Router, r["id"]).name == "n"
    for attrs in ({"bogus": 1}, {"id": r["id"]}, {"admin_state_up": "x"}):
        neutron.error("PUT", f"/v2.0/routers/{r['id']}", 400, json={"router": attrs})
    neutron.error("GET", f"/v2.0/routers/{'0' * 8}-0000-0000-0000-{'0' * 12}", 404)


def test_interface_by_subnet_and_its_exact_removal(neutron: Neutron, lan: dict) -> None:
    r = router(neutron)
    before = topology(neutron)
    body = put(neutron, f"/v2.0/routers/{r['id']}/add_router_interface", {"subnet_id": lan["id"]})
    assert body["id"] == r["id"] and body["subnet_id"] == lan["id"]
    assert body["network_id"] == lan["network_id"]
    port = neutron.client.get(f"/v2.0/ports/{body['port_id']}").json()["port"]
    assert port["device_owner"] == "network:router_interface" and port["device_id"] == r["id"]
    assert port["status"] == "ACTIVE"  # linked to the router port
    assert port["fixed_ips"] == [{"subnet_id": lan["id"], "ip_address": "10.0.0.1"}]
    listed = neutron.client.get("/v2.0/ports", params={"device_id": r["id"]}).json()["ports"]
    assert [p["id"] for p in listed] == [port["id"]]
    store = TopologyStore(neutron.nsdb)
    rports = [p for p in store.list(Port) if p.device_id == r["id"]]
    assert len(rports) == 1
    rp = rports[0]
    assert (rp.port_address, rp.network_address, rp.network_length) == ("10.0.0.1", "10.0.0.0", 24)
    assert rp.peer_id == port["id"] and rp.port_mac == port["mac_address"]
    routes = [x for x in store.list(Route) if x.router_id == r["id"]]
    assert [(x.dst_network_addr, x.next_hop_port) for x in routes] == [("10.0.0.0", rp.id)]
    # the same subnet again: 400; delete while attached: 409 RouterInUse
    err = neutron.error(
        "PUT", f"/v2.0/routers/{r['id']}/add_router_interface", 400, json={"subnet_id": lan["id"]}
    )
    assert err["type"] == "BadRequest"
    assert neutron.error("DELETE", f"/v2.0/routers/{r['id']}", 409)["type"] == "RouterInUse"
    put(neutron, f"/v2.0/routers/{r['id']}/remove_router_interface", {"subnet_id": lan["id"]})
    assert topology(neutron) == before
    assert TopologyStore(neutron.nsdb).get(NeutronRouter, r["id"]).interfaces == []
    neutron.error(
        "PUT", f"/v2.0/routers/{r['id']}/remove_router_interface", 404,
        json={"subnet_id": lan["id"]},
    )  # fmt: skip


def test_interface_by_port_uses_its_address(neutron: Neutron, lan: dict) -> None:
    r = router(neutron)
    port = neutron.port(lan["network_id"], fixed_ips=[{"ip_address": "10.0.0.254"}])
    body = put(neutron, f"/v2.0/routers/{r['id']}/add_router_interface", {"port_id": port["id"]})
    assert body["port_id"] == port["id"] and body["subnet_ids"] == [lan["id"]]
    rp = next(p for p in TopologyStore(neutron.nsdb).list(Port) if p.device_id == r["id"])
    assert rp.port_address == "10.0.0.254" and rp.peer_id == port["id"]
    # a port already attached: 409 PortInUse
    r2 = router(neutron)
    err = neutron.error(
        "PUT", f"/v2.0/routers/{r2['id']}/add_router_interface", 409, json={"port_id": port["id"]}
    )
    assert err["type"] == "PortInUse"
    put(neutron, f"/v2.0/routers/{r['id']}/remove_router_interface", {"port_id": port["id"]})
    neutron.error("GET", f"/v2.0/ports/{port['id']}", 404)  # Neutron deletes it too


def test_interface_errors(neutron: Neutron, lan: dict) -> None:
    r = router(neutron)
    path = f"/v2.0/routers/{r['id']}/add_router_interface"
    neutron.error("PUT", path, 400, json={})
    neutron.error("PUT", path, 400, json={"subnet_id": lan["id"], "port_id": lan["id"]})
    neutron.error("PUT", path, 404, json={"subnet_id": r["id"]})
    other = neutron.network(name="other")
    overlapping = neutron.subnet(other["id"], "10.0.0.0/25")
    put(neutron, path, {"subnet_id": lan["id"]})
    neutron.error("PUT", path, 400, json={"subnet_id": overlapping["id"]})


def test_gateway_with_snat_and_its_removal(neutron: Neutron, ext: dict) -> None:
    r = router(neutron)
    before = topology(neutron)
    gw = {"network_id": ext["network_id"]}
    got = put(neutron, f"/v2.0/routers/{r['id']}", {"router": {"external_gateway_info": gw}})
    info = got["router"]["external_gateway_info"]
    assert info["enable_snat"] is True and info["network_id"] == ext["network_id"]
    [fixed] = info["external_fixed_ips"]
    address = fixed["ip_address"]
    assert fixed["subnet_id"] == ext["id"] and address.startswith("203.0.113.")
    store = TopologyStore(neutron.nsdb)
    rp = next(p for p in store.list(Port) if p.device_id == r["id"])
    assert rp.port_address == address
    routes = {(x.dst_network_addr, x.dst_network_length, x.next_hop_gateway)
              for x in store.list(Route) if x.router_id == r["id"]}  # fmt: skip
    assert routes == {("203.0.113.0", 24, None), ("0.0.0.0", 0, "203.0.113.1")}
    out = store.get(Chain, got["router"]["tessera:outbound_chain_id"])
    [snat] = [store.get(Rule, i) for i in out.rule_ids]
    assert snat.type == "snat" and snat.out_ports == [rp.id]
    assert snat.nat_targets[0].address_from == address
    inbound = store.get(Chain, got["router"]["tessera:inbound_chain_id"])
    assert [store.get(Rule, i).type for i in inbound.rule_ids] == ["rev_snat"]
    # enable_snat false drops the rules, keeps the port
    gw_off = {**gw, "enable_snat": False}
    got = put(neutron, f"/v2.0/routers/{r['id']}", {"router": {"external_gateway_info": gw_off}})
    assert got["router"]["external_gateway_info"]["external_fixed_ips"] == [fixed]
    assert TopologyStore(neutron.nsdb).get(Chain, out.id).rule_ids == []
    # `router unset --external-gateway` sends {}
    put(neutron, f"/v2.0/routers/{r['id']}", {"router": {"external_gateway_info": None}})
    assert topology(neutron) == before
    assert TopologyStore(neutron.nsdb).get(NeutronRouter, r["id"]).gateway is None


def test_gateway_errors(neutron: Neutron, lan: dict, ext: dict) -> None:
    r = router(neutron)
    path = f"/v2.0/routers/{r['id']}"
    internal = {"network_id": lan["network_id"]}
    neutron.error("PUT", path, 400, json={"router": {"external_gateway_info": internal}})
    missing = {"network_id": r["id"]}
    neutron.error("PUT", path, 404, json={"router": {"external_gateway_info": missing}})
    neutron.error("PUT", path, 400, json={"router": {"external_gateway_info": {"x": 1}}})


def test_create_with_gateway_and_delete_restores_everything(neutron: Neutron, ext: dict) -> None:
    before = dump(neutron.nsdb)
    gw = {"network_id": ext["network_id"], "external_fixed_ips": [{"ip_address": "203.0.113.9"}]}
    r = router(neutron, external_gateway_info=gw)
    assert r["external_gateway_info"]["external_fixed_ips"][0]["ip_address"] == "203.0.113.9"
    assert neutron.client.delete(f"/v2.0/routers/{r['id']}").status_code == 204
    assert dump(neutron.nsdb) == before


def test_static_routes(neutron: Neutron, lan: dict) -> None:
    r = router(neutron)
    path = f"/v2.0/routers/{r['id']}"
    route = {"destination": "192.168.0.0/16", "nexthop": "10.0.0.7"}
    err = neutron.error("PUT", path, 400, json={"router": {"routes": [route]}})
    assert err["type"] == "InvalidRoutes"
    put(neutron, f"{path}/add_router_interface", {"subnet_id": lan["id"]})
    got = put(neutron, path, {"router": {"routes": [route]}})["router"]
    assert got["routes"] == [route]
    store = TopologyStore(neutron.nsdb)
    assert ("192.168.0.0", "10.0.0.7") in {
        (x.dst_network_addr, x.next_hop_gateway) for x in store.list(Route)
    }
    err = neutron.error(
        "PUT", f"{path}/remove_router_interface", 409, json={"subnet_id": lan["id"]}
    )
    assert err["type"] == "RouterInterfaceInUseByRoute"
    put(neutron, path, {"router": {"routes": []}})
    assert not [x for x in TopologyStore(neutron.nsdb).list(Route) if x.dst_network_length == 16]


def test_extensions_advertise_routers(neutron: Neutron) -> None:
    aliases = {e["alias"] for e in neutron.client.get("/v2.0/extensions").json()["extensions"]}
    assert {"router", "ext-gw-mode", "extraroute"} <= aliases


def test_a_vm_packet_to_the_outside_is_snatted(neutron: Neutron, lan: dict, ext: dict) -> None:
    """The translation carries packets: from a VM port through the router, out of the
    gateway with the gateway's address as source (the v1 trace API, same NSDB)."""
    r = router(neutron, external_gateway_info={"network_id": ext["network_id"]})
    put(neutron, f"/v2.0/routers/{r['id']}/add_router_interface", {"subnet_id": lan["id"]})
    # no security groups in the way (the default group admits only its members)
    vm = neutron.port(lan["network_id"], mac_address=VM_MAC, port_security_enabled=False)
    upstream = neutron.port(ext["network_id"], port_security_enabled=False)  # the outside
    gw_ip = r["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
    query = {"device_id": r["id"], "device_owner": "network:router_interface"}
    iface = neutron.client.get("/v2.0/ports", params=query).json()["ports"][0]
    with TestClient(create_app(neutron.nsdb)) as v1:
        r1 = v1.post(
            "/api/v1/traces",
            json={
                "port_id": vm["id"], "src_mac": VM_MAC, "dst_mac": iface["mac_address"],
                "src_ip": vm["fixed_ips"][0]["ip_address"], "dst_ip": "198.51.100.7",
                "protocol": "udp", "src_port": 5000, "dst_port": 53,
            },
        )  # fmt: skip
    assert r1.status_code == 200, r1.text
    trace = r1.json()
    assert [o["port_id"] for o in trace["outputs"]] == [upstream["id"]], trace["drop_reason"]
    [out] = trace["outputs"]
    assert out["set_nw_src"] == gw_ip and out["set_tp_src"] >= 1024


def test_router_round_trip_on_every_backend(any_neutron: Neutron) -> None:
    """The same writes over ZooKeeper's real multi-object transactions."""
    neutron = any_neutron
    before = dump(neutron.nsdb)
    lan = neutron.subnet(neutron.network(name="lan")["id"], "10.0.0.0/24")
    public = neutron.network(name="public", **{"router:external": True})
    neutron.subnet(public["id"], "203.0.113.0/24")
    r = router(neutron, external_gateway_info={"network_id": public["id"]})
    path = f"/v2.0/routers/{r['id']}"
    put(neutron, f"{path}/add_router_interface", {"subnet_id": lan["id"]})
    put(neutron, f"{path}/remove_router_interface", {"subnet_id": lan["id"]})
    assert neutron.client.delete(path).status_code == 204
    neutron.client.delete(f"/v2.0/networks/{lan['network_id']}")
    neutron.client.delete(f"/v2.0/networks/{public['id']}")
    assert dump(neutron.nsdb) == before


def test_a_gateway_a_route_needs_stays(neutron: Neutron, ext: dict) -> None:
    r = router(neutron, external_gateway_info={"network_id": ext["network_id"]})
    path = f"/v2.0/routers/{r['id']}"
    route = {"destination": "198.51.100.0/24", "nexthop": "203.0.113.254"}
    put(neutron, path, {"router": {"routes": [route]}})
    err = neutron.error("PUT", path, 409, json={"router": {"external_gateway_info": None}})
    assert err["type"] == "RouterExternalGatewayInUseByRoute"
    # both at once: the routes go first, then the gateway
    got = put(neutron, path, {"router": {"routes": [], "external_gateway_info": None}})
    assert got["router"]["external_gateway_info"] is None and got["router"]["routes"] == []


def test_too_many_routes_is_400(neutron: Neutron, lan: dict) -> None:
    r = router(neutron)
    many = [{"destination": f"192.168.{i}.0/24", "nexthop": "10.0.0.7"} for i in range(31)]
    err = neutron.error("PUT", f"/v2.0/routers/{r['id']}", 400, json={"router": {"routes": many}})
    assert "at most 30" in err["message"]
