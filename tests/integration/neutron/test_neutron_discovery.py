"""What every client call starts with: version discovery, extensions, the project
lookup, and Neutron-shaped errors for anything unknown or malformed."""

from __future__ import annotations

import pytest
from neutron_helpers import Neutron

from tessera.neutron.extensions import EXTENSIONS


def test_version_discovery_names_v2_as_current(neutron: Neutron) -> None:
    r = neutron.client.get("/", headers={"X-Auth-Token": "notused"})
    assert r.status_code == 200
    assert r.json() == {
        "versions": [
            {
                "id": "v2.0",
                "status": "CURRENT",
                "links": [{"href": "http://testserver/v2.0/", "rel": "self"}],
            }
        ]
    }


def test_extensions_list_only_what_is_implemented(neutron: Neutron) -> None:
    listed = neutron.client.get("/v2.0/extensions").json()["extensions"]
    aliases = {e["alias"] for e in listed}
    assert aliases == set(EXTENSIONS)
    # Advertising these changes what the client sends: they must not be listed.
    assert not aliases & {"external-gateway-multihoming", "tag-ports-during-bulk-creation"}
    assert {"security-group", "router"} <= aliases
    for ext in listed:
        assert set(ext) == {"alias", "name", "description", "updated", "links"}
    one = neutron.client.get("/v2.0/extensions/external-net")
    assert one.status_code == 200 and one.json()["extension"]["alias"] == "external-net"


def test_unknown_extension_is_404(neutron: Neutron) -> None:
    err = neutron.error("GET", "/v2.0/extensions/external-gateway-multihoming", 404)
    assert err["type"] == "ExtensionNotFound"


@pytest.mark.parametrize("path", ["/v2.0/tenants/abc", "/v2.0/tenants"])
def test_project_lookup_is_forbidden_so_the_client_uses_the_id(neutron: Neutron, path: str) -> None:
    assert neutron.error("GET", path, 403)["type"] == "HTTPForbidden"


@pytest.mark.parametrize("collection", ["networks", "subnets", "ports"])
def test_a_name_in_place_of_an_id_is_404(neutron: Neutron, collection: str) -> None:
    err = neutron.error("GET", f"/v2.0/{collection}/my-name", 404)
    assert err["type"].endswith("NotFound")
    neutron.error("PUT", f"/v2.0/{collection}/my-name", 404, json={collection[:-1]: {}})
    neutron.error("DELETE", f"/v2.0/{collection}/my-name", 404)


def test_unknown_path_and_method_are_neutron_errors(neutron: Neutron) -> None:
    neutron.error("GET", "/v2.0/floatingips-unknown", 404)
    neutron.error("PATCH", "/v2.0/networks", 405)


@pytest.mark.parametrize(
    "body",
    [
        None,
        "garbage",
        [],
        {},
        {"network": "x"},
        {"network": {"mtu": "abc"}},
        {"network": {"mtu": 10}},
        {"network": {"mtu": True}},
        {"network": {"admin_state_up": "maybe"}},
        {"network": {"name": 5}},
        {"network": {"name": "x" * 256}},
        {"network": {"provider:network_type": "vlan"}},
        {"network": {"tags": "notalist"}},
        {"networks": []},
        {"networks": ["x"]},
        {"networks": [{"name": "ok"}, {"mtu": "x"}]},
    ],
)
def test_bad_network_bodies_are_400_never_422_or_500(neutron: Neutron, body: object) -> None:
    err = neutron.error("POST", "/v2.0/networks", 400, json=body)
    assert err["type"] in ("InvalidInput", "HTTPBadRequest")
    assert neutron.client.get("/v2.0/networks").json() == {"networks": []}


def test_malformed_json_is_400(neutron: Neutron) -> None:
    neutron.error(
        "POST", "/v2.0/networks", 400, content=b"{bad", headers={"content-type": "application/json"}
    )


@pytest.mark.parametrize(
    "body",
    [
        {"subnet": {"cidr": "10.0.0.0/24"}},
        {"subnet": {"network_id": "NET"}},
        {"subnet": {"network_id": "NET", "cidr": "10.0.0.0/24", "ip_version": "x"}},
        {"subnet": {"network_id": "NET", "cidr": [1]}},
        {"subnet": {"network_id": "NET", "cidr": "10.0.0.0/24", "allocation_pools": "x"}},
        {"subnet": {"network_id": "NET", "cidr": "10.0.0.0/24", "allocation_pools": [{}]}},
        {"subnet": {"network_id": "NET", "cidr": "10.0.0.0/24", "dns_nameservers": ["x"]}},
        {"subnet": {"network_id": "NET", "cidr": "10.0.0.0/24", "host_routes": [{"a": 1}]}},
        {"subnet": {"network_id": "NET", "cidr": "10.0.0.0/24", "subnetpool_id": "p"}},
        {"port": {}},
        {"port": {"network_id": "NET", "mac_address": "zz"}},
        {"port": {"network_id": "NET", "mac_address": "01:00:00:00:00:01"}},
        {"port": {"network_id": "NET", "fixed_ips": "x"}},
        {"port": {"network_id": "NET", "fixed_ips": [{}]}},
        {"port": {"network_id": "NET", "fixed_ips": [{"ip_address": "300.0.0.1"}]}},
        {"port": {"network_id": "NET", "security_groups": [1]}},
        {"port": {"network_id": "NET", "binding:vnic_type": "direct"}},
        {"port": {"network_id": "NET", "allowed_address_pairs": [{"mac_address": "x"}]}},
        {"port": {"network_id": "NET", "port_security_enabled": False, "security_groups": ["a"]}},
    ],
)
def test_bad_subnet_and_port_bodies_are_400(neutron: Neutron, body: dict[str, dict]) -> None:
    net = neutron.network()
    neutron.subnet(net["id"], "10.9.0.0/24")
    ((resource, attrs),) = body.items()
    if attrs.get("network_id") == "NET":
        attrs = {**attrs, "network_id": net["id"]}
    err = neutron.error("POST", f"/v2.0/{resource}s", 400, json={resource: attrs})
    assert err["message"]
