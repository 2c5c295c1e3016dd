"""Create bodies take the read-only fields GET shows, as PUT does: null or empty they
are ignored; a port may be created bound; a link still has its own operation."""

from __future__ import annotations

import uuid

from api_helpers import Api

from tessera.nsdb.store import TopologyStore

_PORT_READ_ONLY = {"peer_id": None, "host_id": None, "interface_name": None, "tunnel_key": 99}


def test_port_creates_ignore_null_read_only_fields_and_the_other_kinds_fields(api: Api) -> None:
    bridge, router = api.bridge(), api.router()
    port = api.post(f"/bridges/{bridge['id']}/ports", {**_PORT_READ_ONLY, "port_address": None})
    assert port["tunnel_key"] not in (0, 99) and port["host_id"] is None
    addressing = {"port_address": "10.0.0.1", "network_address": "10.0.0.0", "network_length": 24}
    body = {**_PORT_READ_ONLY, **addressing, "vlan_id": None}
    rport = api.post(f"/routers/{router['id']}/ports", body)
    assert rport["port_address"] == "10.0.0.1" and rport["vlan_id"] is None
    # A port exactly as GET showed it (its id aside) is a valid create body.
    copy = {k: v for k, v in api.get(f"/ports/{port['id']}").items() if k != "id"}
    assert api.post(f"/bridges/{bridge['id']}/ports", copy)["device_id"] == bridge["id"]
    message = api.post(f"/bridges/{bridge['id']}/ports", {"port_address": "10.0.0.1"}, 400)
    assert "apply to router ports only" in message


def test_a_port_created_with_a_peer_is_refused_with_the_way_to_link(api: Api) -> None:
    bridge = api.bridge()
    peer = api.bridge_port(api.bridge())
    message = api.post(f"/bridges/{bridge['id']}/ports", {"peer_id": peer["id"]}, status=400)
    assert "POST /ports/{id}/link" in message
    assert api.get(f"/bridges/{bridge['id']}/ports") == []


def test_a_port_created_with_a_binding_is_bound(api: Api) -> None:
    host_id = str(uuid.uuid4())
    TopologyStore(api.nsdb).register_host(host_id, "h1", ["198.18.0.1"])
    bridge = api.bridge()
    body = {"host_id": host_id, "interface_name": "tap1"}
    port = api.post(f"/bridges/{bridge['id']}/ports", body)
    assert (port["host_id"], port["interface_name"]) == (host_id, "tap1")
    assert api.get(f"/ports/{port['id']}") == port
    assert api.get(f"/hosts/{host_id}/ports") == [
        {"host_id": host_id, "port_id": port["id"], "interface_name": "tap1"}
    ]
    # The interface is taken now: the whole create is refused, no port is left behind.
    assert "already bound" in api.post(f"/bridges/{bridge['id']}/ports", body, status=409)
    missing = str(uuid.uuid4())
    message = api.post(f"/bridges/{bridge['id']}/ports", {**body, "host_id": missing}, 400)
    assert message == f"host_id: no host {missing} exists"
    message = api.post(f"/bridges/{bridge['id']}/ports", {"host_id": host_id}, status=400)
    assert "host_id and interface_name are set together" in message
    assert [p["id"] for p in api.get(f"/bridges/{bridge['id']}/ports")] == [port["id"]]


def test_member_lists_may_be_sent_empty_or_null_but_not_filled(api: Api) -> None:
    bridge = api.bridge()
    for path, field in (
        ("/chains", "rule_ids"),
        ("/port_groups", "port_ids"),
        ("/ip_addr_groups", "addrs"),
        ("/tunnel_zones", "hosts"),
    ):
        assert api.post(path, {field: []})[field] == []
        assert api.post(path, {field: None})[field] == []
    assert api.post(f"/bridges/{bridge['id']}/dhcp_subnets", {
        "subnet_prefix": "10.0.0.0", "subnet_length": 24, "hosts": [],
    })["hosts"] == []  # fmt: skip
    port = api.bridge_port(bridge)
    message = api.post("/port_groups", {"port_ids": [port["id"]]}, status=400)
    assert message.startswith("port_ids: members are added through their own operation")
    assert "addrs: members" in api.post("/ip_addr_groups", {"addrs": ["10.0.0.1"]}, status=400)
