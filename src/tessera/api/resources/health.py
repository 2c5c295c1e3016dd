"""Whether this API server can serve: its NSDB connection and its cluster role."""

from __future__ import annotations

from fastapi import APIRouter, Request

from tessera.api.schemas import Health
from tessera.nsdb.errors import Unavailable

router = APIRouter(tags=["health"])


@router.get("/health")
def get_health(request: Request) -> Health:
    """200 while the NSDB is reachable, 503 (with the reason) while it is not."""
    nsdb = request.app.state.nsdb
    services = request.app.state.services
    if not nsdb.connected:
        raise Unavailable("the NSDB is unreachable: this API server cannot serve now")
    return Health(
        nsdb_connected=True,
        leader=bool(services and services.is_leader),
        leader_id=services.leader() if services else None,
    )
