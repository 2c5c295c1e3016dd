"""Networks ⇄ bridges: same id, linked both ways, written and removed atomically."""

from __future__ import annotations

import warnings

import pytest
from neutron_helpers import Neutron, dump

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from tessera.api.app import create_app
from tessera.model import Bridge, Port
from tessera.model.neutron import NeutronNetwork
from tessera.nsdb.errors import Conflict
from tessera.nsdb.store import TopologyStore


def test_a_network_is_a_bridge_with_its_id_name_and_project(neutron: Neutron) -> None:
    net = neutron.network(name="web", project_id="p1", mtu="1400", **{"router:external": True})
    assert net["mtu"] == 1400 and net["router:external"] is True and net["status"] == "ACTIVE"
    assert net["tessera:bridge_id"] == net["id"]
    bridge = TopologyStore(neutron.nsdb).get(Bridge, net["id"])
    assert (bridge.name, bridge.tenant_id, bridge.admin_state_up) == ("web", "p1", True)
    stored = TopologyStore(neutron.nsdb).get(NeutronNetwork, net["id"])
    assert stored.bridge_id == bridge.id


def test_every_list_attribute_is_present(neutron: Neutron) -> None:
    net = neutron.network()
    for attr in ("subnets", "tags", "availability_zone_hints", "availability_zones"):
        assert net[attr] == []


def test_update_reaches_the_bridge(neutron: Neutron) -> None:
    net = neutron.network(name="old")
    r = neutron.client.put(
        f"/v2.0/networks/{net['id']}",
        json={"network": {"name": "new", "admin_state_up": False, "mtu": "1300"}},
    )
    assert r.status_code == 200, r.text
    updated = r.json()["network"]
    assert (updated["name"], updated["mtu"], updated["revision_number"]) == ("new", 1300, 1)
    bridge = TopologyStore(neutron.nsdb).get(Bridge, net["id"])
    assert (bridge.name, bridge.admin_state_up) == ("new", False)


def test_update_refuses_read_only_and_unknown_attributes(neutron: Neutron) -> None:
    net = neutron.network()
    for attrs in ({"id": net["id"]}, {"tenant_id": "x"}, {"bogus": 1}, {"mtu": "x"}):
        neutron.error("PUT", f"/v2.0/networks/{net['id']}", 400, json={"network": attrs})


def test_delete_leaves_the_nsdb_exactly_as_before(neutron: Neutron) -> None:
    before = dump(neutron.nsdb)
    net = neutron.network()
    neutron.subnet(net["id"])
    assert dump(neutron.nsdb) != before
    assert neutron.client.delete(f"/v2.0/networks/{net['id']}").status_code == 204
    assert dump(neutron.nsdb) == before
    assert neutron.error("GET", f"/v2.0/networks/{net['id']}", 404)["type"] == "NetworkNotFound"
    neutron.error("DELETE", f"/v2.0/networks/{net['id']}", 404)


def test_a_network_with_ports_is_in_use(neutron: Neutron) -> None:
    net = neutron.network()
    port = neutron.port(net["id"])
    err = neutron.error("DELETE", f"/v2.0/networks/{net['id']}", 409)
    assert err["type"] == "NetworkInUse"
    neutron.client.delete(f"/v2.0/ports/{port['id']}")
    assert neutron.client.delete(f"/v2.0/networks/{net['id']}").status_code == 204


def test_a_dhcp_port_does_not_keep_the_network_in_use(neutron: Neutron) -> None:
    before = dump(neutron.nsdb)
    net = neutron.network()
    neutron.subnet(net["id"])
    neutron.port(net["id"], device_owner="network:dhcp")
    assert neutron.client.delete(f"/v2.0/networks/{net['id']}").status_code == 204
    assert dump(neutron.nsdb) == before


def test_a_bridge_port_made_through_tessera_keeps_the_network_in_use(neutron: Neutron) -> None:
    net = neutron.network()
    TopologyStore(neutron.nsdb).create(Port(device_id=net["id"], type="Bridge"))
    assert neutron.error("DELETE", f"/v2.0/networks/{net['id']}", 409)["type"] == "NetworkInUse"


def test_deleting_the_bridge_through_tessera_is_refused(neutron: Neutron) -> None:
    """The bridge is the network's twin: the v1 side refuses (409), so no Neutron port's
    security chains or router ports are left behind; the Neutron delete undoes it all."""
    neutron.client.get("/v2.0/security-groups")  # the project's default group stays
    before = dump(neutron.nsdb)
    net = neutron.network()
    neutron.subnet(net["id"])
    port = neutron.port(net["id"])
    made = dump(neutron.nsdb)
    with pytest.raises(Conflict, match="managed by the Neutron API"):
        TopologyStore(neutron.nsdb).delete(Bridge, net["id"])
    assert dump(neutron.nsdb) == made
    assert neutron.client.delete(f"/v2.0/ports/{port['id']}").status_code == 204
    assert neutron.client.delete(f"/v2.0/networks/{net['id']}").status_code == 204
    assert dump(neutron.nsdb) == before


def test_tags_api(neutron: Neutron) -> None:
    net = neutron.network()
    base = f"/v2.0/networks/{net['id']}/tags"
    assert neutron.client.put(base, json={"tags": ["b", "a"]}).json() == {"tags": ["a", "b"]}
    assert neutron.client.put(f"{base}/c").status_code == 201
    assert neutron.client.get(f"{base}/c").status_code == 204
    assert neutron.client.delete(f"{base}/a").status_code == 204
    assert neutron.client.get(base).json() == {"tags": ["b", "c"]}
    neutron.error("DELETE", f"{base}/zz", 404)
    neutron.error("GET", f"{base}/zz", 404)
    neutron.error("PUT", base, 400, json={"tags": "x"})
    assert neutron.client.delete(base).status_code == 204
    assert neutron.client.get(f"/v2.0/networks/{net['id']}").json()["network"]["tags"] == []


def test_the_twins_are_visible_through_the_v1_api_by_the_same_ids(neutron: Neutron) -> None:
    net = neutron.network(name="web", project_id="p1")
    sub = neutron.subnet(net["id"])
    port = neutron.port(net["id"])
    with TestClient(create_app(neutron.nsdb)) as v1:
        bridge = v1.get(f"/api/v1/bridges/{net['id']}").json()
        assert (bridge["name"], bridge["tenant_id"]) == ("web", "p1")
        assert v1.get(f"/api/v1/ports/{port['id']}").json()["device_id"] == net["id"]
        key = sub["tessera:dhcp_subnet"]
        hosts = v1.get(f"/api/v1/bridges/{net['id']}/dhcp_subnets/{key}/hosts").json()
        assert [h["mac_addr"] for h in hosts] == [port["mac_address"]]
