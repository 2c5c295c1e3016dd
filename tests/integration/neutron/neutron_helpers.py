"""Shared helpers of the Neutron API tests: a client that checks NeutronError bodies,
and a dump of every NSDB object to compare before and after."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tessera.model import KINDS
from tessera.nsdb.base import Nsdb


def dump(nsdb: Nsdb) -> dict[str, dict[str, str]]:
    """Every stored object, by kind and id, as its JSON: equal dumps, equal topology."""
    return {
        kind: {s.value.id: s.value.model_dump_json() for s in nsdb.list(kind)} for kind in KINDS
    }


class Neutron:
    """A TestClient over the Neutron app with Neutron-shaped helpers."""

    def __init__(self, client: TestClient, nsdb: Nsdb) -> None:
        self.client = client
        self.nsdb = nsdb

    def create(self, resource: str, **attrs: Any) -> dict[str, Any]:
        r = self.client.post(f"/v2.0/{resource}s", json={resource: attrs})
        assert r.status_code == 201, r.text
        return r.json()[resource]  # type: ignore[no-any-return]

    def error(self, method: str, path: str, status: int, **kwargs: Any) -> dict[str, Any]:
        """The NeutronError of a request expected to fail with `status`."""
        r = self.client.request(method, path, **kwargs)
        assert r.status_code == status, r.text
        body = r.json()
        assert set(body) == {"NeutronError"}, body
        err = body["NeutronError"]
        assert set(err) == {"type", "message", "detail"}, err
        return err  # type: ignore[no-any-return]

    def network(self, **attrs: Any) -> dict[str, Any]:
        return self.create("network", **{"name": "net", **attrs})

    def subnet(self, network_id: str, cidr: str = "10.0.0.0/24", **attrs: Any) -> dict[str, Any]:
        return self.create("subnet", network_id=network_id, cidr=cidr, ip_version=4, **attrs)

    def port(self, network_id: str, **attrs: Any) -> dict[str, Any]:
        return self.create("port", network_id=network_id, **attrs)
