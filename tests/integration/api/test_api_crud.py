"""Every resource of contract §3 (but load balancers, mirrors, traces): create, list,
show, update, delete, with the contract's paths and field names."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from api_helpers import Api

from tessera.model import new_id
from tessera.nsdb import tables
from tessera.nsdb.store import TopologyStore

# (collection path, create body, a changed field for the update, its new value)
TOP_LEVEL = [
    ("/bridges", {"name": "b", "tenant_id": "t1"}, "admin_state_up", False),
    ("/routers", {"name": "r", "tenant_id": "t1"}, "name", "r2"),
    ("/chains", {"name": "c", "tenant_id": "t1"}, "name", "c2"),
    ("/port_groups", {"name": "g", "tenant_id": "t1", "stateful": True}, "stateful", False),
    ("/ip_addr_groups", {"name": "a"}, "name", "a2"),
    ("/tunnel_zones", {"name": "z", "type": "vxlan"}, "name", "z2"),
]


@pytest.mark.parametrize(("path", "body", "field", "value"), TOP_LEVEL)
def test_top_level_crud(api: Api, path: str, body: dict[str, Any], field: str, value: Any) -> None:
    created = api.post(path, body)
    assert uuid.UUID(created["id"]) and {k: created[k] for k in body} == body
    item = f"{path}/{created['id']}"
    assert api.get(item) == created
    assert api.get(path) == [created]
    # PUT the object as GET returned it, with one change (and a bogus read-only id).
    updated = api.put(item, {**created, field: value, "id": new_id()})
    assert updated == {**created, field: value}
    assert api.get(item) == updated
    assert api.put(item, updated) == updated  # sending GET's output back changes nothing
    api.delete(item)
    assert api.get(path) == []
    api.get(item, status=404)
    api.delete(item, status=404)
    api.put(item, updated, status=404)


def test_client_chosen_ids(api: Api) -> None:
    chosen = str(uuid.uuid4())
    assert api.bridge(id=chosen)["id"] == chosen
    message = api.post("/bridges", {"id": chosen}, status=409)
    assert chosen in message


def test_ports_of_bridges_and_routers(api: Api) -> None:
    bridge, router = api.bridge(), api.router()
    bp = api.bridge_port(bridge, vlan_id=5)
    assert bp["type"] == "Bridge" and bp["device_id"] == bridge["id"] and bp["vlan_id"] == 5
    assert bp["tunnel_key"] > 0 and bp["peer_id"] is None and bp["host_id"] is None
    rp = api.router_port(router, "10.0.0.1")
    assert rp["type"] == "Router" and rp["network_length"] == 24
    assert rp["port_mac"].startswith("02:") and rp["tunnel_key"] != bp["tunnel_key"]
    assert api.get(f"/bridges/{bridge['id']}/ports") == [bp]
    assert api.get(f"/routers/{router['id']}/ports") == [rp]
    assert sorted(p["id"] for p in api.get("/ports")) == sorted([bp["id"], rp["id"]])
    assert api.get(f"/ports/{rp['id']}") == rp
    chain = api.post("/chains", {"name": "in"})
    updated = api.put(
        f"/ports/{rp['id']}",
        {**rp, "inbound_filter_id": chain["id"], "admin_state_up": False, "tunnel_key": 1},
    )
    assert updated == {**rp, "inbound_filter_id": chain["id"], "admin_state_up": False}
    api.delete(f"/ports/{rp['id']}")
    assert api.get(f"/routers/{router['id']}/ports") == []


def test_links(api: Api) -> None:
    bridge, router = api.bridge(), api.router()
    bp, rp = api.bridge_port(bridge), api.router_port(router, "10.0.0.1")
    linked = api.post(f"/ports/{bp['id']}/link", {"peer_id": rp["id"]}, status=201)
    assert linked == {**bp, "peer_id": rp["id"]}
    assert api.get(f"/ports/{rp['id']}")["peer_id"] == bp["id"]
    api.delete(f"/ports/{rp['id']}/link")
    assert api.get(f"/ports/{bp['id']}")["peer_id"] is None
    assert api.get(f"/ports/{rp['id']}")["peer_id"] is None
    api.delete(f"/ports/{rp['id']}/link")  # unlinking an unlinked port is a no-op
    api.delete(f"/ports/{new_id()}/link", status=404)


def test_routes(api: Api) -> None:
    router = api.router()
    port = api.router_port(router, "10.0.0.1")
    body = {
        "src_network_addr": "0.0.0.0",
        "src_network_length": 0,
        "dst_network_addr": "0.0.0.0",
        "dst_network_length": 0,
        "type": "Normal",
        "next_hop_port": port["id"],
        "next_hop_gateway": "10.0.0.254",
        "weight": 10,
    }
    route = api.post(f"/routers/{router['id']}/routes", body)
    assert {k: route[k] for k in body} == body and route["router_id"] == router["id"]
    assert api.get(f"/routers/{router['id']}/routes") == [route]
    assert api.get(f"/routes/{route['id']}") == route
    changed = api.put(f"/routes/{route['id']}", {**route, "weight": 20, "router_id": new_id()})
    assert changed == {**route, "weight": 20}
    api.delete(f"/routes/{route['id']}")
    assert api.get(f"/routers/{router['id']}/routes") == []


def test_rules_in_position_order(api: Api) -> None:
    chain = api.post("/chains", {"name": "c"})
    rules = f"/chains/{chain['id']}/rules"
    drop = api.post(rules, {"type": "drop", "nw_proto": 6, "tp_dst": {"start": 22, "end": 22}})
    assert drop["position"] == 1 and drop["fragment_policy"] == "header"
    accept = api.post(rules, {"type": "accept", "position": 1, "dl_type": 0x0800})
    snat = api.post(
        rules,
        {
            "type": "snat",
            "nat_targets": [
                {
                    "address_from": "1.1.1.1",
                    "address_to": "1.1.1.1",
                    "port_from": 1024,
                    "port_to": 65535,
                }
            ],
        },
    )
    assert snat["flow_action"] == "accept" and snat["position"] == 3
    assert [(r["id"], r["position"]) for r in api.get(rules)] == [
        (accept["id"], 1),
        (drop["id"], 2),
        (snat["id"], 3),
    ]
    assert api.get(f"/chains/{chain['id']}")["rule_ids"] == [accept["id"], drop["id"], snat["id"]]
    assert api.get(f"/rules/{drop['id']}")["position"] == 2
    moved = api.put(f"/rules/{snat['id']}", {**snat, "position": 1})
    assert moved["position"] == 1
    assert [r["id"] for r in api.get(rules)] == [snat["id"], accept["id"], drop["id"]]
    api.delete(f"/rules/{accept['id']}")
    assert [r["position"] for r in api.get(rules)] == [1, 2]
    jump_target = api.post("/chains", {"name": "t"})
    jump = api.post(rules, {"type": "jump", "jump_chain_id": jump_target["id"]})
    assert jump["position"] == 3


def test_dhcp_subnets_and_hosts(api: Api) -> None:
    bridge = api.bridge()
    subnets = f"/bridges/{bridge['id']}/dhcp_subnets"
    body = {
        "subnet_prefix": "10.0.0.0",
        "subnet_length": 24,
        "default_gateway": "10.0.0.1",
        "server_addr": "10.0.0.2",
        "dns_server_addrs": ["10.0.0.53"],
        "interface_mtu": 1450,
        "opt121_routes": [
            {
                "destination_prefix": "169.254.169.254",
                "destination_length": 32,
                "gateway_addr": "10.0.0.1",
            }
        ],
        "enabled": True,
    }
    subnet = api.post(subnets, body)
    assert {k: subnet[k] for k in body} == body and subnet["hosts"] == []
    assert api.get(subnets) == [subnet]
    item = f"{subnets}/10.0.0.0_24"
    assert api.get(item) == subnet
    updated = api.put(item, {**subnet, "interface_mtu": 1400})
    assert updated["interface_mtu"] == 1400
    hosts = f"{item}/hosts"
    host = api.post(hosts, {"mac_addr": "02:00:00:00:00:0A", "ip_addr": "10.0.0.10", "name": "vm1"})
    assert host == {"mac_addr": "02:00:00:00:00:0a", "ip_addr": "10.0.0.10", "name": "vm1"}
    assert api.get(hosts) == [host]
    assert api.get(f"{hosts}/02:00:00:00:00:0a") == host
    changed = api.put(f"{hosts}/02:00:00:00:00:0a", {**host, "ip_addr": "10.0.0.11"})
    assert changed == {**host, "ip_addr": "10.0.0.11"}
    assert api.get(item)["hosts"] == [changed]
    api.delete(f"{hosts}/02:00:00:00:00:0a")
    assert api.get(hosts) == []
    api.delete(item)
    assert api.get(subnets) == []
    api.get(item, status=404)


def test_port_group_members(api: Api) -> None:
    group = api.post("/port_groups", {"name": "g"})
    port = api.bridge_port(api.bridge())
    members = f"/port_groups/{group['id']}/ports"
    member = api.post(members, {"port_id": port["id"]})
    assert member == {"port_group_id": group["id"], "port_id": port["id"]}
    assert api.get(members) == [member]
    assert api.get(f"/port_groups/{group['id']}")["port_ids"] == [port["id"]]
    api.delete(f"{members}/{port['id']}")
    assert api.get(members) == []
    api.delete(f"{members}/{port['id']}", status=404)


def test_ip_addr_group_addresses(api: Api) -> None:
    group = api.post("/ip_addr_groups", {"name": "g"})
    addrs = f"/ip_addr_groups/{group['id']}/ip_addrs"
    added = api.post(addrs, {"addr": "10.0.0.1"})
    assert added == {"ip_addr_group_id": group["id"], "addr": "10.0.0.1"}
    api.post(addrs, {"addr": "10.0.0.2"})
    assert [a["addr"] for a in api.get(addrs)] == ["10.0.0.1", "10.0.0.2"]
    api.delete(f"{addrs}/10.0.0.1")
    assert [a["addr"] for a in api.get(addrs)] == ["10.0.0.2"]
    api.delete(f"{addrs}/10.0.0.1", status=404)


def _register(api: Api, name: str) -> str:
    host_id = new_id()
    TopologyStore(api.nsdb).register_host(host_id, name, ["198.18.0.1"])
    return host_id


def test_hosts_are_read_only_and_carry_liveness(api: Api) -> None:
    host_id = _register(api, "h1")
    host = api.get(f"/hosts/{host_id}")
    assert host == {"id": host_id, "name": "h1", "alive": True, "addresses": ["198.18.0.1"]}
    assert api.get("/hosts") == [host]
    api.post("/hosts", {"name": "x"}, status=405)
    api.put(f"/hosts/{host_id}", host, status=405)
    api.delete(f"/hosts/{host_id}", status=409)  # alive: its agent would re-register it
    TopologyStore(api.nsdb).unregister_host(host_id)
    assert api.get(f"/hosts/{host_id}")["alive"] is False
    api.delete(f"/hosts/{host_id}")
    api.get(f"/hosts/{host_id}", status=404)


def test_bindings(api: Api) -> None:
    host_id = _register(api, "h1")
    bridge = api.bridge()
    p1, p2 = api.bridge_port(bridge), api.bridge_port(bridge)
    bindings = f"/hosts/{host_id}/ports"
    b1 = api.post(bindings, {"port_id": p1["id"], "interface_name": "tap1"})
    assert b1 == {"host_id": host_id, "port_id": p1["id"], "interface_name": "tap1"}
    api.post(bindings, {"port_id": p2["id"], "interface_name": "tap2"})
    assert [b["interface_name"] for b in api.get(bindings)] == ["tap1", "tap2"]
    port = api.get(f"/ports/{p1['id']}")
    assert port["host_id"] == host_id and port["interface_name"] == "tap1"
    api.delete(f"{bindings}/{p1['id']}")
    assert [b["port_id"] for b in api.get(bindings)] == [p2["id"]]
    assert api.get(f"/ports/{p1['id']}")["host_id"] is None
    api.delete(f"{bindings}/{p1['id']}", status=404)
    api.get(f"/hosts/{new_id()}/ports", status=404)


def test_tunnel_zone_hosts(api: Api) -> None:
    zone = api.post("/tunnel_zones", {"name": "z"})
    h1, h2 = _register(api, "h1"), _register(api, "h2")
    members = f"/tunnel_zones/{zone['id']}/hosts"
    m1 = api.post(members, {"host_id": h1, "ip_address": "198.18.0.1"})
    assert m1 == {"tunnel_zone_id": zone["id"], "host_id": h1, "ip_address": "198.18.0.1"}
    api.post(members, {"host_id": h2, "ip_address": "198.18.0.2"})
    assert [m["host_id"] for m in api.get(members)] == [h1, h2]
    assert [h["host_id"] for h in api.get(f"/tunnel_zones/{zone['id']}")["hosts"]] == [h1, h2]
    api.delete(f"{members}/{h1}")
    assert [m["host_id"] for m in api.get(members)] == [h2]


def test_mac_and_arp_tables(api: Api) -> None:
    bridge, router = api.bridge(), api.router()
    port = api.bridge_port(bridge)
    store = TopologyStore(api.nsdb)
    store.learn_mac(
        bridge["id"], tables.MacEntry(vlan_id=0, mac_addr="02:00:00:00:00:01", port_id=port["id"])
    )
    expiry = time.time() + 60
    store.put_arp(
        router["id"],
        tables.ArpEntry(ip_addr="10.0.0.5", mac_addr="02:00:00:00:00:05", expiry=expiry),
    )
    assert api.get(f"/bridges/{bridge['id']}/mac_table") == [
        {"vlan_id": 0, "mac_addr": "02:00:00:00:00:01", "port_id": port["id"]}
    ]
    arp = api.get(f"/routers/{router['id']}/arp_table")
    assert arp == [
        {"ip_addr": "10.0.0.5", "mac_addr": "02:00:00:00:00:05", "expiry": pytest.approx(expiry)}
    ]
    api.get(f"/bridges/{new_id()}/mac_table", status=404)
    api.get(f"/routers/{bridge['id']}/arp_table", status=404)


def test_health(api: Api) -> None:
    health = api.get("/health")
    assert health["status"] == "ok" and health["nsdb_connected"] is True


def test_openapi_and_docs(api: Api) -> None:
    schema = api.get("/openapi.json")
    ops = [op["operationId"] for item in schema["paths"].values() for op in item.values()]
    assert len(ops) == len(set(ops)) and "create_bridge" in ops and "link_port" in ops
    assert all(p.startswith("/api/v1/") for p in schema["paths"])
    docs = api.http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
