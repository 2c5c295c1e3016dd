"""The whole topology as one simulation `Snapshot`, read from the NSDB, for `POST /traces`.

It lives with its one caller, the API: the simulation is pure (it reads no database),
and an agent must never read the whole topology (it builds its snapshots from its
watch-fed cache with `Snapshot.from_objects`).
"""

from __future__ import annotations

from tessera.model import (
    Bridge,
    Chain,
    DhcpSubnet,
    IpAddrGroup,
    LoadBalancer,
    Mirror,
    Pool,
    PoolMember,
    Port,
    PortGroup,
    Route,
    Router,
    Rule,
    StoredObject,
    Vip,
)
from tessera.nsdb import tables
from tessera.nsdb.base import Nsdb
from tessera.packet.addr import ip_from_str, mac_from_str
from tessera.simulation.topology import Snapshot


def load_snapshot(nsdb: Nsdb) -> Snapshot:
    """Everything in the NSDB, with every bridge's MAC table and router's ARP table.

    For the trace API and tests: it reads the whole topology, which an agent must not do
    (it builds from its watch-fed cache with `Snapshot.from_objects`). Malformed state
    entries are skipped: they are written by agents, and one bad entry must not make the
    whole cloud untraceable.
    """
    kinds: tuple[type[StoredObject], ...] = (Bridge, Router, Port, Route, Chain, Rule)
    kinds += (PortGroup, IpAddrGroup, DhcpSubnet, Mirror)
    kinds += (LoadBalancer, Vip, Pool, PoolMember)
    objects: list[StoredObject] = []
    for cls in kinds:
        objects.extend(s.value for s in nsdb.list(cls.kind))
    mac_tables: dict[str, dict[tuple[int, int], str]] = {}
    arp_tables: dict[str, dict[int, tuple[int, float]]] = {}
    for obj in objects:
        if isinstance(obj, Bridge):
            macs: dict[tuple[int, int], str] = {}
            for key, value in nsdb.state_get(tables.mac_table(obj.id)).items():
                try:
                    m = tables.decode_mac(key, value)
                except ValueError:
                    continue
                macs[(m.vlan_id, mac_from_str(m.mac_addr))] = m.port_id
            mac_tables[obj.id] = macs
        elif isinstance(obj, Router):
            arps: dict[int, tuple[int, float]] = {}
            for key, value in nsdb.state_get(tables.arp_table(obj.id)).items():
                try:
                    a = tables.decode_arp(key, value)
                except (ValueError, KeyError):
                    continue
                arps[ip_from_str(a.ip_addr)] = (mac_from_str(a.mac_addr), a.expiry)
            arp_tables[obj.id] = arps
    return Snapshot.from_objects(objects, mac_tables, arp_tables)
