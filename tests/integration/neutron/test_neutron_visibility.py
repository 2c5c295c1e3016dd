"""Which subnets a Keystone-authenticated project sees (Neutron's `get_subnet` policy:
admin, owner or shared network); found by tempest's test_external_network_visibility."""

from __future__ import annotations

from neutron_helpers import Neutron


def _as(project: str, roles: str = "member") -> dict[str, str]:
    return {"X-Project-Id": project, "X-Roles": roles}


def test_other_projects_see_an_external_network_but_not_its_subnets(neutron: Neutron) -> None:
    public = neutron.network(name="public", project_id="ops", **{"router:external": True})
    sub = neutron.subnet(public["id"], "203.0.113.0/24", project_id="ops")
    shared = neutron.network(name="shared", project_id="ops", shared=True)
    shared_sub = neutron.subnet(shared["id"], "10.1.0.0/24", project_id="ops")
    c = neutron.client
    listed = c.get("/v2.0/networks", headers=_as("p1")).json()["networks"]
    assert public["id"] in {n["id"] for n in listed}
    ids = {s["id"] for s in c.get("/v2.0/subnets", headers=_as("p1")).json()["subnets"]}
    assert ids == {shared_sub["id"]}
    assert c.get(f"/v2.0/subnets/{sub['id']}", headers=_as("p1")).status_code == 404
    assert c.get(f"/v2.0/subnets/{shared_sub['id']}", headers=_as("p1")).status_code == 200
    # the owner, an admin, and an unauthenticated caller (no project) see it
    for headers in (_as("ops"), _as("p1", "admin,member"), {}):
        assert c.get(f"/v2.0/subnets/{sub['id']}", headers=headers).status_code == 200
        listed = c.get("/v2.0/subnets", headers=headers).json()["subnets"]
        assert sub["id"] in {s["id"] for s in listed}


def test_a_project_sees_only_its_own_floating_ips(neutron: Neutron) -> None:
    public = neutron.network(name="public", project_id="ops", **{"router:external": True})
    neutron.subnet(public["id"], "203.0.113.0/24", project_id="ops")
    mine = neutron.create("floatingip", floating_network_id=public["id"], project_id="p1")
    theirs = neutron.create("floatingip", floating_network_id=public["id"], project_id="p2")
    c = neutron.client
    listed = c.get("/v2.0/floatingips", headers=_as("p1")).json()["floatingips"]
    assert [f["id"] for f in listed] == [mine["id"]]
    assert c.get(f"/v2.0/floatingips/{theirs['id']}", headers=_as("p1")).status_code == 404
    admin = c.get("/v2.0/floatingips", headers=_as("p1", "admin")).json()["floatingips"]
    assert {f["id"] for f in admin} == {mine["id"], theirs["id"]}
