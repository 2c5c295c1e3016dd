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
expires; one whose flows all went idle does. TCP FIN or RST shortens the timeout, as
Linux conntrack's CLOSE/TIME_WAIT do: the datapath ORs the TCP flags of every packet
into its flow's stats (`FlowStats.tcp_flags`), each sweep reads them with the last-use
times, and a TCP entry carried by a flow that saw FIN or RST is held to the short
timeout of `entry.closing_timeout` from then on (`note_tcp_flags` does the same for a
segment the agent itself saw).

Who owns an entry: the host whose simulation created it (`origin` None). It remembers
the hosts it pushed the entry to (`shared`) so that, when the entry expires here, they
are told to drop their copies (`sweep_entries` hands the expired entries to the
service). A copy received from a peer (`origin` its host id) ages by this host's own
flows like any entry — the backstop when the owner dies or a removal is lost — and its
owner's removal (`release`) ends it as soon as no flow here uses it. A FIN or RST first
seen by a copy's flows is handed back too (the owner is told: `note_close` there).

Adding or removing an entry returns its tag (`entry.tag_of`, the simulation's
`conntrack_tag`/`nat_tag`): exactly the flows that looked that key up, found or not.

Thread-safe: one lock guards writes (the agent thread installs and sweeps, the receiver
thread hands in peers' entries, the control socket reads snapshots).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from tessera.agent.flowstate.entry import (
    PROTO_TCP,
    RELEASED_TIMEOUT,
    TCP_FIN,
    TCP_FIN_TIMEOUT,
    TCP_RST,
    TCP_RST_TIMEOUT,
    StateKey,
    closing_timeout,
    entry_timeout,
    is_sticky,
    tag_of,
)
from tessera.datapath.base import FlowStats
from tessera.simulation.flowstate import (
    ConnKey,
    FlowStateEntry,
    FlowStateView,
    NatBinding,
    NatEntry,
    NatKey,
)

LastUsed = Callable[[Hashable], float | None]
TcpFlags = Callable[[Hashable], int]  # a flow's FlowStats.tcp_flags (0 if not installed)


class _MissingConns(Collection[ConnKey]):
    """The tracked connections as a simulation reads them, telling `on_miss` of every
    key looked up and not found (`--flow-state cassandra` fetches it)."""

    __slots__ = ("_conns", "_on_miss")

    def __init__(self, conns: dict[ConnKey, None], on_miss: Callable[[StateKey], None]) -> None:
        self._conns = conns
        self._on_miss = on_miss

    def __contains__(self, key: object) -> bool:
        if key in self._conns:
            return True
        if isinstance(key, ConnKey):
            self._on_miss(key)
        return False

    def __iter__(self) -> Iterator[ConnKey]:
        return iter(self._conns)

    def __len__(self) -> int:
        return len(self._conns)


class _MissingBindings(Mapping[NatKey, NatBinding]):
    """The NAT bindings as a simulation reads them, telling `on_miss` of misses."""

    __slots__ = ("_bindings", "_on_miss")

    def __init__(
        self, bindings: dict[NatKey, NatBinding], on_miss: Callable[[StateKey], None]
    ) -> None:
        self._bindings = bindings
        self._on_miss = on_miss

    def __getitem__(self, key: NatKey) -> NatBinding:
        try:
            return self._bindings[key]
        except KeyError:
            self._on_miss(key)
            raise

    def get(self, key: NatKey, default: NatBinding | None = None) -> NatBinding | None:  # type: ignore[override]
        found = self._bindings.get(key)
        if found is None:
            self._on_miss(key)
            return default
        return found

    def __contains__(self, key: object) -> bool:
        if key in self._bindings:
            return True
        if isinstance(key, NatKey):
            self._on_miss(key)
        return False

    def __iter__(self) -> Iterator[NatKey]:
        return iter(self._bindings)

    def __len__(self) -> int:
        return len(self._bindings)


@dataclass
class Tracked:
    """An entry as the table holds it: its timeout may shrink, its activity moves."""

    entry: FlowStateEntry
    created: float
    last_seen: float
    timeout: float
    flows: set[Hashable] = field(default_factory=set)
    tcp_flags: int = 0  # OR of the flags its flows (and the agent) saw; TCP entries only
    origin: str | None = None  # the peer's host id for a copy; None: created here
    shared: set[str] = field(default_factory=set)  # underlay addresses it was pushed to
    released: bool = False  # a copy its owner withdrew, kept while flows here use it

    def tag(self) -> str:
        return tag_of(self.entry.key)


