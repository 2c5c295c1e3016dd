"""A schema-guided fuzz of the Neutron endpoint: bodies made of the real attribute
names with arbitrary JSON values (and stray names), and arbitrary list queries. Nothing
may answer 5xx, and every error is a NeutronError."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from tessera.neutron import networks, ports, subnets
from tessera.neutron.app import create_neutron_app
from tessera.nsdb.memory import MemoryNsdb

ATTRS = {
    "network": sorted(networks.CREATE_ATTRS),
    "subnet": sorted(subnets.CREATE_ATTRS),
    "port": sorted(ports.CREATE_ATTRS),
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(
        ["10.0.0.0/24", "10.0.0.5", "fa:16:3e:00:00:01", "true", "1400", "::1", "10.0.0.0/8"]
    ),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[TestClient, dict[str, str]]]:
    nsdb = MemoryNsdb()
    with TestClient(create_neutron_app(nsdb), raise_server_exceptions=False) as client:
        net = client.post("/v2.0/networks", json={"network": {"name": "n"}}).json()["network"]
        sub = client.post(
            "/v2.0/subnets", json={"subnet": {"network_id": net["id"], "cidr": "10.0.0.0/24"}}
        ).json()["subnet"]
        port = client.post("/v2.0/ports", json={"port": {"network_id": net["id"]}}).json()["port"]
        yield client, {"network": net["id"], "subnet": sub["id"], "port": port["id"]}
    nsdb.close()


def _check(r: Any) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert set(r.json()) == {"NeutronError"}, r.text


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    resource = draw(st.sampled_from(sorted(ATTRS)))
    names = draw(st.lists(st.sampled_from(ATTRS[resource]) | st.text(max_size=8), max_size=6))
    attrs = {n: draw(json_values) for n in names}
    if draw(st.booleans()) and resource != "network":
        attrs["network_id"] = "NET"
    return resource, attrs


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=bodies(), update=st.booleans())
def test_no_body_makes_a_server_error(
    world: tuple[TestClient, dict[str, str]], case: tuple[str, dict[str, Any]], update: bool
) -> None:
    client, ids = world
    resource, attrs = case
    if attrs.get("network_id") == "NET":
        attrs["network_id"] = ids["network"]
    if update:
        r = client.put(f"/v2.0/{resource}s/{ids[resource]}", json={resource: attrs})
    else:
        r = client.post(f"/v2.0/{resource}s", json={resource: attrs})
        if r.status_code == 201:  # keep the world small and the pools free
            client.delete(f"/v2.0/{resource}s/{r.json()[resource]['id']}")
    _check(r)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    collection=st.sampled_from(["networks", "subnets", "ports"]),
    query=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "fields",
                    "limit",
                    "marker",
                    "sort_key",
                    "sort_dir",
                    "name",
                    "shared",
                    "fixed_ips",
                    "tags",
                    "tags-any",
                    "id",
                    "mtu",
                ]
            )
            | st.text(max_size=6),
            st.text(max_size=12),
        ),
        max_size=5,
    ),
)
def test_no_list_query_makes_a_server_error(
    world: tuple[TestClient, dict[str, str]], collection: str, query: list[tuple[str, str]]
) -> None:
    client, _ = world
    _check(client.get(f"/v2.0/{collection}", params=query))
