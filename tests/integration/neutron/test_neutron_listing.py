"""List semantics python-openstackclient depends on: fields, filters (repeated = OR),
sorting, and limit/marker pagination with a next link (ignored, the client loops)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from neutron_helpers import Neutron


def _names(body: dict, collection: str = "networks") -> list[str]:
    return [n["name"] for n in body[collection]]


def test_fields_select_attributes_and_tolerate_unknown_names(neutron: Neutron) -> None:
    net = neutron.network(name="a")
    body = neutron.client.get("/v2.0/networks?fields=id&fields=name&fields=nonsense").json()
    assert body == {"networks": [{"id": net["id"], "name": "a"}]}
    one = neutron.client.get(f"/v2.0/networks/{net['id']}?fields=mtu").json()
    assert one == {"network": {"mtu": 1450}}


def test_repeated_filter_values_are_or_and_filters_are_and(neutron: Neutron) -> None:
    for name, shared in (("a", True), ("b", False), ("c", True)):
        neutron.network(name=name, shared=shared)
    get = neutron.client.get
    assert _names(get("/v2.0/networks?name=a&name=b&sort_key=name").json()) == ["a", "b"]
    assert _names(get("/v2.0/networks?name=a&name=b&shared=true").json()) == ["a"]
    assert _names(get("/v2.0/networks?shared=False").json()) == ["b"]
    assert _names(get("/v2.0/networks?name=zzz").json()) == []
    # A filter on an attribute networks do not have is ignored, as Neutron does.
    assert len(get("/v2.0/networks?no_such_attribute=1").json()["networks"]) == 3


def test_project_and_tenant_filters_are_one(neutron: Neutron) -> None:
    neutron.network(name="mine", project_id="p1")
    neutron.network(name="theirs", tenant_id="p2")
    get = neutron.client.get
    assert _names(get("/v2.0/networks?tenant_id=p1").json()) == ["mine"]
    assert _names(get("/v2.0/networks?project_id=p2").json()) == ["theirs"]
    theirs = get("/v2.0/networks?project_id=p2").json()["networks"][0]
    assert theirs["tenant_id"] == theirs["project_id"] == "p2"


def test_conflicting_project_and_tenant_is_400(neutron: Neutron) -> None:
    body = {"network": {"project_id": "p1", "tenant_id": "p2"}}
    neutron.error("POST", "/v2.0/networks", 400, json=body)


def test_project_comes_from_the_keystone_header_when_not_in_the_body(neutron: Neutron) -> None:
    r = neutron.client.post(
        "/v2.0/networks", json={"network": {"name": "h"}}, headers={"X-Project-Id": "p9"}
    )
    assert r.json()["network"]["project_id"] == "p9"


def test_filter_on_list_of_dicts_and_tags(neutron: Neutron) -> None:
    net = neutron.network()
    sub = neutron.subnet(net["id"])
    p1 = neutron.port(net["id"], name="p1")
    neutron.port(net["id"], name="p2")
    ip = p1["fixed_ips"][0]["ip_address"]
    body = neutron.client.get(f"/v2.0/ports?fixed_ips=ip_address%3D{ip}").json()
    assert _names(body, "ports") == ["p1"]
    body = neutron.client.get(f"/v2.0/ports?fixed_ips=subnet_id%3D{sub['id']}").json()
    assert len(body["ports"]) == 2
    neutron.network(name="t1", tags=["x", "y"])
    neutron.network(name="t2", tags=["y"])
    get = neutron.client.get
    assert _names(get("/v2.0/networks?tags=x,y").json()) == ["t1"]
    assert sorted(_names(get("/v2.0/networks?tags-any=x,y").json())) == ["t1", "t2"]
    assert sorted(_names(get("/v2.0/networks?not-tags=x").json())) == ["net", "t2"]
    assert _names(get("/v2.0/networks?not-tags-any=y").json()) == ["net"]


def test_sort_keys_and_directions(neutron: Neutron) -> None:
    for name, mtu in (("b", 1400), ("a", 1400), ("c", 1300)):
        neutron.network(name=name, mtu=mtu)
    get = neutron.client.get
    assert _names(get("/v2.0/networks?sort_key=name&sort_dir=desc").json()) == ["c", "b", "a"]
    both = get("/v2.0/networks?sort_key=mtu&sort_dir=desc&sort_key=name&sort_dir=asc").json()
    assert _names(both) == ["a", "b", "c"]
    assert neutron.error("GET", "/v2.0/networks?sort_key=nonsense", 400)
    assert neutron.error("GET", "/v2.0/networks?sort_key=name&sort_dir=up", 400)


def test_limit_and_marker_paginate_with_a_next_link(neutron: Neutron) -> None:
    for i in range(5):
        neutron.network(name=f"n{i}")
    seen: list[str] = []
    url = "/v2.0/networks?limit=2&sort_key=name"
    for _ in range(5):  # bounded: 3 pages are expected
        body = neutron.client.get(url).json()
        seen += _names(body)
        links = body.get("networks_links", [])
        if not links:
            break
        (link,) = links
        assert link["rel"] == "next"
        parts = urlsplit(link["href"])
        query = dict(parse_qsl(parts.query))
        assert query["marker"] == body["networks"][-1]["id"] and query["limit"] == "2"
        url = f"{parts.path}?{parts.query}"
    assert seen == ["n0", "n1", "n2", "n3", "n4"]


def test_a_page_that_is_not_full_has_no_next_link(neutron: Neutron) -> None:
    neutron.network(name="only")
    body = neutron.client.get("/v2.0/networks?limit=5").json()
    assert "networks_links" not in body and _names(body) == ["only"]


def test_unknown_marker_and_bad_limit(neutron: Neutron) -> None:
    neutron.network()
    marker = "6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b"
    assert neutron.error("GET", f"/v2.0/networks?marker={marker}", 404)["type"] == "MarkerNotFound"
    neutron.error("GET", "/v2.0/networks?limit=x", 400)
    neutron.error("GET", "/v2.0/networks?limit=-1", 400)
    assert len(neutron.client.get("/v2.0/networks?limit=0").json()["networks"]) == 1
