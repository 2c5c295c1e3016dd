"""The agent's connection table: the simulation's entries, expiry, tags, and the view.

Entries are the simulation's own `ConntrackEntry` and `NatEntry`, held by their keys. The
table keeps the two dicts a simulation reads (tracked connections; NAT bindings) live,
and `view` wraps them once in a `FlowStateView`: a simulation reads the table through
it with no copy per miss (a key added by the receiver thread is visible at once; `in`
and `get` on a dict are atomic).

An entry expires after its idle timeout, but idleness is judged like a flow's
(`agent.lifecycle.sweep`): from the datapath's last-used time of every kernel flow that
read or created it, because once those flows are installed the agent never sees the
connection's packets again. A connection forwarding in the kernel therefore never
expires; one whose flows all went idle does. TCP FIN or RST shortens the timeout
(`note_tcp_flags`), as Linux conntrack's CLOSE/TIME_WAIT do.

Adding or removing an entry returns its tag (`entry.tag_of`, the simulation's
`conntrack_tag`/`nat_tag`): exactly the flows that looked that key up, found or not.

Thread-safe: one lock guards writes (the agent thread installs and sweeps, the receiver
thread hands in peers' entries, the control socket reads snapshots).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from tessera.agent.flowstate.entry import StateKey, default_timeout, tag_of
from tessera.simulation.flowstate import (
    ConnKey,
    FlowStateEntry,
    FlowStateView,
    NatBinding,
    NatEntry,
    NatKey,
)

TCP_CLOSING_TIMEOUT = 10.0  # after FIN or RST

TCP_FIN = 0x01
TCP_RST = 0x04

LastUsed = Callable[[Hashable], float | None]


@dataclass
class Tracked:
    """An entry as the table holds it: its timeout may shrink, its activity moves."""

    entry: FlowStateEntry
    created: float
    last_seen: float
    timeout: float
    flows: set[Hashable] = field(default_factory=set)

    def tag(self) -> str:
        return tag_of(self.entry.key)


class ConnTable:
    def __init__(self, on_remove: Callable[[FlowStateEntry], None] | None = None) -> None:
        """`on_remove` is told of every entry that leaves (the SNAT port it held is free)."""
        self._lock = threading.Lock()
        self._entries: dict[StateKey, Tracked] = {}
        self._conns: dict[ConnKey, None] = {}
        self._bindings: dict[NatKey, NatBinding] = {}
        self._by_flow: dict[Hashable, set[StateKey]] = {}  # flow match -> keys it carries
        self.on_remove = on_remove
        self.view = FlowStateView(self._conns.keys(), MappingProxyType(self._bindings))

    def __len__(self) -> int:
        return len(self._entries)

    # -- writes -------------------------------------------------------------------------

    def add(
        self,
        entry: FlowStateEntry,
        now: float,
        flows: Iterable[Hashable] = (),
        timeout: float | None = None,
    ) -> set[str]:
        """Hold `entry` (replacing one of the same key); returns the tags to invalidate:
        flows simulated while the key was unknown (or bound otherwise) decided without it."""
        if timeout is None:
            timeout = default_timeout(entry.key.proto)
        with self._lock:
            key = entry.key
            old = self._entries.get(key)
            kept: set[Hashable] = set()
            if old is not None:
                kept = old.flows
                if old.entry != entry:
                    self._drop(key)
                else:  # the same state again (a peer's retransmission): refresh it
                    old.last_seen = max(old.last_seen, now)
                    old.flows |= set(flows)
                    self._index(key, old.flows)
                    return set()
            tracked = Tracked(entry, now, now, timeout, kept | set(flows))
            self._entries[key] = tracked
            self._index(key, tracked.flows)
            if isinstance(entry, NatEntry):
                self._bindings[entry.key] = entry.binding
            else:
                self._conns[entry.key] = None
            return {tracked.tag()}

    def remove(self, key: StateKey) -> set[str]:
        """Forget the entry of `key`; the tags to invalidate (none if absent)."""
        with self._lock:
            return self._drop(key)

    def attach_flow(self, key: StateKey, match: Hashable) -> bool:
        """Note a kernel flow that read or created the entry: it keeps it alive."""
        with self._lock:
            tracked = self._entries.get(key)
            if tracked is None:
                return False
            tracked.flows.add(match)
            self._index(key, (match,))
            return True

    def detach_flow(self, match: Hashable) -> None:
        """A flow was removed: it no longer keeps anything alive."""
        with self._lock:
            for key in self._by_flow.pop(match, ()):
                tracked = self._entries.get(key)
                if tracked is not None:
                    tracked.flows.discard(match)

    def touch(self, key: StateKey, now: float) -> None:
        """A packet of the connection was seen (a miss, a userspace packet)."""
        with self._lock:
            tracked = self._find(key)
            if tracked is not None:
                tracked.last_seen = max(tracked.last_seen, now)

    def shorten(self, key: StateKey, timeout: float) -> bool:
        """Lower the entry's idle timeout to `timeout` (never raises it)."""
        with self._lock:
            tracked = self._find(key)
            if tracked is None:
                return False
            tracked.timeout = min(tracked.timeout, timeout)
            return True

    def note_tcp_flags(self, key: ConnKey, flags: int, now: float) -> None:
        """A TCP segment of the connection (either direction): FIN or RST starts its
        short goodbye."""
        self.touch(key, now)
        if flags & (TCP_FIN | TCP_RST):
            self.shorten(key, TCP_CLOSING_TIMEOUT)

    def sweep(self, now: float, last_used: LastUsed) -> set[str]:
        """Remove entries idle longer than their timeout, where idle counts from the
        later of the agent's last sight and the last use of any flow carrying them
        (`last_used(match)`: None when the flow is not installed). A live entry's last
        sight moves up to its flows' last use, so its idle time stays true when saved.
        Returns the tags of what was removed."""
        with self._lock:
            expired: list[StateKey] = []
            for key, tracked in self._entries.items():
                last = tracked.last_seen
                for match in tracked.flows:
                    used = last_used(match)
                    if used is not None and used > last:
                        last = used
                if now - last > tracked.timeout:
                    expired.append(key)
                else:
                    tracked.last_seen = last
            tags: set[str] = set()
            for key in expired:
                tags |= self._drop(key)
            return tags

    def clear(self) -> None:
        with self._lock:
            for key in list(self._entries):
                self._drop(key)

    # -- reads --------------------------------------------------------------------------

    def lookup(self, key: StateKey) -> FlowStateEntry | None:
        tracked = self._entries.get(key)
        return tracked.entry if tracked is not None else None

    def lookup_return(self, key: ConnKey) -> FlowStateEntry | None:
        """The connection entry `key` (a packet's key on arrival) is the reply of."""
        return self.lookup(key.reversed())

    def snapshot(self) -> list[Tracked]:
        """Copies, for reports and persistence (readers never see the live records)."""
        with self._lock:
            return [replace(t, flows=set(t.flows)) for t in self._entries.values()]

    # -- internals (lock held) ----------------------------------------------------------

    def _find(self, key: StateKey) -> Tracked | None:
        tracked = self._entries.get(key)
        if tracked is None and isinstance(key, ConnKey):
            tracked = self._entries.get(key.reversed())
        return tracked

    def _index(self, key: StateKey, flows: Iterable[Hashable]) -> None:
        for match in flows:
            self._by_flow.setdefault(match, set()).add(key)

    def _drop(self, key: StateKey) -> set[str]:
        tracked = self._entries.pop(key, None)
        if tracked is None:
            return set()
        for match in tracked.flows:
            keys = self._by_flow.get(match)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_flow[match]
        if isinstance(key, ConnKey):
            self._conns.pop(key, None)
        else:
            self._bindings.pop(key, None)
        if self.on_remove is not None:
            self.on_remove(tracked.entry)
        return {tracked.tag()}
