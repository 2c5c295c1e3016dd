"""`?tenant_id=` on the lists MidoNet's v1 API filtered by tenant."""

from __future__ import annotations

import pytest
from api_helpers import Api


@pytest.mark.parametrize("path", ["/bridges", "/routers", "/chains", "/port_groups"])
def test_a_list_filtered_by_tenant_has_that_tenants_objects_only(api: Api, path: str) -> None:
    a1 = api.post(path, {"name": "a1", "tenant_id": "tenant-a"})
    a2 = api.post(path, {"name": "a2", "tenant_id": "tenant-a"})
    b = api.post(path, {"name": "b", "tenant_id": "tenant-b"})
    none = api.post(path, {"name": "none"})
    ids = {o["id"] for o in api.get(f"{path}?tenant_id=tenant-a")}
    assert ids == {a1["id"], a2["id"]}
    assert [o["id"] for o in api.get(f"{path}?tenant_id=tenant-b")] == [b["id"]]
    assert api.get(f"{path}?tenant_id=nobody") == []
    assert {a1["id"], a2["id"], b["id"], none["id"]} <= {o["id"] for o in api.get(path)}
