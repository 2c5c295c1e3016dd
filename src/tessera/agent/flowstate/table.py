"""The agent's connection table: forward and return lookups, expiry, tags.

An entry is found by its forward key (a later packet of the same direction) and by its
return key (a reply, possibly NATed). It expires after `expiry` seconds of idleness, but
idleness is judged like a flow's (`agent.lifecycle.sweep`): from the datapath's last-used
time of every kernel flow that carries the connection, because once those flows are
installed the agent never sees the connection's packets again. A connection forwarding
in the kernel therefore never expires; one whose flows all went idle does.

TCP FIN or RST shortens an entry's timeout (`note_tcp_flags`), as Linux conntrack's
CLOSE/TIME_WAIT do: a closed connection's key is free again soon.

Removing an entry returns the tags of both its keys (`simulation.tags.conn_tag`): flows
whose simulation looked the connection up must be simulated again.

Pure and thread-safe: time is passed in, one lock guards the maps (the agent thread
writes; the control socket and the flow-state receiver read or hand in entries).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field, replace

from tessera.agent.flowstate.entry import PROTO_ICMP, PROTO_TCP, PROTO_UDP, ConnKey, StateEntry
from tessera.simulation.tags import conn_tag

# Idle timeouts by protocol (seconds), the defaults an adapter uses for new entries.
TIMEOUTS: dict[int, float] = {PROTO_TCP: 600.0, PROTO_UDP: 60.0, PROTO_ICMP: 30.0}
DEFAULT_TIMEOUT = 60.0
TCP_CLOSING_TIMEOUT = 10.0  # after FIN or RST

TCP_FIN = 0x01
TCP_RST = 0x04

LastUsed = Callable[[Hashable], float | None]


def default_timeout(proto: int) -> float:
    return TIMEOUTS.get(proto, DEFAULT_TIMEOUT)


def key_tag(key: ConnKey) -> str:
    return conn_tag(key.zone, key.proto, key.src_ip, key.dst_ip, key.src_port, key.dst_port)


@dataclass
class Tracked:
    """An entry as the table holds it: its timeout may shrink, its activity moves."""

    entry: StateEntry
    last_seen: float
    timeout: float
    flows: set[Hashable] = field(default_factory=set)

    def tags(self) -> set[str]:
        return {key_tag(self.entry.key), key_tag(self.entry.return_key())}


class ConnTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[ConnKey, Tracked] = {}
        self._by_return: dict[ConnKey, ConnKey] = {}  # return key → forward key

    def __len__(self) -> int:
        return len(self._by_key)

    # -- writes -------------------------------------------------------------------------

    def add(self, entry: StateEntry, now: float, flows: Iterable[Hashable] = ()) -> set[str]:
        """Hold `entry` (replacing one of the same key); returns the tags to invalidate:
        flows simulated while the key was unknown took the forward-flow path."""
        with self._lock:
            tags: set[str] = set()
            old = self._by_key.get(entry.key)
            kept_flows: set[Hashable] = set()
            if old is not None:
                tags |= self._drop(entry.key)
                kept_flows = old.flows
            rkey = entry.return_key()
            clash = self._by_return.get(rkey)
            if clash is not None:  # another connection's reply looked the same: ours now
                tags |= self._drop(clash)
            tracked = Tracked(entry, now, entry.expiry, kept_flows | set(flows))
            self._by_key[entry.key] = tracked
            self._by_return[rkey] = entry.key
            return tags | tracked.tags()

    def remove(self, key: ConnKey) -> set[str]:
        """Forget the entry of forward key `key`; the tags to invalidate (none if absent)."""
        with self._lock:
            return self._drop(key)

    def attach_flow(self, key: ConnKey, match: Hashable) -> bool:
        """Note a kernel flow that carries the connection (either direction)."""
        with self._lock:
            tracked = self._find(key)
            if tracked is None:
                return False
            tracked.flows.add(match)
            return True

    def detach_flow(self, match: Hashable) -> None:
        """A flow was removed: it no longer keeps anything alive."""
        with self._lock:
            for tracked in self._by_key.values():
                tracked.flows.discard(match)

    def touch(self, key: ConnKey, now: float) -> None:
        """A packet of the connection was seen (a miss, a userspace packet)."""
        with self._lock:
            tracked = self._find(key)
            if tracked is not None:
                tracked.last_seen = max(tracked.last_seen, now)

    def shorten(self, key: ConnKey, timeout: float) -> bool:
        """Lower the entry's idle timeout to `timeout` (never raises it)."""
        with self._lock:
            tracked = self._find(key)
            if tracked is None:
                return False
            tracked.timeout = min(tracked.timeout, timeout)
            return True

    def note_tcp_flags(self, key: ConnKey, flags: int, now: float) -> None:
        """A TCP segment of the connection: FIN or RST starts its short goodbye."""
        self.touch(key, now)
        if flags & (TCP_FIN | TCP_RST):
            self.shorten(key, TCP_CLOSING_TIMEOUT)

    def sweep(self, now: float, last_used: LastUsed) -> set[str]:
        """Remove entries idle longer than their timeout, where idle counts from the
        later of the agent's last sight and the last use of any flow carrying them
        (`last_used(match)`: None when the flow is not installed). Returns the tags of
        what was removed."""
        with self._lock:
            expired: list[ConnKey] = []
            for key, tracked in self._by_key.items():
                last = tracked.last_seen
                for match in tracked.flows:
                    used = last_used(match)
                    if used is not None and used > last:
                        last = used
                if now - last > tracked.timeout:
                    expired.append(key)
            tags: set[str] = set()
            for key in expired:
                tags |= self._drop(key)
            return tags

    def clear(self) -> None:
        with self._lock:
            self._by_key.clear()
            self._by_return.clear()

    # -- reads --------------------------------------------------------------------------

    def lookup(self, key: ConnKey) -> StateEntry | None:
        """The entry whose forward key is `key`: a later packet of the first direction."""
        with self._lock:
            tracked = self._by_key.get(key)
            return tracked.entry if tracked is not None else None

    def lookup_return(self, key: ConnKey) -> StateEntry | None:
        """The entry `key` is the return traffic of (after NAT, if the entry is NAT)."""
        with self._lock:
            forward = self._by_return.get(key)
            return self._by_key[forward].entry if forward is not None else None

    def snapshot(self) -> list[Tracked]:
        """Copies, for reports and persistence (readers never see the live records)."""
        with self._lock:
            return [replace(t, flows=set(t.flows)) for t in self._by_key.values()]

    # -- internals (lock held) ----------------------------------------------------------

    def _find(self, key: ConnKey) -> Tracked | None:
        tracked = self._by_key.get(key)
        if tracked is None:
            forward = self._by_return.get(key)
            tracked = self._by_key.get(forward) if forward is not None else None
        return tracked

    def _drop(self, key: ConnKey) -> set[str]:
        tracked = self._by_key.pop(key, None)
        if tracked is None:
            return set()
        rkey = tracked.entry.return_key()
        if self._by_return.get(rkey) == key:
            del self._by_return[rkey]
        return tracked.tags()
