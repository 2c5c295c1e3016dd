"""Connection tracking in the datapath: what the kernel's ``conntrack`` map does, in Python.

Without it every new connection through a stateful rule is a miss: the simulation keys
its decision ("a reply of a tracked connection, or not") on the connection's 5-tuple,
so each connection needs a megaflow of its own. With it the datapath itself answers the
question before the flow lookup and puts the answer in the key (`ct_state`), as OVS's
``ct()`` does: a flow keyed on ``ct_state`` instead of the ports serves every
connection, and a flow whose packets start connections commits them (`CtCommit`), so a
new connection through flows that exist costs no miss at all.

The model, shared by every backend (the eBPF program in ``tessera_dp.c``, and
`ConnTable` here for the fake and userspace datapaths; the kernel-vs-Python tests hold
them equal):

- a *zone* is the agent's number for the device that tracks connections (the bridge
  or router of a port, MidoNet's connection-tracking key); a port with zone z has its
  packets looked up in z, a port with zone 0 never (its packets' ct_state is 0);
- a packet *has a connection* when it is IPv4 TCP or UDP (not a later fragment) or an
  ICMP echo request or reply, whose identifier stands for both ports;
- its ct_state is `CT_TRACKED` when its port has a zone and it has a connection, plus
  `CT_REPLY` when the reversed tuple (dst, src, dport, sport) is committed in that zone;
- `CtCommit(zone)` commits the packet's own tuple, *as it arrived* (a flow rewriting
  addresses or ports before it would commit the wrong one: the agent never installs
  such a flow);
- every hit (a commit of a tracked tuple, a reply finding it) marks the entry used now
  and ORs in the packet's TCP flags, so the agent can expire idle or closed connections.
"""

from __future__ import annotations

import threading
import time
from typing import Final

from tessera.datapath.base import CtTuple, PacketKey
from tessera.packet.match import CT_REPLY, CT_TRACKED

__all__ = ["CT_REPLY", "CT_TRACKED", "ConnTable", "PythonConntrack", "ct_state_of", "ct_tuple"]

_IPV4: Final = 0x0800
_TCP, _UDP, _ICMP = 6, 17, 1
_FRAG_LATER: Final = 2
_ECHO: Final = (0, 8)


def ct_tuple(key: PacketKey, zone: int, *, reversed_: bool = False) -> CtTuple | None:
    """The connection of a packet with full key `key`, in `zone` (reversed: as its
    reply carries it); None when the packet has no connection."""
    if key[4] != _IPV4 or key[10] == _FRAG_LATER:
        return None
    proto = key[7]
    if proto in (_TCP, _UDP):
        sport, dport = key[11], key[12]
    elif proto == _ICMP and key[11] in _ECHO:
        sport = dport = key[13]
    else:
        return None
    if reversed_:
        return (zone, proto, key[6], key[5], dport, sport)
    return (zone, proto, key[5], key[6], sport, dport)


def ct_state_of(key: PacketKey, zone: int, table: ConnTable, tcp_flags: int, now: float) -> int:
    """The ct_state of a packet entering a port of `zone` (0: no zone)."""
    if not zone:
        return 0
    probe = ct_tuple(key, zone, reversed_=True)
    if probe is None:
        return 0
    return CT_TRACKED | CT_REPLY if table.hit(probe, tcp_flags, now) else CT_TRACKED


class ConnTable:
    """Zones by port and committed connections, for the Python datapaths.

    Thread-safe (the userspace datapath forwards on its own thread while the agent
    writes): one lock around the dicts. Bounded like the kernel's LRU map: at
    `max_entries` the entry used longest ago goes.
    """

    def __init__(self, max_entries: int = 65536) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self.zones: dict[int, int] = {}
        self._entries: dict[CtTuple, list[float | int]] = {}  # [last_used, tcp_flags]

    def zone(self, port: int) -> int:
        return self.zones.get(port, 0)

    def set_zone(self, port: int, zone: int) -> None:
        if not 0 <= zone < 1 << 32:
            raise ValueError(f"conntrack zone {zone} is out of 0..2^32-1")
        with self._lock:
            if zone:
                self.zones[port] = zone
            else:
                self.zones.pop(port, None)

    def hit(self, conn: CtTuple, tcp_flags: int, now: float) -> bool:
        """Whether `conn` is tracked; if so, mark it used now with `tcp_flags`."""
        with self._lock:
            entry = self._entries.get(conn)
            if entry is None:
                return False
            entry[0] = now
            entry[1] = int(entry[1]) | tcp_flags
            return True

    def commit(self, conn: CtTuple, tcp_flags: int, now: float) -> None:
        with self._lock:
            entry = self._entries.get(conn)
            if entry is not None:
                entry[0] = now
                entry[1] = int(entry[1]) | tcp_flags
                return
            if len(self._entries) >= self.max_entries:
                oldest = min(self._entries, key=lambda c: self._entries[c][0])
                del self._entries[oldest]
            self._entries[conn] = [now, tcp_flags]

    def commit_packet(self, key: PacketKey, zone: int, tcp_flags: int, now: float) -> None:
        """`CtCommit(zone)` run on a packet with full key `key`."""
        conn = ct_tuple(key, zone)
        if conn is not None and zone:
            self.commit(conn, tcp_flags, now)

    def delete(self, conn: CtTuple) -> bool:
        with self._lock:
            return self._entries.pop(conn, None) is not None

    def entries(self) -> dict[CtTuple, tuple[float, int]]:
        with self._lock:
            return {c: (float(e[0]), int(e[1])) for c, e in self._entries.items()}

    def __len__(self) -> int:
        return len(self._entries)


class PythonConntrack:
    """The connection-tracking methods of `tessera.datapath.base.Datapath` for a
    datapath whose table is a `ConnTable` in Python (the fake and userspace ones)."""

    conntrack: ConnTable

    def ct_clock(self) -> float:
        """The clock of the table's last-used times (the datapath's own)."""
        return time.monotonic()

    def ct_capacity(self) -> int:
        return self.conntrack.max_entries

    def set_port_zone(self, port: int, zone: int) -> None:
        self.conntrack.set_zone(port, zone)

    def port_zones(self) -> dict[int, int]:
        return dict(self.conntrack.zones)

    def ct_commit(self, conn: CtTuple, tcp_flags: int = 0) -> None:
        self.conntrack.commit(conn, tcp_flags, self.ct_clock())

    def ct_delete(self, conn: CtTuple) -> bool:
        return self.conntrack.delete(conn)

    def ct_entries(self) -> dict[CtTuple, tuple[float, int]]:
        return self.conntrack.entries()
