"""Ids are unique across every kind, and no reference is matched by id alone, on both
NSDB backends (issue 13, item 2)."""

from __future__ import annotations

from api_helpers import Api

from tessera.model import Bridge, Router, StoredObject, new_id
from tessera.nsdb.codec import encode_object
from tessera.nsdb.memory import MemoryNsdb, _Obj
from tessera.nsdb.zookeeper import ZookeeperNsdb


def plant_legacy(nsdb: object, *objs: StoredObject) -> None:
    """Write `objs` as a version without the id registry did: straight into their
    kinds' tables, bypassing every check (data from before ids were unique across
    kinds); then, on ZooKeeper, fill the registry as the first client of the new
    version does when it connects to such a namespace."""
    for obj in objs:
        data = encode_object(obj)
        if isinstance(nsdb, MemoryNsdb):
            with nsdb.store.lock:
                nsdb.store.objects.setdefault(obj.kind, {})[obj.id] = _Obj(data.decode(), 1)
        else:
            assert isinstance(nsdb, ZookeeperNsdb)
            nsdb._zk.create(nsdb._obj_path(obj.kind, obj.id), data)
    if isinstance(nsdb, ZookeeperNsdb):
        nsdb._zk.set(nsdb._ids, b"")  # not filled yet
        nsdb._fill_id_registry()


def test_an_id_taken_by_one_kind_is_refused_to_every_other(any_api: Api) -> None:
    api = any_api
    bridge = api.bridge(name="b")
    x = bridge["id"]
    message = api.post("/routers", {"id": x}, status=409)
    assert f"bridge {x}" in message and "router" in message, message
    for path in ("/chains", "/port_groups", "/ip_addr_groups", "/tunnel_zones"):
        assert f"bridge {x}" in api.post(path, {"id": x}, status=409)
    assert f"bridge {x}" in api.post(f"/bridges/{x}/ports", {"id": x}, status=409)
    assert api.post("/bridges", {"id": x}, status=409) == f"bridge {x} already exists"
    api.get(f"/routers/{x}", status=404)

    # A deleted object's id is free again, for any kind.
    api.delete(f"/bridges/{x}")
    router = api.router(id=x)
    assert router["id"] == x
    assert f"router {x}" in api.post("/bridges", {"id": x}, status=409)


def test_a_router_sharing_a_legacy_id_with_a_bridge_stays_apart(any_api: Api) -> None:
    """Data written before the rule may hold a bridge and a router with one id: the
    router must not see the bridge's ports, route through them, or lose its own ports
    when the bridge is deleted (each symptom of the issue)."""
    api = any_api
    x = new_id()
    plant_legacy(api.nsdb, Bridge(id=x, name="b"), Router(id=x, name="r"))
    bridge = api.get(f"/bridges/{x}")
    bp = api.bridge_port(bridge)
    rp = api.router_port({"id": x}, "10.0.0.1")

    assert [p["id"] for p in api.get(f"/routers/{x}/ports")] == [rp["id"]]
    assert [p["id"] for p in api.get(f"/bridges/{x}/ports")] == [bp["id"]]
    routes = f"/routers/{x}/routes"
    message = api.post(
        routes,
        {"dst_network_addr": "10.9.0.0", "dst_network_length": 16, "next_hop_port": bp["id"]},
        status=400,
    )
    assert f"port of bridge {x}" in message, message
    route = api.post(
        routes,
        {"dst_network_addr": "10.9.0.0", "dst_network_length": 16, "next_hop_port": rp["id"]},
    )

    api.delete(f"/bridges/{x}")
    assert api.get(f"/routers/{x}")["name"] == "r"
    assert [p["id"] for p in api.get(f"/routers/{x}/ports")] == [rp["id"]]
    assert api.get(routes) == [route]
    api.get(f"/ports/{bp['id']}", status=404)

    # The id stays taken while one of its holders exists.
    assert f"router {x}" in api.post("/chains", {"id": x}, status=409)
    api.delete(f"/routers/{x}")
    assert api.get("/ports") == []
    assert api.post("/chains", {"id": x})["id"] == x


def test_an_unused_id_is_accepted_for_any_kind(any_api: Api) -> None:
    api = any_api
    ids = {kind: new_id() for kind in ("bridges", "routers", "chains")}
    for kind, id in ids.items():
        assert api.post(f"/{kind}", {"id": id})["id"] == id
