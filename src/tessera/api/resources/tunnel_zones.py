"""Tunnel zones: hosts that reach each other through VXLAN over their underlay addresses."""

from __future__ import annotations

from fastapi import APIRouter

from tessera.api.deps import HostId, Store, TunnelZoneId, build, oid, sent
from tessera.api.schemas import TunnelZoneCreate, TunnelZoneMember, TunnelZoneUpdate
from tessera.model import TunnelZone, TunnelZoneHost

router = APIRouter(tags=["tunnel zones"])


@router.get("/tunnel_zones")
def list_tunnel_zones(store: Store) -> list[TunnelZone]:
    return store.list(TunnelZone)


@router.post("/tunnel_zones", status_code=201)
def create_tunnel_zone(body: TunnelZoneCreate, store: Store) -> TunnelZone:
    return store.create(build(TunnelZone, body))


@router.get("/tunnel_zones/{tunnel_zone_id}")
def get_tunnel_zone(tunnel_zone_id: TunnelZoneId, store: Store) -> TunnelZone:
    return store.get(TunnelZone, oid("tunnel_zones", tunnel_zone_id))


@router.put("/tunnel_zones/{tunnel_zone_id}")
def update_tunnel_zone(
    tunnel_zone_id: TunnelZoneId, body: TunnelZoneUpdate, store: Store
) -> TunnelZone:
    """`hosts` is read-only: add and remove members through `/hosts`."""
    return store.update(TunnelZone, oid("tunnel_zones", tunnel_zone_id), sent(body))


@router.delete("/tunnel_zones/{tunnel_zone_id}", status_code=204)
def delete_tunnel_zone(tunnel_zone_id: TunnelZoneId, store: Store) -> None:
    store.delete(TunnelZone, oid("tunnel_zones", tunnel_zone_id))


def _member(zone_id: str, h: TunnelZoneHost) -> TunnelZoneMember:
    return TunnelZoneMember(tunnel_zone_id=zone_id, host_id=h.host_id, ip_address=h.ip_address)


@router.get("/tunnel_zones/{tunnel_zone_id}/hosts")
def list_tunnel_zone_hosts(tunnel_zone_id: TunnelZoneId, store: Store) -> list[TunnelZoneMember]:
    zone = oid("tunnel_zones", tunnel_zone_id)
    return [_member(zone, h) for h in store.tunnel_zone_hosts(zone)]


@router.post("/tunnel_zones/{tunnel_zone_id}/hosts", status_code=201)
def add_tunnel_zone_host(
    tunnel_zone_id: TunnelZoneId, body: TunnelZoneHost, store: Store
) -> TunnelZoneMember:
    """`ip_address` is the host's underlay address in this zone (unique in the zone)."""
    zone = oid("tunnel_zones", tunnel_zone_id)
    return _member(zone, store.add_tunnel_zone_host(zone, body))


@router.delete("/tunnel_zones/{tunnel_zone_id}/hosts/{host_id}", status_code=204)
def remove_tunnel_zone_host(tunnel_zone_id: TunnelZoneId, host_id: HostId, store: Store) -> None:
    store.remove_tunnel_zone_host(oid("tunnel_zones", tunnel_zone_id), oid("hosts", host_id))
