"""Neutron security groups and rules: CRUD, errors, the default group, and what the
translated chains let through (the v1 trace API over the same NSDB)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from neutron_helpers import Neutron, dump

from tessera.api.app import create_app
from tessera.model import Chain, IpAddrGroup, Port, PortGroup, Rule
from tessera.model.types import new_id
from tessera.neutron import security_groups
from tessera.nsdb.errors import AlreadyExists
from tessera.nsdb.store import TopologyStore
from tessera.nsdb.store.transaction import Transaction

SG = "/v2.0/security-groups"
RULES = "/v2.0/security-group-rules"
PROJECT = {"X-Project-Id": "p1"}
RANGE = "SecurityGroupInvalidPortRange"
PORT = "SecurityGroupInvalidPortValue"
BOTH = "SecurityGroupRemoteGroupAndRemoteIpPrefix"


def _group(neutron: Neutron, **attrs: Any) -> dict[str, Any]:
    r = neutron.client.post(SG, json={"security_group": attrs}, headers=PROJECT)
    assert r.status_code == 201, r.text
    return r.json()["security_group"]  # type: ignore[no-any-return]


def _rule(neutron: Neutron, sg: str, **attrs: Any) -> dict[str, Any]:
    body = {"security_group_rule": {"security_group_id": sg, **attrs}}
    r = neutron.client.post(RULES, json=body, headers=PROJECT)
    assert r.status_code == 201, r.text
    return r.json()["security_group_rule"]  # type: ignore[no-any-return]


def _port(neutron: Neutron, net: str, ip: str, **attrs: Any) -> dict[str, Any]:
    body = {"port": {"network_id": net, "fixed_ips": [{"ip_address": ip}], **attrs}}
    r = neutron.client.post("/v2.0/ports", json=body, headers=PROJECT)
    assert r.status_code == 201, r.text
    return r.json()["port"]  # type: ignore[no-any-return]


def _groups(neutron: Neutron) -> list[dict[str, Any]]:
    return neutron.client.get(SG, headers=PROJECT).json()["security_groups"]  # type: ignore[no-any-return]


def test_the_first_listing_makes_the_default_group_with_neutrons_rules(neutron: Neutron) -> None:
    (default,) = _groups(neutron)
    assert default["name"] == "default" and default["project_id"] == "p1"
    rules = {
        (r["direction"], r["ethertype"], r["remote_group_id"])
        for r in default["security_group_rules"]
    }
    assert rules == {("egress", "IPv4", None), ("ingress", "IPv4", default["id"])}
    assert [g["id"] for g in _groups(neutron)] == [default["id"]]  # made once
    # Listing with a project filter makes that project's (Neutron does the same).
    listed = neutron.client.get(f"{SG}?project_id=p2").json()["security_groups"]
    assert [(g["name"], g["project_id"]) for g in listed] == [("default", "p2")]
    store = TopologyStore(neutron.nsdb)
    chain = store.get(Chain, default["tessera:ingress_chain_id"])
    (twin,) = [store.get(Rule, r) for r in chain.rule_ids]
    assert twin.type == "accept" and twin.ip_addr_group_src == default["tessera:ip_addr_group_id"]
    ext = neutron.client.get("/v2.0/extensions/security-group")
    assert ext.status_code == 200


def test_group_and_rule_crud_with_neutrons_errors(neutron: Neutron) -> None:
    before_default = _groups(neutron)
    before = dump(neutron.nsdb)
    sg = _group(neutron, name="web", description="d", tags=["t"])
    assert sg["stateful"] is True and sg["tags"] == ["t"]
    assert [r["direction"] for r in sg["security_group_rules"]] == ["egress"]
    ssh = _rule(
        neutron, sg["id"], direction="ingress", protocol="tcp", port_range_min=22,
        port_range_max=22, remote_ip_prefix="10.0.0.7/24",
    )  # fmt: skip
    assert ssh["remote_ip_prefix"] == "10.0.0.0/24" and ssh["ethertype"] == "IPv4"
    shown = neutron.client.get(f"{SG}/{sg['id']}").json()["security_group"]
    assert ssh["id"] in [r["id"] for r in shown["security_group_rules"]]
    twin = TopologyStore(neutron.nsdb).get(Rule, ssh["tessera:rule_id"])
    assert (twin.nw_proto, twin.tp_dst and twin.tp_dst.start, twin.nw_src_length) == (6, 22, 24)
    new = {"security_group": {"name": "www"}}
    assert (
        neutron.client.put(f"{SG}/{sg['id']}", json=new).json()["security_group"]["name"] == "www"
    )

    base = {"security_group_id": sg["id"], "direction": "ingress"}
    for bad, kind in (
        ({"ethertype": "IPv6"}, "InvalidInput"),
        ({"direction": "sideways"}, "InvalidInput"),
        ({"protocol": "bogus"}, "SecurityGroupRuleInvalidProtocol"),
        ({"protocol": "tcp", "port_range_min": 90, "port_range_max": 80}, RANGE),
        ({"port_range_min": 80, "port_range_max": 80}, RANGE),
        ({"protocol": "tcp", "port_range_min": -16, "port_range_max": 80}, PORT),
        ({"protocol": "tcp", "port_range_min": 80, "port_range_max": 65536}, PORT),
        ({"protocol": "icmp", "port_range_min": 300}, "SecurityGroupInvalidIcmpValue"),
        ({"protocol": "icmp", "port_range_max": 6}, "SecurityGroupMissingIcmpType"),
        ({"remote_ip_prefix": "nope"}, "InvalidInput"),
        ({"remote_group_id": sg["id"], "remote_ip_prefix": "10.0.0.0/8"}, BOTH),
    ):  # fmt: skip
        err = neutron.error("POST", RULES, 400, json={"security_group_rule": {**base, **bad}})
        assert err["type"] == kind, bad
    same = {"protocol": "tcp", "port_range_min": 22, "port_range_max": 22}
    dup = {"security_group_rule": {**base, **same, "remote_ip_prefix": "10.0.0.0/24"}}
    assert neutron.error("POST", RULES, 409, json=dup)["type"] == "SecurityGroupRuleExists"
    missing = {"security_group_rule": {**base, "security_group_id": new_id()}}
    assert neutron.error("POST", RULES, 404, json=missing)["type"] == "SecurityGroupNotFound"
    assert neutron.error("GET", f"{SG}/{new_id()}", 404)["type"] == "SecurityGroupNotFound"
    named = neutron.error("GET", f"{SG}/web", 404)  # the client tries a name as an id first
    assert named["message"] == "Security group web could not be found."
    neutron.error("POST", SG, 409, json={"security_group": {"name": "default"}})
    neutron.error("PUT", f"{SG}/{sg['id']}", 409, json={"security_group": {"name": "default"}})

    assert neutron.client.delete(f"{RULES}/{ssh['id']}").status_code == 204
    assert neutron.error("GET", f"{RULES}/{ssh['id']}", 404)["type"] == "SecurityGroupRuleNotFound"
    assert neutron.client.delete(f"{SG}/{sg['id']}").status_code == 204
    assert dump(neutron.nsdb) == before
    assert _groups(neutron) == before_default


def test_a_group_in_use_cannot_be_deleted_and_a_port_delete_is_exact(neutron: Neutron) -> None:
    net = neutron.network()
    neutron.subnet(net["id"])
    _groups(neutron)
    before = dump(neutron.nsdb)
    sg = _group(neutron, name="web")
    port = _port(neutron, net["id"], "10.0.0.5", security_groups=[sg["id"]])
    assert port["security_groups"] == [sg["id"]]
    store = TopologyStore(neutron.nsdb)
    assert store.get(IpAddrGroup, sg["tessera:ip_addr_group_id"]).addrs == ["10.0.0.5"]
    assert store.get(PortGroup, sg["tessera:port_group_id"]).port_ids == [port["id"]]
    assert neutron.error("DELETE", f"{SG}/{sg['id']}", 409)["type"] == "SecurityGroupInUse"
    # Turning port security off needs the groups cleared; then no chains, no membership.
    body = {"port": {"port_security_enabled": False, "security_groups": []}}
    assert neutron.client.put(f"/v2.0/ports/{port['id']}", json=body).status_code == 200
    twin = store.get(Port, port["id"])
    assert twin.inbound_filter_id is None and twin.outbound_filter_id is None
    assert store.get(IpAddrGroup, sg["tessera:ip_addr_group_id"]).addrs == []
    body = {"port": {"port_security_enabled": True, "security_groups": [sg["id"]]}}
    assert neutron.client.put(f"/v2.0/ports/{port['id']}", json=body).status_code == 200
    filters = (
        store.get(Port, port["id"]).inbound_filter_id,
        store.get(Port, port["id"]).outbound_filter_id,
    )
    assert None not in filters
    rename = {"port": {"name": "renamed"}}  # nothing of its security: same chains
    assert neutron.client.put(f"/v2.0/ports/{port['id']}", json=rename).status_code == 200
    twin = store.get(Port, port["id"])
    assert (twin.inbound_filter_id, twin.outbound_filter_id) == filters
    assert neutron.client.delete(f"/v2.0/ports/{port['id']}").status_code == 204
    assert neutron.client.delete(f"{SG}/{sg['id']}").status_code == 204
    assert dump(neutron.nsdb) == before


@pytest.fixture
def traces(neutron: Neutron) -> Iterator[TestClient]:
    """The v1 API over the Neutron API's NSDB: its trace runs the agents' simulation."""
    with TestClient(create_app(neutron.nsdb)) as client:
        yield client


def _outputs(traces: TestClient, port: dict[str, Any], dst_ip: str, **packet: Any) -> set[str]:
    body = {
        "port_id": port["id"],
        "src_mac": port["mac_address"],
        "src_ip": port["fixed_ips"][0]["ip_address"],
        "dst_ip": dst_ip,
        **packet,
    }
    r = traces.post("/api/v1/traces", json=body)
    assert r.status_code == 200, r.text
    return {o["port_id"] for o in r.json()["outputs"]}


def test_the_translated_chains_allow_what_the_rules_allow(
    neutron: Neutron, traces: TestClient
) -> None:
    net = neutron.network()
    neutron.subnet(net["id"])
    web = _group(neutron, name="web")
    ssh = _rule(
        neutron, web["id"], direction="ingress", protocol="tcp", port_range_min=22,
        port_range_max=22, remote_ip_prefix="10.0.0.0/24",
    )  # fmt: skip
    client = _port(neutron, net["id"], "10.0.0.2")  # the default group
    server = _port(neutron, net["id"], "10.0.0.3", security_groups=[web["id"]])
    peer = _port(neutron, net["id"], "10.0.0.4")  # the default group too
    tcp = {"protocol": "tcp", "src_port": 40000}
    assert server["id"] in _outputs(traces, client, "10.0.0.3", **tcp, dst_port=22)
    assert server["id"] not in _outputs(traces, client, "10.0.0.3", **tcp, dst_port=80)
    # ICMP: port_range_min is the type (an echo request is type 8).
    assert server["id"] not in _outputs(traces, client, "10.0.0.3")
    _rule(neutron, web["id"], direction="ingress", protocol="icmp", port_range_min=0)
    assert server["id"] not in _outputs(traces, client, "10.0.0.3")
    _rule(neutron, web["id"], direction="ingress", protocol="icmp", port_range_min=8)
    assert server["id"] in _outputs(traces, client, "10.0.0.3")
    # The default group lets in its own members only (remote_group_id).
    assert peer["id"] in _outputs(traces, client, "10.0.0.4")
    assert peer["id"] not in _outputs(traces, server, "10.0.0.4")
    # Anti-spoofing: another source address never leaves the client's port...
    assert _outputs(traces, client, "10.0.0.3", **tcp, dst_port=22, src_ip="10.0.0.9") == set()
    # ...unless it is an allowed address pair.
    pairs = {"port": {"allowed_address_pairs": [{"ip_address": "10.0.0.8/29"}]}}
    assert neutron.client.put(f"/v2.0/ports/{client['id']}", json=pairs).status_code == 200
    assert server["id"] in _outputs(
        traces, client, "10.0.0.3", **tcp, dst_port=22, src_ip="10.0.0.9"
    )
    # A rule removed, a port's groups changed: the chains follow at once.
    assert neutron.client.delete(f"{RULES}/{ssh['id']}").status_code == 204
    assert server["id"] not in _outputs(traces, client, "10.0.0.3", **tcp, dst_port=22)
    default = next(g for g in _groups(neutron) if g["name"] == "default")
    body = {"port": {"security_groups": [web["id"], default["id"]]}}
    assert neutron.client.put(f"/v2.0/ports/{server['id']}", json=body).status_code == 200
    assert server["id"] in _outputs(traces, client, "10.0.0.3", **tcp, dst_port=80)
    assert peer["id"] in _outputs(traces, server, "10.0.0.4")


def test_two_requests_making_a_default_group_cannot_make_two(neutron: Neutron) -> None:
    """The default group's id comes from its project: a request that lost the race to
    make it fails its commit instead of adding a second default group."""
    loser = Transaction(neutron.nsdb)
    security_groups.default_group(loser, "p3")  # read "no default yet", not committed
    security_groups.ensure_default(neutron.nsdb, "p3")  # the winner
    with pytest.raises(AlreadyExists):
        neutron.nsdb.commit(loser.ops())
    security_groups.ensure_default(neutron.nsdb, "p3")  # already there: nothing to do
    listed = neutron.client.get(f"{SG}?project_id=p3").json()["security_groups"]
    assert [g["id"] for g in listed] == [security_groups.default_group_id("p3")]
