"""A megaflow table in Python: tuple-space search, as the kernel program does it.

One hash table per distinct mask, scanned in the order the masks first appeared; the
first hit wins. Lookups take no lock: they read an immutable tuple of (mask, getter,
table) that writers replace whole, so the forwarding thread of the userspace datapath
never waits for the agent installing a flow.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from tessera.datapath.base import (
    Flow,
    FlowStats,
    InstalledFlow,
    Match,
    Output,
    PacketKey,
    masked_getter,
    packet_key,
)
from tessera.datapath.conntrack import ConnTable, ct_state_of
from tessera.datapath.frames import Execution, run_actions, tcp_flags
from tessera.packet.errors import PacketError


@dataclass(slots=True)
class Entry:
    flow: Flow
    packets: int = 0
    bytes: int = 0
    last_used: float | None = None
    tcp_flags: int = 0

    def hit(self, nbytes: int, now: float, tcp_flags: int = 0) -> None:
        # Counters are best effort under concurrency, as the kernel's are per CPU.
        self.packets += 1
        self.bytes += nbytes
        self.last_used = now
        self.tcp_flags |= tcp_flags

    def stats(self) -> FlowStats:
        return FlowStats(self.packets, self.bytes, self.last_used, self.tcp_flags)


_Table = tuple[int, Callable[[PacketKey], PacketKey], dict[PacketKey, Entry]]


class MegaflowTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flows: dict[Match, Entry] = {}
        self._tables: tuple[_Table, ...] = ()
        self.conntrack = ConnTable()

    def __len__(self) -> int:
        return len(self._flows)

    def install(self, flow: Flow) -> None:
        """Add `flow`; a flow with the same match gets the new actions and keeps its
        counters (`Datapath.install`)."""
        with self._lock:
            old = self._flows.get(flow.match)
            if old is not None:
                old.flow = flow  # one attribute write: a lookup sees old or new actions
                return
            entry = Entry(flow)
            self._flows[flow.match] = entry
            for mask, _get, table in self._tables:
                if mask == flow.match.mask:
                    table[flow.match.masked()] = entry
                    return
            table = {flow.match.masked(): entry}
            self._tables = (*self._tables, (flow.match.mask, masked_getter(flow.match.mask), table))

    def delete(self, match: Match) -> bool:
        with self._lock:
            if self._flows.pop(match, None) is None:
                return False
            for mask, _get, table in self._tables:
                if mask == match.mask:
                    table.pop(match.masked(), None)
                    if not table:
                        self._tables = tuple(t for t in self._tables if t[0] != mask)
                    break
            return True

    def delete_outputs_to(self, port: int) -> int:
        """Delete every flow with an `Output(port)` (the port is going); how many."""
        with self._lock:
            doomed = [
                m
                for m, e in self._flows.items()
                if any(isinstance(a, Output) and a.port == port for a in e.flow.actions)
            ]
        return sum(1 for m in doomed if self.delete(m))

    def lookup(self, key: PacketKey) -> Entry | None:
        for _mask, get, table in self._tables:
            entry = table.get(get(key))
            if entry is not None:
                return entry
        return None

    def forward(self, port: int, frame: bytes, now: float) -> tuple[Execution | None, int]:
        """Run the flow `frame` hits (counting the hit): (what it did, None on a miss,
        including a frame too malformed to have a key; the packet's ct_state, which a
        miss hands to the agent). Connection tracking as the kernel program does it:
        looked up before the flow, committed by the flow's `CtCommit` actions."""
        try:
            key = packet_key(port, frame)
        except PacketError:
            return None, 0
        flags = tcp_flags(frame)
        ct_state = 0
        zone = self.conntrack.zones.get(port, 0)
        if zone:
            ct_state = ct_state_of(key, zone, self.conntrack, flags, now)
            if ct_state:
                key = (*key[:-1], ct_state)
        entry = self.lookup(key)
        if entry is None:
            return None, ct_state
        entry.hit(len(frame), now, flags)
        result = run_actions(frame, entry.flow.actions)
        for commit_zone in result.commits:
            self.conntrack.commit_packet(key, commit_zone, flags, now)
        return result, ct_state

    def tunnel_commit(self, port: int, frame: bytes, now: float) -> None:
        """A tunnelled frame for local port `port` that its sender asked to commit
        (`OutputTunnel.commit`): its connection, as it arrives, in the port's zone,
        as the kernel program's tunnel_rx does it. Nothing without a zone."""
        zone = self.conntrack.zones.get(port, 0)
        if not zone:
            return
        try:
            key = packet_key(port, frame)
        except PacketError:
            return
        self.conntrack.commit_packet(key, zone, tcp_flags(frame), now)

    def stats(self, match: Match) -> FlowStats | None:
        entry = self._flows.get(match)
        return entry.stats() if entry is not None else None

    def dump(self) -> dict[Match, InstalledFlow]:
        return {e.flow.match: InstalledFlow(e.flow, e.stats()) for e in self.entries()}

    def entries(self) -> list[Entry]:
        """The installed entries now (their counters read later, as a stepped dump
        reads them)."""
        with self._lock:
            return list(self._flows.values())
