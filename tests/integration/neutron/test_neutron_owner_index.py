"""The reverse index of the Neutron translation (`neutron_owners`): every tessera object
a Neutron object names (but its twin) has an entry naming that Neutron object, written in
the same commit, exactly (never stale, never missing) over both backends; a v1 delete of
such an object is refused by reading that entry, not by walking every Neutron object."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from neutron_helpers import Neutron, dump

from tessera.model import KINDS, NeutronOwners, StoredObject
from tessera.model.neutron import NeutronObject
from tessera.nsdb.base import Nsdb, Stored
from tessera.nsdb.errors import Conflict
from tessera.nsdb.memory import MemoryNsdb
from tessera.nsdb.store import TopologyStore
from tessera.nsdb.store.integrity import refuse_neutron_twin
from tessera.nsdb.store.neutron_owners import NOT_INDEXED, indexed_ids, named_ids
from tessera.nsdb.store.transaction import Transaction

NEUTRON_KINDS = [k for k, c in KINDS.items() if issubclass(c, NeutronObject)]
TESSERA_KINDS = [k for k, c in KINDS.items() if c.twin_of is None and k not in NEUTRON_KINDS]


def put(neutron: Neutron, path: str, body: Any) -> dict[str, Any]:
    r = neutron.client.put(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def post(neutron: Neutron, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = neutron.client.post(f"/v2.0/{path}", json=body)
    assert r.status_code == 201, r.text
    (created,) = r.json().values()
    return created  # type: ignore[no-any-return]


def build(neutron: Neutron) -> dict[str, Any]:
    """A router (interface, gateway with SNAT, a static route), a security group with
    a rule, a port in it with a floating IP: every kind of translation there is."""
    lan = neutron.subnet(neutron.network(name="lan")["id"], "10.0.0.0/24")
    public = neutron.network(name="public", **{"router:external": True})
    neutron.subnet(public["id"], "203.0.113.0/24", gateway_ip="203.0.113.1")
    r = neutron.create("router", name="r", external_gateway_info={"network_id": public["id"]})
    put(neutron, f"/v2.0/routers/{r['id']}/add_router_interface", {"subnet_id": lan["id"]})
    routes = [{"destination": "10.9.0.0/16", "nexthop": "10.0.0.9"}]
    put(neutron, f"/v2.0/routers/{r['id']}", {"router": {"routes": routes}})
    sg = post(neutron, "security-groups", {"security_group": {"name": "web"}})
    rule = {"security_group_id": sg["id"], "direction": "ingress", "protocol": "tcp",
            "port_range_min": 80, "port_range_max": 80}  # fmt: skip
    post(neutron, "security-group-rules", {"security_group_rule": rule})
    vm = neutron.port(lan["network_id"], security_groups=[sg["id"]])
    fip = neutron.create("floatingip", floating_network_id=public["id"], port_id=vm["id"])
    return {"router": r, "sg": sg, "vm": vm, "fip": fip, "lan": lan}


def expected_index(nsdb: Nsdb) -> dict[str, set[tuple[str, str]]]:
    """The index as a walk over every Neutron object computes it."""
    owners: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for kind in NEUTRON_KINDS:
        for stored in nsdb.list(kind):
            for id in indexed_ids(stored.value):
                owners[id].add((kind, stored.value.id))
    return dict(owners)


def stored_index(nsdb: Nsdb) -> dict[str, set[tuple[str, str]]]:
    entries = [s.value for s in nsdb.list(NeutronOwners.kind)]
    return {
        e.id: {(o.owner_kind, o.owner_id) for o in e.owners}
        for e in entries
        if isinstance(e, NeutronOwners)
    }


def translation(nsdb: Nsdb) -> list[StoredObject]:
    """The tessera objects (not twins) that some Neutron object names, by a walk."""
    named: set[str] = set()
    for kind in NEUTRON_KINDS:
        for stored in nsdb.list(kind):
            named |= named_ids(stored.value.model_dump(), frozenset({"project_id"}))
    return [
        s.value
        for kind in TESSERA_KINDS
        if kind not in ("bridges", "routers", "hosts")
        for s in nsdb.list(kind)
        if s.value.id in named and not any(k for k in NEUTRON_KINDS if _twin(nsdb, k, s.value.id))
    ]


def _twin(nsdb: Nsdb, kind: str, id: str) -> bool:
    return KINDS[kind].twin_of is not None and any(s.value.id == id for s in nsdb.list(kind))


def test_every_translation_object_is_indexed_and_its_v1_delete_refused(
    any_neutron: Neutron,
) -> None:
    neutron = any_neutron
    built = build(neutron)
    index = stored_index(neutron.nsdb)
    assert index == expected_index(neutron.nsdb)
    # Each indexed id has one owner: the ids many objects share are not indexed.
    assert all(len(owners) == 1 for owners in index.values()), index
    objects = translation(neutron.nsdb)
    kinds = {o.kind for o in objects}
    assert {"chains", "rules", "routes", "ports", "dhcp_subnets", "port_groups",
            "ip_addr_groups"} <= kinds  # fmt: skip
    made = dump(neutron.nsdb)
    store = TopologyStore(neutron.nsdb)
    for obj in objects:
        ((owner_kind, owner_id),) = index[obj.id]
        noun = owner_kind.removeprefix("neutron_").removesuffix("s").replace("_", " ")
        with pytest.raises(Conflict, match=f"Neutron {noun} {owner_id}"):
            store.delete(type(obj), obj.id)
    # The twins are refused by their id (no entry of their own).
    for kind, id in (("routers", built["router"]["id"]), ("ports", built["vm"]["id"])):
        assert id not in index
        with pytest.raises(Conflict, match="managed by the Neutron API"):
            store.delete(KINDS[kind], id)
    assert dump(neutron.nsdb) == made


def test_updates_and_deletes_keep_the_index_exact(any_neutron: Neutron) -> None:
    neutron = any_neutron
    neutron.client.get("/v2.0/security-groups")  # the project's default group stays
    before = dump(neutron.nsdb)
    built = build(neutron)
    r, fip = built["router"]["id"], built["fip"]["id"]
    steps = [
        ("PUT", f"/v2.0/floatingips/{fip}", {"floatingip": {"port_id": None}}),
        ("PUT", f"/v2.0/routers/{r}", {"router": {"routes": []}}),
        ("PUT", f"/v2.0/routers/{r}/remove_router_interface", {"subnet_id": built["lan"]["id"]}),
        ("PUT", f"/v2.0/routers/{r}", {"router": {"external_gateway_info": {}}}),
        ("DELETE", f"/v2.0/floatingips/{fip}", None),
        ("DELETE", f"/v2.0/routers/{r}", None),
        ("DELETE", f"/v2.0/ports/{built['vm']['id']}", None),
        ("DELETE", f"/v2.0/security-groups/{built['sg']['id']}", None),
    ]
    for method, path, body in steps:
        response = neutron.client.request(method, path, json=body)
        assert response.status_code in (200, 204), (path, response.text)
        assert stored_index(neutron.nsdb) == expected_index(neutron.nsdb), path
    for net in neutron.client.get("/v2.0/networks").json()["networks"]:
        assert neutron.client.delete(f"/v2.0/networks/{net['id']}").status_code == 204
    assert dump(neutron.nsdb) == before


class CountingNsdb(MemoryNsdb):
    """Counts the reads a transaction makes of the store."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0
        self.lists: list[str] = []

    def get(self, kind: str, id: str) -> Stored:
        self.gets += 1
        return super().get(kind, id)

    def list(self, kind: str) -> list[Stored]:
        self.lists.append(kind)
        return super().list(kind)


