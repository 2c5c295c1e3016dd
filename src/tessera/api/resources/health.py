"""Whether this API server can serve: its NSDB answers, and its cluster role."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tessera.api.schemas import Health, HealthUnavailable

router = APIRouter(tags=["health"])

#: How long the NSDB has to answer the health check's round trip. A frozen ZooKeeper
#: keeps its connection open, so only a request that must be answered tells the truth;
#: the whole answer stays within a second (load balancers' probes time out at 1-2 s).
PING_TIMEOUT = 0.8


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": HealthUnavailable, "description": "The NSDB does not answer"}},
)
def get_health(request: Request) -> Any:
    """200 when the NSDB answers a request within 0.8 s, else 503 with
    `nsdb_connected: false` and the reason, within a second either way."""
    nsdb = request.app.state.nsdb
    services = request.app.state.services
    leader = bool(services and services.is_leader)
    if not nsdb.ping(PING_TIMEOUT):
        body = HealthUnavailable(
            message=f"the NSDB is unreachable (no answer within {PING_TIMEOUT:g}s): "
            "this API server cannot serve now",
            leader=leader,
        )
        return JSONResponse(status_code=503, content=body.model_dump())
    return Health(
        nsdb_connected=True,
        leader=leader,
        leader_id=services.leader() if services else None,
    )
