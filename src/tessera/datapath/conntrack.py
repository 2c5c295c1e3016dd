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
  such a flow), into a table of connections nobody answered yet; the first reply (not
  an RST) moves it to the table of answered ones, so a burst of new connections (a
  scan, a flood) evicts only its kind from its own bounded table, never an idle
  established connection;
- every hit (a commit of a tracked tuple, a reply finding it) marks the entry used now
  and ORs in the packet's TCP flags, so the agent can expire idle or closed connections;
  above the flags byte is what only the datapath can tell, the direction
  (`CT_F_UNREPLIED`: set when committed, cleared by the first reply; `CT_F_FIN_ORIG` /
  `CT_F_FIN_REPLY`: which side sent a FIN), so the agent expires connections nobody
  answered, or both ends closed, long before established ones (an entry the agent
  writes, or an older program committed, has none of them: taken for answered);
- an RST committed (sent by the side that started the connection) removes the entry at
  once, and never makes one: a burst of connections closed that way does not fill the
  table and push out idle established connections.
"""

from __future__ import annotations

import threading
import time
from typing import Final

from tessera.datapath.base import CtTuple, PacketKey
from tessera.packet.match import CT_REPLY, CT_TRACKED

__all__ = [
    "CT_DEFAULT_ENTRIES",
    "CT_LIMIT",
    "CT_NEW_ENTRIES",
    "CT_MIN_ENTRIES",
    "CT_F_FIN_ORIG",
    "CT_F_FIN_REPLY",
    "CT_F_UNREPLIED",
    "CT_REPLY",
    "CT_TRACKED",
    "ConnTable",
    "PythonConntrack",
    "check_ct_entries",
    "ct_state_of",
    "ct_tuple",
]

_IPV4: Final = 0x0800
_TCP, _UDP, _ICMP = 6, 17, 1
_FRAG_LATER: Final = 2
_ECHO: Final = (0, 8)
_FIN: Final = 0x01
_RST: Final = 0x04

# The connection table's size: by default (flow.h's CT_MAX_ENTRIES; Linux's
# nf_conntrack_max on this machine kind is the same), and the bounds an agent may ask for
# (`tessera agent --ct-entries`): the agent reads the whole table on every sweep (in
# steps, ~1 s of CPU per million connections) and the kernel preallocates it (~100
# bytes a connection).
CT_DEFAULT_ENTRIES: Final = 262144
# Connections nobody answered yet have a table of their own (flow.h's
# CT_NEW_MAX_ENTRIES): a burst of new ones evicts only its kind.
CT_NEW_ENTRIES: Final = 65536
CT_MIN_ENTRIES: Final = 1024
CT_LIMIT: Final = 4 * 1024 * 1024

# An entry's flags above the TCP flags byte (flow.h's CT_F_*).
CT_F_UNREPLIED: Final = 0x100
CT_F_FIN_ORIG: Final = 0x200
CT_F_FIN_REPLY: Final = 0x400


def check_ct_entries(entries: int) -> int:
    """`entries` if a connection table may have that size, else ValueError."""
    if not CT_MIN_ENTRIES <= entries <= CT_LIMIT:
        raise ValueError(
            f"a connection table of {entries} entries: use {CT_MIN_ENTRIES}..{CT_LIMIT}"
        )
    return entries


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
    seen = tcp_flags | (CT_F_FIN_REPLY if tcp_flags & _FIN else 0)
    return CT_TRACKED | CT_REPLY if table.hit(probe, seen, now) else CT_TRACKED


class ConnTable:
    """Zones by port and committed connections, for the Python datapaths.

    Thread-safe (the userspace datapath forwards on its own thread while the agent
    writes): one lock around the dicts. Two tables bounded like the kernel's LRU maps
    (at the bound the entry used longest ago goes): connections answered at least once
    (and those the agent writes), `max_entries`; those nobody answered yet,
    `new_max_entries`, from which the first reply moves a connection to the first.
    """

    def __init__(
        self, max_entries: int = CT_DEFAULT_ENTRIES, new_max_entries: int = CT_NEW_ENTRIES
    ) -> None:
        self.max_entries = max_entries
        self.new_max_entries = new_max_entries
        self._lock = threading.Lock()
        self.zones: dict[int, int] = {}
        self._entries: dict[CtTuple, list[float | int]] = {}  # [last_used, tcp_flags]
        self._new: dict[CtTuple, list[float | int]] = {}

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
        """A reply's lookup: whether `conn` is tracked; if so, mark it used now with
        `tcp_flags`, and answered: a reply that is not an RST moves an unanswered
        connection to the answered ones."""
        with self._lock:
            entry = self._entries.get(conn)
            if entry is not None:
                entry[0] = now
                entry[1] = (int(entry[1]) | tcp_flags) & ~CT_F_UNREPLIED
                return True
            entry = self._new.get(conn)
            if entry is None:
                return False
            entry[0] = now
            entry[1] = int(entry[1]) | tcp_flags
            if not tcp_flags & _RST:
                del self._new[conn]
                _put(self._entries, self.max_entries, conn, now, int(entry[1]) & ~CT_F_UNREPLIED)
            return True

    def commit(self, conn: CtTuple, tcp_flags: int, now: float) -> None:
        """Track `conn` as answered (the agent's write), used now, `tcp_flags` ORed in."""
        with self._lock:
            entry = self._entries.get(conn)
            if entry is not None:
                entry[0] = now
                entry[1] = int(entry[1]) | tcp_flags
                return
            _put(self._entries, self.max_entries, conn, now, tcp_flags)

    def commit_packet(self, key: PacketKey, zone: int, tcp_flags: int, now: float) -> None:
        """`CtCommit(zone)` run on a packet with full key `key`: a connection not yet
        tracked starts unanswered; an RST ends it (its entry goes, none is made); a
        FIN is noted as the originator's."""
        conn = ct_tuple(key, zone)
        if conn is None or not zone:
            return
        if tcp_flags & _RST:
            self.delete(conn)
            return
        flags = tcp_flags | (CT_F_FIN_ORIG if tcp_flags & _FIN else 0)
        with self._lock:
            entry = self._entries.get(conn) or self._new.get(conn)
            if entry is not None:
                entry[0] = now
                entry[1] = int(entry[1]) | flags
                return
            _put(self._new, self.new_max_entries, conn, now, flags | CT_F_UNREPLIED)

    def delete(self, conn: CtTuple) -> bool:
        with self._lock:
            answered = self._entries.pop(conn, None) is not None
            return self._new.pop(conn, None) is not None or answered

    def entries(self) -> dict[CtTuple, tuple[float, int]]:
        with self._lock:
            return {
                c: (float(e[0]), int(e[1]))
                for table in (self._new, self._entries)
                for c, e in table.items()
            }

    def __len__(self) -> int:
        return len(self._entries) + len(self._new)


def _put(
    table: dict[CtTuple, list[float | int]], bound: int, conn: CtTuple, now: float, flags: int
) -> None:
    """Add `conn` to `table`, evicting the entry used longest ago at `bound` (LRU)."""
    if len(table) >= bound:
        oldest = min(table, key=lambda c: table[c][0])
        del table[oldest]
    table[conn] = [now, flags]


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