class ConnTable:
    def __init__(
        self,
        on_remove: Callable[[FlowStateEntry], None] | None = None,
        *,
        fin_timeout: float = TCP_FIN_TIMEOUT,
        rst_timeout: float = TCP_RST_TIMEOUT,
        released_timeout: float = RELEASED_TIMEOUT,
        on_miss: Callable[[StateKey], None] | None = None,
    ) -> None:
        """`on_remove` is told of every entry that leaves (the SNAT port it held is free).
        The timeouts are `entry`'s constants unless a test or an operator wants others.
        `on_miss` (on the simulating thread; must not block) is told of every key a
        simulation looked up and did not find; without it the view is the plain dicts."""
        self.fin_timeout = fin_timeout
        self.rst_timeout = rst_timeout
        self.released_timeout = released_timeout
        self._lock = threading.Lock()
        self._entries: dict[StateKey, Tracked] = {}
        self._conns: dict[ConnKey, None] = {}
        self._bindings: dict[NatKey, NatBinding] = {}
        self._by_flow: dict[Hashable, set[StateKey]] = {}  # flow match -> keys it carries
        self._released_tags: set[str] = set()
        # Copies `release` kept for their flows, for `settle_released` to judge at once.
        self._released_keys: list[StateKey] = []
        self._closing: list[Tracked] = []  # copies closed by a flow deleted meanwhile
        self.on_remove = on_remove
        # Connection entries written to the datapath's own table too (`agent.kernel_ct`):
        # called for each new one (lock held; must not call back in), it answers the
        # pseudo flow that keeps the entry alive while the datapath uses it, or None.
        self.mirror: Callable[[ConnKey], Hashable | None] | None = None
        if on_miss is None:
            self.view = FlowStateView(self._conns.keys(), MappingProxyType(self._bindings))
        else:
            self.view = FlowStateView(
                _MissingConns(self._conns, on_miss), _MissingBindings(self._bindings, on_miss)
            )

    def __len__(self) -> int:
        return len(self._entries)

    # -- writes -------------------------------------------------------------------------

    def add(
        self,
        entry: FlowStateEntry,
        now: float,
        flows: Iterable[Hashable] = (),
        timeout: float | None = None,
        *,
        origin: str | None = None,
        shared: Iterable[str] = (),
        tcp_flags: int = 0,
    ) -> set[str]:
        """Hold `entry` (replacing one of the same key); returns the tags to invalidate:
        flows simulated while the key was unknown (or bound otherwise) decided without it.
        `origin`: the peer that pushed it (None: created here, and then ours to remove
        even if a peer pushed it first)."""
        if timeout is None:
            timeout = entry_timeout(entry)
        with self._lock:
            key = entry.key
            old = self._entries.get(key)
            kept: set[Hashable] = set()
            if old is not None:
                kept = old.flows
                if old.entry != entry or old.released:
                    # Another binding; or the owner created anew what it had withdrawn
                    # (a new connection): its timeout and flags start afresh, and the
                    # returned tag invalidates the old connection's flows.
                    self._drop(key)
                    if old.released:
                        kept = set()
                else:  # the same state again (a peer's retransmission): refresh it
                    old.last_seen = max(old.last_seen, now)
                    old.flows |= set(flows)
                    old.shared |= set(shared)
                    old.tcp_flags |= tcp_flags
                    if origin is None:
                        old.origin = None
                    self._index(key, old.flows)
                    return set()
            tracked = Tracked(
                entry, now, now, timeout, kept | set(flows), tcp_flags, origin, set(shared)
            )
            if self.mirror is not None and isinstance(key, ConnKey):
                pseudo = self.mirror(key)
                if pseudo is not None:
                    tracked.flows.add(pseudo)
            self._entries[key] = tracked
            self._index(key, tracked.flows)
            if isinstance(entry, NatEntry):
                self._bindings[entry.key] = entry.binding
            else:
                self._conns[entry.key] = None
            return {tracked.tag()}

    def mirror_devices(self, devices: Collection[str]) -> int:
        """Hand the connection entries of `devices` to `mirror` (their device just got a
        datapath zone); how many it took."""
        mirror = self.mirror
        if mirror is None or not devices:
            return 0
        n = 0
        with self._lock:
            for key, tracked in self._entries.items():
                if isinstance(key, ConnKey) and key.device in devices:
                    pseudo = mirror(key)
                    if pseudo is not None and pseudo not in tracked.flows:
                        tracked.flows.add(pseudo)
                        self._index(key, (pseudo,))
                        n += 1
        return n

    def remove(self, key: StateKey) -> set[str]:
        """Forget the entry of `key`; the tags to invalidate (none if absent)."""
        with self._lock:
            return self._drop(key)

    def shared_with(self, key: StateKey, addresses: Iterable[str]) -> None:
        """The entry was pushed to these hosts: they are told when it goes."""
        with self._lock:
            tracked = self._entries.get(key)
            if tracked is not None:
                tracked.shared.update(addresses)

    def contradicts(self, entry: FlowStateEntry) -> bool:
        """Whether `entry`, pushed by a peer, would replace a different live entry this
        host created: a peer may refresh or add, never rebind a key we own (a forged or
        confused member would otherwise redirect our connections' replies)."""
        with self._lock:
            old = self._entries.get(entry.key)
            return (
                old is not None and old.origin is None and not old.released
                and old.entry != entry
            )  # fmt: skip

    def release(self, entry: FlowStateEntry, origin: str, now: float) -> str:
        """The owner `origin` dropped `entry`: end this host's copy. Dropped at once when
        no flow here carries it, else held to `released_timeout` so that the sweep drops
        it as soon as those flows are idle that long (never while they forward).

        Returns what happened, for the counter: "dropped", "released" (kept while in
        use here), "unknown" (no such copy: it expired here already) or "refused" (the
        copy is not `origin`'s: created here, pushed by another host, or bound
        otherwise — a member may only withdraw what it sent)."""
        with self._lock:
            tracked = self._entries.get(entry.key)
            if tracked is None:
                return "unknown"
            if tracked.origin != origin or tracked.entry != entry:
                return "refused"
            if not tracked.flows:
                tags = self._drop(entry.key)
                self._released_tags |= tags
                return "dropped"
            tracked.timeout = min(tracked.timeout, self.released_timeout)
            tracked.released = True
            self._released_keys.append(entry.key)
            return "released"

    @property
    def release_pending(self) -> bool:
        """Copies kept by `release` wait for `settle_released`."""
        return bool(self._released_keys)

    def settle_released(self, now: float, last_used: LastUsed) -> set[str]:
        """Judge the copies `release` kept for their flows now, as the sweep would: one
        whose flows are idle past its (released) timeout goes, and its tags are returned
        to invalidate those flows. The sweep may be seconds away (passes are spaced by
        their cost, up to 15 s with many flows), and meanwhile an idle reply flow still
        translates for the old connection, whose SNAT port its owner reuses after
        `snat.REUSE_AFTER`. Copies still in use stay for the sweep. (The 1 s stalls of
        new SNAT connections measured in session 18 came from removals lost in the
        socket, `transport.RECEIVE_BUFFER`; this only shortens the window.)"""
        with self._lock:
            keys, self._released_keys = self._released_keys, []
            tags: set[str] = set()
            for key in keys:
                tracked = self._entries.get(key)
                if tracked is None or not tracked.released:
                    continue
                if now - _last_use(tracked, last_used) > tracked.timeout:
                    tags |= self._drop(key)
            return tags

    def take_released_tags(self) -> set[str]:
        """Tags of copies `release` dropped since the last call."""
        with self._lock:
            tags, self._released_tags = self._released_tags, set()
            return tags

    def attach_flow(self, key: StateKey, match: Hashable) -> bool:
        """Note a kernel flow that read or created the entry: it keeps it alive."""
        with self._lock:
            tracked = self._entries.get(key)
            if tracked is None:
                return False
            tracked.flows.add(match)
            self._index(key, (match,))
            return True

    def carries(self, match: Hashable) -> bool:
        """Whether the flow `match` keeps any entry alive (cheap: no lock, one lookup)."""
        return match in self._by_flow

    def flow_removed(self, match: Hashable, stats: FlowStats | None) -> None:
        """The flow is being deleted (invalidated): its entries take its last use and
        TCP flags first — a FIN or RST it carried since the last sweep would otherwise
        be lost with it — and it no longer keeps them alive."""
        with self._lock:
            for key in self._by_flow.pop(match, ()):
                tracked = self._entries.get(key)
                if tracked is None:
                    continue
                tracked.flows.discard(match)
                if stats is None:
                    continue
                if stats.last_used is not None:
                    tracked.last_seen = max(tracked.last_seen, stats.last_used)
                new = self._note_flags(tracked, stats.tcp_flags)
                if new and tracked.origin is not None:
                    self._closing.append(replace(tracked, flows=set(), shared=set()))

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
        """A TCP segment of the connection (either direction) that the agent saw: FIN or
        RST starts its short goodbye, as when a flow's stats report them."""
        with self._lock:
            tracked = self._find(key)
            if tracked is not None:
                tracked.last_seen = max(tracked.last_seen, now)
                self._note_flags(tracked, flags)

    def note_close(self, entry: FlowStateEntry, address: str, flags: int) -> str:
        """A host this entry of ours was pushed to (underlay `address`) saw its FIN or
        RST (`flags`) in a flow there: shorten it, and the entries that share a flow
        with it here (the rest of the connection: its conntrack entry, the other NAT
        binding), as if our own flows had seen it. Returns
        "noted", "unknown" (no such entry: gone already) or "refused" (not ours, not
        pushed to that host, or bound otherwise)."""
        with self._lock:
            tracked = self._entries.get(entry.key)
            if tracked is None:
                return "unknown"
            if tracked.origin is not None or address not in tracked.shared:
                return "refused"
            if tracked.entry != entry:
                return "refused"
            self._note_flags(tracked, flags)
            for match in tracked.flows:
                for key in self._by_flow.get(match, ()):
                    self._note_flags(self._entries[key], flags)
            return "noted"

    def sweep(self, now: float, last_used: LastUsed, tcp_flags: TcpFlags | None = None) -> set[str]:
        """`sweep_entries`, returning only the tags of what was removed."""
        return self.sweep_entries(now, last_used, tcp_flags)[0]

    def sweep_entries(
        self, now: float, last_used: LastUsed, tcp_flags: TcpFlags | None = None
    ) -> tuple[set[str], list[Tracked], list[Tracked]]:
        """Remove entries idle longer than their timeout, where idle counts from the
        later of the agent's last sight and the last use of any flow carrying them
        (`last_used(match)`: None when the flow is not installed). A live entry's last
        sight moves up to its flows' last use, so its idle time stays true when saved.
        A TCP entry whose flows saw FIN or RST (`tcp_flags(match)`) gets its short
        timeout first. Returns the tags of what was removed, the removed records, and
        the copies (of a peer's entries) whose flows saw FIN or RST for the first time,
        which their owner is told of."""
        with self._lock:
            expired: list[StateKey] = []
            closing, self._closing = self._closing, []
            for key, tracked in self._entries.items():
                last = _last_use(tracked, last_used)
                flags = 0
                if tcp_flags is not None:
                    for match in tracked.flows:
                        flags |= tcp_flags(match)
                if flags and self._note_flags(tracked, flags) and tracked.origin is not None:
                    closing.append(replace(tracked, flows=set(), shared=set()))
                if now - last > tracked.timeout:
                    expired.append(key)
                else:
                    tracked.last_seen = last
            tags: set[str] = set()
            gone: list[Tracked] = []
            for key in expired:
                gone.append(self._entries[key])
                tags |= self._drop(key)
            return tags, gone, closing

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
            return [
                replace(t, flows=set(t.flows), shared=set(t.shared)) for t in self._entries.values()
            ]

    # -- internals (lock held) ----------------------------------------------------------

    def _note_flags(self, tracked: Tracked, flags: int) -> bool:
        """OR in `flags` and shorten a TCP entry; whether FIN or RST is new to it. A
        sticky entry is no connection's: its connections closing leave it be."""
        if tracked.entry.key.proto != PROTO_TCP or is_sticky(tracked.entry.key):
            return False
        new = flags & ~tracked.tcp_flags & (TCP_FIN | TCP_RST)
        tracked.tcp_flags |= flags
        short = closing_timeout(tracked.tcp_flags, self.fin_timeout, self.rst_timeout)
        if short is not None:
            tracked.timeout = min(tracked.timeout, short)
        return bool(new)

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


def _last_use(tracked: Tracked, last_used: LastUsed) -> float:
    """The later of the agent's last sight of an entry and the last use of any flow
    carrying it (`last_used(match)`: None when the flow is not installed)."""
    last = tracked.last_seen
    for match in tracked.flows:
        used = last_used(match)
        if used is not None and used > last:
            last = used
    return last
