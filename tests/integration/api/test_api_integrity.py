"""Deletes through the API keep the topology consistent, on both NSDB backends."""

from __future__ import annotations

from api_helpers import Api

from tessera.model import new_id
from tessera.nsdb.store import TopologyStore


def test_deleting_a_bridge_cleans_up_everything_that_named_it(any_api: Api) -> None:
    api = any_api
    bridge, router = api.bridge(), api.router()
    bp, spare = api.bridge_port(bridge), api.bridge_port(bridge)
    rp = api.router_port(router, "10.0.0.1")
    api.post(f"/ports/{bp['id']}/link", {"peer_id": rp["id"]}, status=201)
    route = api.post(
        f"/routers/{router['id']}/routes",
        {"dst_network_addr": "10.0.0.0", "dst_network_length": 24, "next_hop_port": rp["id"]},
    )
    group = api.post("/port_groups", {"name": "g"})
    api.post(f"/port_groups/{group['id']}/ports", {"port_id": spare["id"]})
    chain = api.post("/chains", {"name": "c"})
    rules = f"/chains/{chain['id']}/rules"
    api.post(rules, {"type": "drop", "in_ports": [bp["id"]]})
    widened = api.post(rules, {"type": "accept", "out_ports": [spare["id"], rp["id"]]})
    host_id = new_id()
    TopologyStore(api.nsdb).register_host(host_id, "h", [])
    api.post(f"/hosts/{host_id}/ports", {"port_id": spare["id"], "interface_name": "tap0"})
    api.post(
        f"/bridges/{bridge['id']}/dhcp_subnets", {"subnet_prefix": "10.0.0.0", "subnet_length": 24}
    )

    api.delete(f"/bridges/{bridge['id']}")

    assert [p["id"] for p in api.get("/ports")] == [rp["id"]]
    assert api.get(f"/ports/{rp['id']}")["peer_id"] is None
    assert api.get(f"/routes/{route['id']}") == route
    assert api.get(f"/port_groups/{group['id']}/ports") == []
    assert api.get(f"/hosts/{host_id}/ports") == []
    remaining = api.get(rules)
    assert [r["id"] for r in remaining] == [widened["id"]]
    assert remaining[0]["out_ports"] == [rp["id"]] and remaining[0]["position"] == 1
    api.get(f"/bridges/{bridge['id']}/dhcp_subnets", status=404)


def test_deleting_a_chain_clears_filters_and_jumps(any_api: Api) -> None:
    api = any_api
    target = api.post("/chains", {"name": "target"})
    caller = api.post("/chains", {"name": "caller"})
    api.post(f"/chains/{caller['id']}/rules", {"type": "jump", "jump_chain_id": target["id"]})
    kept = api.post(f"/chains/{caller['id']}/rules", {"type": "accept"})
    router = api.router(inbound_filter_id=target["id"], outbound_filter_id=caller["id"])
    port = api.router_port(router, "10.0.0.1")
    api.put(f"/ports/{port['id']}", {**port, "outbound_filter_id": target["id"]})
    api.delete(f"/chains/{target['id']}")
    got = api.get(f"/routers/{router['id']}")
    assert got["inbound_filter_id"] is None and got["outbound_filter_id"] == caller["id"]
    assert api.get(f"/ports/{port['id']}")["outbound_filter_id"] is None
    assert [(r["id"], r["position"]) for r in api.get(f"/chains/{caller['id']}/rules")] == [
        (kept["id"], 1)
    ]


def test_deleting_a_router_port_deletes_routes_via_it(any_api: Api) -> None:
    api = any_api
    router = api.router()
    p1, p2 = api.router_port(router, "10.0.0.1"), api.router_port(router, "10.0.1.1")
    routes = f"/routers/{router['id']}/routes"
    api.post(
        routes, {"dst_network_addr": "0.0.0.0", "dst_network_length": 0, "next_hop_port": p1["id"]}
    )
    kept = api.post(
        routes,
        {"dst_network_addr": "10.9.0.0", "dst_network_length": 16, "next_hop_port": p2["id"]},
    )
    api.delete(f"/ports/{p1['id']}")
    assert api.get(routes) == [kept]
