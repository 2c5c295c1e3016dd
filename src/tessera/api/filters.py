"""List filters shared by resources: MidoNet's v1 API lists a tenant's devices, chains and
port groups with `?tenant_id=`, and clients written against it rely on that."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, TypeVar

from fastapi import Query

from tessera.model import StoredObject

T = TypeVar("T", bound=StoredObject)

TenantId = Annotated[
    str | None,
    Query(description="Only the objects of this tenant (exact `tenant_id`).", max_length=255),
]


def of_tenant(objects: Iterable[T], tenant_id: str | None) -> list[T]:
    """`objects` whose `tenant_id` is `tenant_id`; all of them when it is None."""
    if tenant_id is None:
        return list(objects)
    return [o for o in objects if getattr(o, "tenant_id", None) == tenant_id]
