"""The agent's side of connection tracking in the datapath (`tessera.datapath.conntrack`).

A new connection through a stateful rule used to cost a miss, whatever flows were
installed: the simulation's decision ("a reply of a tracked connection, or not") was
keyed on the connection's 5-tuple. The datapath now answers that question itself, per
packet, in the key's `ct_state`; this module keeps its answers the simulation's:

- **Zones.** A connection is tracked per device (MidoNet's key: a port's bridge or
  router, or its stateful port group). Every local port gets the zone of its device:
  a number derived from the device id (`zone_of`), the same after a restart, so the
  pinned table stays valid. Two devices of this host with one number (a 32-bit hash
  collision) leave the second without a zone: its connections are decided the old way.
- **Commits.** A result whose decision came from `ct_state` (`SimulationResult.ct_kernel`)
  and whose new connections no third host must see and no NAT rewrote gets them
  committed where their replies enter: `CtCommit` for a local egress port (in its
  zone), the commit bit on the tunnel to a remote one (the far datapath commits in its
  zone for the device, the same number there). Its flow then serves every new
  connection without the agent. Otherwise the flow is keyed on the 5-tuple after all
  (`stateful.KERNEL_TUPLE`) and the agent tracks the connection as before.
- **Mirror.** Connections the agent's own table holds (a peer's, whose replies enter
  here; one it could not commit in the datapath) are written to the datapath too, so
  that `ct_state` never contradicts the table, and age by the datapath's last use of
  them (a pseudo flow, `KernelConn`, in the table's flows of the entry).
- **Expiry.** Connections only the datapath holds expire at the agent's sweep (`idle`,
  then `delete` in batches), by the idle timeouts of the agent's own entries (shorter
  after a FIN or RST), and sooner by what only the datapath sees: a connection nobody
  answered (`UNREPLIED_TIMEOUT`) or that both ends closed (`CLOSED_TIMEOUT`). The
  table of answered connections is an LRU map: full, it evicts the connection used
  longest ago, possibly an idle established one whose next reply a firewall then
  drops. So once it is `PRESSURE` full, closed and reset connections go after
  `PRESSURE_TIMEOUT` (Linux's conntrack drops such ones early, too). The datapath
  itself keeps unanswered connections in a table of their own and removes a
  connection whose originator sent an RST at once.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tessera.agent.flowstate.entry import (
    DEFAULT_TIMEOUT,
    TCP_RST,
    TIMEOUTS,
    closing_timeout,
    tcp_state,
)
from tessera.agent.flowstate.report import key_json
from tessera.datapath.base import CtCommit, CtTuple, Datapath, DatapathError, key_of
from tessera.datapath.conntrack import CT_F_FIN_ORIG, CT_F_FIN_REPLY, CT_F_UNREPLIED, ct_tuple
from tessera.packet.ipv4 import PROTO_TCP
from tessera.packet.match import CT_REPLY, CT_TRACKED, Field, FlowMatch
from tessera.simulation.flowstate import ConnKey, ConntrackEntry, FlowStateEntry
from tessera.simulation.result import SimulationResult
from tessera.simulation.topology import Snapshot

log = logging.getLogger(__name__)

_CT_STATE = Field.CT_STATE
_IN_PORT = Field.IN_PORT
_CLOSED = CT_F_FIN_ORIG | CT_F_FIN_REPLY

# A connection nobody answered: a scan, a SYN to a silent address, a UDP datagram
# into the void (Linux: 30 s for UDP, 120 s for SYN_SENT; a SYN retransmitted
# keeps its entry fresh).
UNREPLIED_TIMEOUT = 30.0
# Both ends sent a FIN: what is left are the last ACK and retransmissions.
CLOSED_TIMEOUT = 10.0
# The table this full: unanswered, closed and reset connections go once idle this
# long, before the LRU map evicts established ones.
PRESSURE = 0.75
PRESSURE_TIMEOUT = 1.0


def zone_of(device_id: str) -> int:
    """The conntrack zone of a device: never 0 (no zone), the same on every start."""
    return zlib.crc32(device_id.encode()) or 1


@dataclass(frozen=True, slots=True)
class KernelConn:
    """A connection held in the datapath, as a pseudo flow of the agent's entry: the
    entry is alive while the datapath sees the connection's packets."""

    conn: CtTuple


