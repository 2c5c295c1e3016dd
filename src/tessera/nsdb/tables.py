"""The NSDB state tables: their names and the format of their entries, defined once.

State tables hold what agents learn or assert at run time, not what users configure:
learned MAC addresses per bridge, ARP entries per router, and host liveness. Entries are
small strings (the NSDB interface stores `str`), so each table has one encoder and one
decoder here; writers (agents) and readers (the API, the janitor, other agents) must use
them, never format entries themselves.

Keys are chosen so that one entry exists per thing learned: a MAC table is keyed by
`(vlan_id, mac)` (the same MAC may live in two VLANs of one bridge), an ARP table by IP
address, the liveness table by host id. Entries are written ephemeral by the agent that
learned them, so they vanish with its session (a dead agent's MACs must not keep
attracting traffic).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tessera.model.types import IPv4Addr, MacAddr, TesseraModel, Uuid, VlanId

HOST_LIVENESS = "hosts_alive"
"""key: host id; value: `LivenessEntry` JSON. Ephemeral, owned by the host's agent."""

_MAC_TABLE_PREFIX = "mac_table/"
_ARP_TABLE_PREFIX = "arp_table/"


def mac_table(bridge_id: str) -> str:
    """The name of a bridge's MAC table."""
    return f"{_MAC_TABLE_PREFIX}{bridge_id}"


def arp_table(router_id: str) -> str:
    """The name of a router's ARP table."""
    return f"{_ARP_TABLE_PREFIX}{router_id}"


class MacEntry(TesseraModel):
    """A MAC address learned on a bridge port (untagged traffic has `vlan_id` 0)."""

    vlan_id: VlanId
    mac_addr: MacAddr
    port_id: Uuid


class ArpEntry(TesseraModel):
    """A router's IP → MAC resolution; `expiry` is a Unix time in seconds."""

    ip_addr: IPv4Addr
    mac_addr: MacAddr
    expiry: float


@dataclass(frozen=True)
class LivenessEntry:
    """What an agent asserts about itself while its session lives."""

    name: str
    since: float  # Unix time of registration

    def encode(self) -> str:
        return json.dumps({"name": self.name, "since": self.since})


def mac_key(vlan_id: int, mac_addr: str) -> str:
    return f"{vlan_id}/{mac_addr.lower()}"


def encode_mac(entry: MacEntry) -> tuple[str, str]:
    """(key, value) of a MAC table entry: the value is the port id."""
    return mac_key(entry.vlan_id, entry.mac_addr), entry.port_id


def decode_mac(key: str, value: str) -> MacEntry:
    vlan, _, mac = key.partition("/")
    return MacEntry(vlan_id=int(vlan), mac_addr=mac, port_id=value)


def encode_arp(entry: ArpEntry) -> tuple[str, str]:
    """(key, value) of an ARP table entry: the key is the IP address."""
    return entry.ip_addr, json.dumps({"mac_addr": entry.mac_addr, "expiry": entry.expiry})


def decode_arp(key: str, value: str) -> ArpEntry:
    data: dict[str, Any] = json.loads(value)
    return ArpEntry(ip_addr=key, mac_addr=data["mac_addr"], expiry=float(data["expiry"]))


def decode_liveness(value: str) -> LivenessEntry:
    data: dict[str, Any] = json.loads(value)
    return LivenessEntry(name=str(data.get("name", "")), since=float(data.get("since", 0.0)))


# --- SNAT port blocks ----------------------------------------------------------------
# One table per external address; key: the block number (ports block*SIZE ..
# block*SIZE + SIZE - 1); value: `SnatLease` JSON. Created (never overwritten) ephemeral
# by the agent that leases the block, so two agents never hold one block and a dead
# agent's blocks return with its session.

_SNAT_TABLE_PREFIX = "snat_blocks/"
SNAT_BLOCK_SIZE = 64


def snat_table(ip_addr: str) -> str:
    """The name of the table of an external address's leased port blocks."""
    return f"{_SNAT_TABLE_PREFIX}{ip_addr}"


@dataclass(frozen=True)
class SnatLease:
    """Who holds a block: the leasing agent's host id and a token of its run (a
    restarted agent must not take its predecessor's leases for its own)."""

    host_id: str
    token: str
    since: float  # Unix time of the lease

    def encode(self) -> str:
        return json.dumps({"host_id": self.host_id, "token": self.token, "since": self.since})


def snat_key(block: int) -> str:
    return str(block)


def decode_snat(value: str) -> SnatLease:
    data: dict[str, Any] = json.loads(value)
    return SnatLease(str(data["host_id"]), str(data["token"]), float(data.get("since", 0.0)))
