"""Announcing this host to the cluster: liveness, addresses, tunnel zone membership.

The liveness entry is ephemeral, owned by the agent's NSDB session, so a crashed agent
reads as dead without anyone cleaning up; a clean stop also says so at once.
"""

from __future__ import annotations

import logging

from tessera.model import TunnelZone, TunnelZoneHost
from tessera.nsdb.errors import AlreadyExists, NotFound, NsdbError
from tessera.nsdb.store.topology import TopologyStore

log = logging.getLogger(__name__)


class RegistrationError(Exception):
    """Registration failed; the message is for humans."""


def register(store: TopologyStore, host_id: str, name: str, underlay_ip: str | None) -> None:
    try:
        store.register_host(host_id, name, [underlay_ip] if underlay_ip else [])
    except NsdbError as exc:
        raise RegistrationError(f"cannot register host {host_id}: {exc}") from None


def join_tunnel_zone(store: TopologyStore, zone_id: str, host_id: str, ip: str) -> None:
    """Be a member of `zone_id` with address `ip` (replacing another address of ours)."""
    try:
        zone = store.get(TunnelZone, zone_id)
    except NotFound:
        raise RegistrationError(f"tunnel zone {zone_id} does not exist") from None
    except NsdbError as exc:
        raise RegistrationError(f"cannot read tunnel zone {zone_id}: {exc}") from None
    for member in zone.hosts:
        if member.host_id == host_id:
            if member.ip_address == ip:
                return
            store.remove_tunnel_zone_host(zone_id, host_id)
    try:
        store.add_tunnel_zone_host(zone_id, TunnelZoneHost(host_id=host_id, ip_address=ip))
    except AlreadyExists:
        pass  # a concurrent registration of ours got there first
    except NsdbError as exc:
        raise RegistrationError(f"cannot join tunnel zone {zone_id}: {exc}") from None


def unregister(store: TopologyStore, host_id: str) -> None:
    try:
        store.unregister_host(host_id)
    except NsdbError as exc:
        log.warning("could not mark host %s dead: %s", host_id, exc)
