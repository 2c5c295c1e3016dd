"""Bulk creation (`{"networks": [...]}`, what tempest's BulkNetworkOpsTest sends): all
items in one NSDB transaction, all or nothing."""

from __future__ import annotations

from neutron_helpers import Neutron, dump


def test_bulk_networks_subnets_and_ports(neutron: Neutron) -> None:
    r = neutron.client.post("/v2.0/networks", json={"networks": [{"name": "a"}, {"name": "b"}]})
    assert r.status_code == 201, r.text
    nets = r.json()["networks"]
    assert [n["name"] for n in nets] == ["a", "b"] and nets[0]["id"] != nets[1]["id"]
    subs = neutron.client.post(
        "/v2.0/subnets",
        json={
            "subnets": [
                {"network_id": nets[0]["id"], "cidr": "10.0.0.0/24", "ip_version": 4},
                {"network_id": nets[1]["id"], "cidr": "10.1.0.0/24", "ip_version": 4},
            ]
        },
    ).json()["subnets"]
    assert [s["cidr"] for s in subs] == ["10.0.0.0/24", "10.1.0.0/24"]
    ports = neutron.client.post(
        "/v2.0/ports", json={"ports": [{"network_id": nets[0]["id"]}] * 3}
    ).json()["ports"]
    # Each item sees the ones before it in the same transaction: distinct addresses.
    assert [p["fixed_ips"][0]["ip_address"] for p in ports] == [
        "10.0.0.2",
        "10.0.0.3",
        "10.0.0.4",
    ]


def test_a_bad_item_creates_nothing(neutron: Neutron) -> None:
    net = neutron.network()
    neutron.subnet(net["id"])
    before = dump(neutron.nsdb)
    items = [
        {"network_id": net["id"], "mac_address": "fa:16:3e:00:00:01"},
        {"network_id": net["id"], "mac_address": "fa:16:3e:00:00:01"},
    ]
    err = neutron.error("POST", "/v2.0/ports", 409, json={"ports": items})
    assert err["type"] == "MacAddressInUse"
    overlapping = [
        {"network_id": net["id"], "cidr": "10.1.0.0/24"},
        {"network_id": net["id"], "cidr": "10.1.0.0/25"},
    ]
    neutron.error("POST", "/v2.0/subnets", 400, json={"subnets": overlapping})
    assert dump(neutron.nsdb) == before
