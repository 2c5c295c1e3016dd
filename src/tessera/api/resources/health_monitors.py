"""Health monitors: how the health-monitor service probes the members of the pools that
name one (`status` is the server's, ignored when a client sends it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from tessera.api.deps import Store, build, id_param, oid, sent
from tessera.api.schemas import HealthMonitorCreate, HealthMonitorUpdate
from tessera.model import HealthMonitor

router = APIRouter(tags=["health monitors"])

HealthMonitorId = Annotated[str, id_param("health monitor")]


@router.get("/health_monitors")
def list_health_monitors(store: Store) -> list[HealthMonitor]:
    return store.list(HealthMonitor)


@router.post("/health_monitors", status_code=201)
def create_health_monitor(body: HealthMonitorCreate, store: Store) -> HealthMonitor:
    """`timeout` may not exceed `delay` (400)."""
    return store.create(build(HealthMonitor, body))


@router.get("/health_monitors/{health_monitor_id}")
def get_health_monitor(health_monitor_id: HealthMonitorId, store: Store) -> HealthMonitor:
    return store.get(HealthMonitor, oid("health_monitors", health_monitor_id))


@router.put("/health_monitors/{health_monitor_id}")
def update_health_monitor(
    health_monitor_id: HealthMonitorId, body: HealthMonitorUpdate, store: Store
) -> HealthMonitor:
    return store.update(HealthMonitor, oid("health_monitors", health_monitor_id), sent(body))


@router.delete("/health_monitors/{health_monitor_id}", status_code=204)
def delete_health_monitor(health_monitor_id: HealthMonitorId, store: Store) -> None:
    """The pools that name it keep going, unmonitored (`health_monitor_id` cleared)."""
    store.delete(HealthMonitor, oid("health_monitors", health_monitor_id))
