"""POST /traces through a router with a load balancer: the stored VIP, pool and members
are in the traced snapshot, and the trace shows the VIP decision."""

from __future__ import annotations

from api_helpers import Api
from test_api_traces import VM1, _routed


def _walk(node: dict) -> list[dict]:
    out = [node]
    for child in node.get("children", []):
        out += _walk(child)
    return out


def test_a_packet_to_a_vip_is_traced_to_a_member(api: Api) -> None:
    vm_port, _, rp_a = _routed(api)
    router = rp_a["device_id"]
    lb = api.post("/load_balancers", {"router_id": router}, status=201)
    pool = api.post("/pools", {"load_balancer_id": lb["id"]}, status=201)
    members = {
        address: api.post(
            "/pool_members",
            {"pool_id": pool["id"], "address": address, "protocol_port": 8080},
            status=201,
        )
        for address in ("10.0.2.11", "10.0.2.12")
    }
    api.put(f"/pool_members/{members['10.0.2.11']['id']}",
            {**members["10.0.2.11"], "admin_state_up": False})  # fmt: skip
    vip = api.post(
        "/vips",
        {"load_balancer_id": lb["id"], "pool_id": pool["id"], "address": "10.0.3.100",
         "protocol_port": 80},
        status=201,
    )  # fmt: skip
    trace = api.post(
        "/traces",
        {"port_id": vm_port["id"], "src_mac": VM1, "dst_mac": rp_a["port_mac"],
         "src_ip": "10.0.1.5", "dst_ip": "10.0.3.100", "protocol": "tcp", "dst_port": 80},
        status=200,
    )  # fmt: skip
    steps = _walk(trace["trace"])
    texts = [s["text"] for s in steps]
    assert any(s["kind"] == "vip" and s["id"] == vip["id"] for s in steps), texts
    assert any("10.0.2.11:8080 weight 1 (disabled)" in t for t in texts), texts
    assert any("chose member 10.0.2.12:8080 (the only candidate)" in t for t in texts), texts
    # The router does not know the member's MAC yet: the packet waits for ARP, to it.
    assert [w["ip_addr"] for w in trace["waits"]] == ["10.0.2.12"]