class KernelConntrack:
    def __init__(self, datapath: Datapath) -> None:
        self.dp = datapath
        self.port_zone: dict[int, int] = {}  # what the datapath holds, zones != 0
        self.device_zone: dict[str, int] = {}  # devices of local ports (0: collision)
        self.mirrored: dict[CtTuple, ConnKey] = {}  # the agent's entries, in the datapath
        self._conn_of: dict[ConnKey, CtTuple] = {}
        self.expired = 0  # datapath-only connections removed by `sweep`
        self.answered = self.unanswered = 0  # the datapath's, as the last `idle` counted

    def adopt(self) -> None:
        """The zones a previous agent left (the datapath's own table stays valid)."""
        self.port_zone = dict(self.dp.port_zones())

    # -- zones ----------------------------------------------------------------------------

    def sync(self, snap: Snapshot, ports: Mapping[str, int]) -> list[str]:
        """Give each local port (`ports`: port id -> number) the zone of its device in
        `snap`; returns the devices that got a zone just now (their connections in the
        agent's table are to be written to the datapath: `ConnTable.mirror_devices`)."""
        device_zone: dict[str, int] = {}
        taken: dict[int, str] = {}
        want: dict[int, int] = {}
        for port_id, number in sorted(ports.items()):
            port = snap.ports.get(port_id)
            if port is None:
                continue  # not loaded yet: no zone, decided the old way
            device = snap.conn_device(port)
            zone = device_zone.get(device)
            if zone is None:
                zone = zone_of(device)
                if zone in taken:
                    log.warning(
                        "devices %s and %s share conntrack zone %d here: connections "
                        "of %s are tracked by the agent only", taken[zone], device, zone,
                        device,
                    )  # fmt: skip
                    zone = 0
                else:
                    taken[zone] = device
                device_zone[device] = zone
            if zone:
                want[number] = zone
        for number, zone in want.items():
            if self.port_zone.get(number) != zone:
                self._set(number, zone)
        for number in [n for n in self.port_zone if n not in want]:
            self._set(number, 0)
        new = [d for d, z in device_zone.items() if z and self.device_zone.get(d) != z]
        self.device_zone = device_zone
        return new

    def _set(self, number: int, zone: int) -> None:
        try:
            self.dp.set_port_zone(number, zone)
        except DatapathError as exc:
            log.warning("%s", exc)
            self.port_zone.pop(number, None)
            return
        if zone:
            self.port_zone[number] = zone
        else:
            self.port_zone.pop(number, None)

    def zone(self, device: str) -> int:
        return self.device_zone.get(device, 0)

    # -- the simulation's results ---------------------------------------------------------

    def commits(
        self,
        result: SimulationResult,
        shared: bool,
        local_ports: Sequence[int] = (),
        remote: bool = False,
    ) -> list[CtCommit] | None:
        """The `CtCommit` actions that track `result`'s new connections in this
        datapath, None when the agent must track them itself (and key the flow on the
        5-tuple): a peer other than the egress hosts must see them (`shared`: a
        stateful port group's members), NAT changed their tuple, one is no plain
        connection, or a local egress port (`local_ports`, by number) has no zone
        here that they are committed in.

        A connection is committed where its replies enter: here, in the zone of a local
        egress port; and with `remote` (the egress ports on other hosts are reached by
        tunnels that commit there, `OutputTunnel.commit`), by the far host, in its zone
        for the connection's device (`zone_of`, the same number on every host). The
        list is then empty, not None, when every egress port is on another host."""
        if shared or not result.flow_state:
            return None
        arrived = key_of(0, result.match)  # what the datapath commits: the arrival tuple
        here = {self.port_zone.get(n, 0) for n in local_ports}
        if 0 in here:
            return None  # a local egress port without a zone: its replies untracked
        zones: dict[int, None] = {}
        for entry in result.flow_state:
            if not isinstance(entry, ConntrackEntry):
                return None
            k = entry.key
            zone = zone_of(k.device)
            if zone in here:
                if self.device_zone.get(k.device) != zone:
                    return None  # another device of this host has that number
                zones[zone] = None
            elif not remote:
                return None
            conn = (zone, k.proto, k.src, k.dst, k.sport, k.dport)
            if ct_tuple(arrived, zone) != conn:
                return None
        if not here <= zones.keys():
            return None  # a local egress port's replies would find nothing committed
        return [CtCommit(z) for z in zones]

    def reply_state(self, result: SimulationResult, port_zone: int) -> int:
        """The ct_state the reply to `result`'s packet will have, entering a port of
        `port_zone` (for predicting its flow): a reply if `result` tracks its connection
        in that zone."""
        if not port_zone:
            return 0
        for entry in result.flow_state:
            if isinstance(entry, ConntrackEntry) and self.zone(entry.key.device) == port_zone:
                return CT_TRACKED | CT_REPLY
        return CT_TRACKED

    def refresh(self, port: int, match: FlowMatch, frame: bytes) -> FlowMatch:
        """`match` (of a packet that missed on local port `port`, not yet read), or the
        same packet with `CT_REPLY` if the datapath said "new" but now holds the
        connection it answers: state a peer sent, that the agent installed after the
        packet was looked up."""
        if match.peek(_CT_STATE)[0] != CT_TRACKED:
            return match
        zone = self.port_zone.get(port)
        if not zone or ct_tuple(key_of(port, match), zone, reversed_=True) not in self.mirrored:
            return match
        return FlowMatch.from_frame(match.peek(_IN_PORT)[0], frame, CT_TRACKED | CT_REPLY)

    # -- the agent's own entries ----------------------------------------------------------

    def mirror(self, key: ConnKey) -> KernelConn | None:
        """Write the agent's entry `key` to the datapath (if its device has a zone here);
        the pseudo flow that keeps the entry alive while the datapath uses it."""
        zone = self.device_zone.get(key.device, 0)
        if not zone:
            return None
        conn = (zone, key.proto, key.src, key.dst, key.sport, key.dport)
        try:
            self.dp.ct_commit(conn)
        except DatapathError as exc:
            log.warning("%s", exc)
            return None
        old = self._conn_of.get(key)
        if old is not None and old != conn:  # its device moved to another zone
            self.mirrored.pop(old, None)
        self.mirrored[conn] = key
        self._conn_of[key] = conn
        return KernelConn(conn)

    def removed(self, entry: FlowStateEntry) -> None:
        """The agent's table dropped `entry`: so does the datapath."""
        if not isinstance(entry, ConntrackEntry):
            return
        conn = self._conn_of.pop(entry.key, None)
        if conn is None:
            return
        self.mirrored.pop(conn, None)
        try:
            self.dp.ct_delete(conn)
        except (DatapathError, OSError) as exc:
            log.debug("conntrack entry %s not removed: %s", conn, exc)

    # -- expiry ---------------------------------------------------------------------------

    def idle(
        self, now: float, entries: Mapping[CtTuple, tuple[float, int]], capacity: int = 0
    ) -> list[CtTuple]:
        """The datapath's own connections idle past their timeout (the agent's
        mirrored entries are its table's to decide); with the table of answered
        connections (`capacity` entries) `PRESSURE` full, disposable ones past
        `PRESSURE_TIMEOUT` too. Counts both tables' connections (`answered`,
        `unanswered`) on the way."""
        mirrored = self.mirrored
        self.unanswered = sum(1 for _, flags in entries.values() if flags & CT_F_UNREPLIED)
        self.answered = len(entries) - self.unanswered
        pressed = bool(capacity) and self.answered >= PRESSURE * capacity
        return [
            conn
            for conn, (last, flags) in entries.items()
            if conn not in mirrored and now - last > _timeout(conn[1], flags, pressed)
        ]

    def delete(self, conns: Sequence[CtTuple]) -> int:
        """Remove `conns` from the datapath (batch calls); how many were there. One the
        agent's table took over since `idle` listed it (a peer's entry for that tuple)
        stays: the sweep deletes in steps, misses between."""
        mirrored = self.mirrored
        conns = [c for c in conns if c not in mirrored]
        if not conns:
            return 0
        try:
            gone = self.dp.ct_delete_many(conns)
        except (DatapathError, OSError) as exc:
            log.warning("%d idle connections not removed: %s", len(conns), exc)
            return 0
        self.expired += gone
        return gone

    def report(
        self, now: float, entries: Mapping[CtTuple, tuple[float, int]]
    ) -> list[dict[str, Any]]:
        """`tessera conntrack` rows (`flowstate.report`'s shape) of the connections only
        the datapath holds: those it committed itself."""
        device_of = {z: d for d, z in self.device_zone.items() if z}
        rows: list[dict[str, Any]] = []
        for conn, (last, flags) in sorted(entries.items(), key=lambda item: item[1][0]):
            if conn in self.mirrored:
                continue  # listed with the agent's entries
            zone, proto, src, dst, sport, dport = conn
            device = device_of.get(zone, f"zone {zone}")
            key = ConnKey(proto, src, dst, sport, dport, device)
            timeout = _timeout(proto, flags)
            idle = max(0.0, now - last)
            rows.append(
                {
                    "kind": "conntrack",
                    "zone": device,
                    "forward": key_json(key),
                    "return": key_json(key.reversed()),
                    "nat": None,
                    "state": datapath_state(proto, flags),
                    "tcp_flags": flags,
                    "origin": None,
                    "shared_with": [],
                    "timeout": timeout,
                    "idle": idle,
                    "expires_in": max(0.0, timeout - idle),
                    "flows": 0,
                    "datapath": True,  # committed by a flow: the agent never saw it
                }
            )
        return rows


