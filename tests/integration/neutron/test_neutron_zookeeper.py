"""The whole network → subnet → port → delete cycle over both NSDB backends: with
ZooKeeper each write is a real multi-op transaction, and the deletes restore the
exact prior contents."""

from __future__ import annotations

from neutron_helpers import Neutron, dump

from tessera.model import Host, Port
from tessera.nsdb.store import TopologyStore


def test_full_cycle_restores_the_nsdb(any_neutron: Neutron) -> None:
    neutron = any_neutron
    store = TopologyStore(neutron.nsdb)
    store.register_host("6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b", "compute1", [])
    neutron.client.get("/v2.0/security-groups")  # the project's default group stays
    before = dump(neutron.nsdb)
    net = neutron.network(name="n", mtu="1400")
    sub = neutron.subnet(net["id"], "10.0.0.0/24")
    body = {"security_group": {"name": "web"}}
    sg = neutron.client.post("/v2.0/security-groups", json=body).json()["security_group"]
    port = neutron.port(net["id"], security_groups=[sg["id"]], **{"binding:host_id": "compute1"})
    assert store.get(Port, port["id"]).interface_name == "tap" + port["id"][:11]
    assert neutron.error("DELETE", f"/v2.0/networks/{net['id']}", 409)["type"] == "NetworkInUse"
    assert neutron.error("DELETE", f"/v2.0/subnets/{sub['id']}", 409)["type"] == "SubnetInUse"
    paths = (f"ports/{port['id']}", f"subnets/{sub['id']}", f"networks/{net['id']}")
    for path in (*paths, f"security-groups/{sg['id']}"):
        assert neutron.client.delete(f"/v2.0/{path}").status_code == 204
    after = dump(neutron.nsdb)
    # The host was touched (rewritten unchanged) by the bind: same content.
    assert after == before
    assert store.get(Host, "6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b").name == "compute1"