def test_the_refusal_reads_a_few_objects_whatever_the_number_of_neutron_objects() -> None:
    from fastapi.testclient import TestClient

    from tessera.neutron.app import create_neutron_app

    nsdb = CountingNsdb()
    with TestClient(create_neutron_app(nsdb), raise_server_exceptions=False) as client:
        neutron = Neutron(client, nsdb)
        built = build(neutron)
        for n in range(20):  # more Neutron objects: the refusal must not read them
            neutron.port(built["lan"]["network_id"], name=f"p{n}")
        checked = [(o.kind, o.id) for o in translation(nsdb)]
        checked += [("routers", built["router"]["id"]), ("ports", built["vm"]["id"])]
        for kind, id in checked:
            nsdb.gets, nsdb.lists = 0, []
            with pytest.raises(Conflict):
                refuse_neutron_twin(Transaction(nsdb), kind, id)
            assert nsdb.lists == [], (kind, nsdb.lists)
            assert nsdb.gets <= 2, (kind, nsdb.gets)
        mine = TopologyStore(nsdb).create(KINDS["chains"].model_validate({"name": "v1"}))
        nsdb.gets, nsdb.lists = 0, []
        refuse_neutron_twin(Transaction(nsdb), "chains", mine.id)  # not Neutron's: no 409
        assert (nsdb.lists, nsdb.gets) == ([], 1)
    nsdb.close()


def test_the_keys_left_out_name_neutron_objects_twins_or_hosts() -> None:
    """A new `*_id` key of a Neutron object is indexed unless it is listed here: the
    ones left out name something the twin check covers, or a Neutron object, a host."""
    assert {"network_id", "port_id", "router_id", "binding_host_id"} <= NOT_INDEXED
    assert not {"dhcp_subnet_id", "inbound_chain_id", "route_id", "router_port_id",
                "rule_id", "port_group_id", "ip_addr_group_id"} & NOT_INDEXED  # fmt: skip