def _timeout(proto: int, flags: int, pressed: bool = False) -> float:
    """The idle timeout of a connection the datapath committed: the agent's entries'
    (shorter after a FIN or RST), shorter still when nobody answered it or both ends
    closed it, and `PRESSURE_TIMEOUT` for those and reset ones when `pressed`."""
    timeout = TIMEOUTS.get(proto, DEFAULT_TIMEOUT)
    unreplied = bool(flags & CT_F_UNREPLIED)
    closed = proto == PROTO_TCP and flags & _CLOSED == _CLOSED
    reset = proto == PROTO_TCP and bool(flags & TCP_RST)
    if unreplied:
        timeout = min(timeout, UNREPLIED_TIMEOUT)
    if proto == PROTO_TCP:
        short = closing_timeout(flags)
        if short is not None:
            timeout = min(timeout, short)
    if closed:
        timeout = min(timeout, CLOSED_TIMEOUT)
    if pressed and (unreplied or closed or reset):
        timeout = min(timeout, PRESSURE_TIMEOUT)
    return timeout


def datapath_state(proto: int, flags: int) -> str:
    """`tessera conntrack`'s state of a connection the datapath committed: the agent
    entries' states, and what only the datapath tells ("unreplied", "closed")."""
    state = tcp_state(proto, flags)
    if state == "reset":
        return state
    if flags & CT_F_UNREPLIED:
        return "unreplied"
    if proto == PROTO_TCP and flags & _CLOSED == _CLOSED:
        return "closed"
    return state
