"""`GET /cluster/services`: the services of the cluster node serving this API.

Only this node's view: its role in each service's election, readiness, restarts and
last error. The whole cluster (every node's view, read from the NSDB where each node
publishes it) is `tessera cluster status`.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import Field

from tessera.model.types import TesseraModel
from tessera.nsdb.errors import NotFound

router = APIRouter(tags=["cluster"])

Role = Literal["leader", "follower", "standby", "active", "disabled"]


class ServiceStatus(TesseraModel):
    name: str
    redundancy: Literal["every-node", "singleton"] | None = Field(
        description="how the service fails over (null: its code could not be loaded)"
    )
    enabled: bool
    role: Role = Field(
        description="leader: this node runs the singleton; follower: queued behind "
        "another node's leader; standby: not yet volunteering; active: an every-node "
        "service running here; disabled: not run on this node"
    )
    since: str = Field(description="when the role last changed (UTC, ISO 8601)")
    running: bool = Field(description="whether a run is in progress (not backing off)")
    ready: bool
    restarts: int = Field(description="restarts after a failure on this node")
    last_error: str | None
    last_error_at: str | None


class NodeServices(TesseraModel):
    node: str = Field(description="this node's name in the cluster")
    services: list[ServiceStatus]


@router.get("/cluster/services")
def list_cluster_services(request: Request) -> NodeServices:
    """This node's services (404 when the API runs outside a cluster node)."""
    services = request.app.state.services
    if services is None or not hasattr(services, "status"):
        raise NotFound("this API server is not part of a cluster node")
    return NodeServices(
        node=services.identifier,
        services=[ServiceStatus(**s) for s in services.status()],
    )
