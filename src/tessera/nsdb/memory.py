"""The in-memory NSDB backend: the same contract as ZooKeeper, inside one process.

`MemoryStore` is the shared database (what a ZooKeeper ensemble would hold);
`MemoryNsdb` is one client of it, i.e. one session with its own notification thread.
Objects are kept as JSON and parsed on every read and every delivered event, so a
caller that mutates what it got can never corrupt the store or another reader: the
memory backend must not hide aliasing bugs that the ZooKeeper backend would show.

An id is unique across every kind, as in the ZooKeeper backend: a `Create` fails with
`AlreadyExists` naming the kind that holds the id. Here the check simply looks the id up
in every kind's table under the store's lock (ZooKeeper needs an id registry for the
same guarantee).

Indexes (`tessera.nsdb.indexes`) are sets of ids per (index, key), changed by `commit`
under the same lock as the objects; the store remembers each object's index entries, so
an update moves it between keys without parsing the old JSON. A store starts empty,
so its indexes are complete from the start (`repair_indexes` has nothing to do).

Version numbers follow the ZooKeeper backend exactly: a created object is at version 1,
each write adds 1, and a deleted-then-recreated object starts again at 1.
"""

from __future__ import annotations

import builtins
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

from tessera.model import ID_KINDS
from tessera.nsdb import indexes
from tessera.nsdb.base import (
    Change,
    Check,
    Create,
    Delete,
    IndexEvent,
    LeaderElection,
    Nsdb,
    Op,
    StateEvent,
    Stored,
    StoredObject,
    Subscription,
    Update,
    WatchEvent,
)
from tessera.nsdb.codec import (
    check_commit_size,
    decode_object,
    describe,
    encode_object,
    id_taken,
    kind_class,
    kind_of,
)
from tessera.nsdb.errors import AlreadyExists, Conflict, NotFound, Unavailable
from tessera.nsdb.notify import LeaderRunner, Notifier

_STEP_DOWN_WAIT = 5.0  # how long stop()/close() wait for a leader function to return


@dataclass(frozen=True)
class _Obj:
    data: str  # the model's JSON
    version: int


@dataclass(frozen=True)
class _Entry:
    value: str
    owner: int | None  # session id for ephemeral entries


@dataclass(eq=False)
class _Sub:
    """One watch subscription: delivers on its client's notification thread."""

    client: MemoryNsdb
    callback: Callable[..., None]
    cancelled: bool = False

    def deliver_object(
        self, kind: str, id: str, change: Change, data: str | None, version: int
    ) -> None:
        if self.cancelled:
            return
        value = decode_object(kind, data) if data is not None else None
        self.callback(WatchEvent(kind, id, change, value, version))

    def deliver_state(self, table: str, key: str, change: Change, value: str | None) -> None:
        if not self.cancelled:
            self.callback(StateEvent(table, key, change, value))

    def deliver_index(self, event: IndexEvent) -> None:
        if not self.cancelled:
            self.callback(event)


@dataclass(eq=False)
class _Participant:
    token: int
    session: int
    identifier: str
    election: MemoryElection


@dataclass
class _ObjectEvent:
    kind: str
    id: str
    change: Change
    data: str | None
    version: int


class MemoryStore:
    """The shared data of every `MemoryNsdb` client on it; all access holds `lock`."""

    _named: ClassVar[dict[str, MemoryStore]] = {}
    _named_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.available = True
        self.objects: dict[str, dict[str, _Obj]] = {}
        self.state: dict[str, dict[str, _Entry]] = {}
        self.counters: dict[str, int] = {}
        self.elections: dict[str, list[_Participant]] = {}
        self.kind_subs: dict[str, set[_Sub]] = {}
        self.object_subs: dict[tuple[str, str], set[_Sub]] = {}
        self.state_subs: dict[str, set[_Sub]] = {}
        self.indexes: dict[indexes.IndexKey, set[str]] = {}
        self.index_entries: dict[tuple[str, str], frozenset[indexes.IndexKey]] = {}
        self.index_subs: dict[indexes.IndexKey, set[_Sub]] = {}
        self._sessions: set[int] = set()
        self._ids = itertools.count(1)

    @classmethod
    def named(cls, url: str) -> MemoryStore:
        """`memory` → a new private store; `memory:NAME` → the process-wide store NAME,
        so that several clients in one process (API + agents in a test) share it."""
        if url == "memory":
            return cls()
        prefix, sep, name = url.partition(":")
        if prefix != "memory" or not sep or not name:
            raise ValueError(f"'{url}' is not a memory NSDB URL (use 'memory' or 'memory:NAME')")
        with cls._named_lock:
            store = cls._named.get(name)
            if store is None:
                store = cls._named[name] = cls()
            return store

    @classmethod
    def drop_named(cls, url: str) -> None:
        """Forget the process-wide store of `memory:NAME` (tests call it at teardown)."""
        with cls._named_lock:
            cls._named.pop(url.partition(":")[2], None)

    def set_available(self, available: bool) -> None:
        """Simulate an outage: while False, every client operation raises `Unavailable`
        (for testing what callers do when ZooKeeper is down)."""
        with self.lock:
            self.available = available

    # -- sessions (called with the lock held) --

    def open_session(self) -> int:
        session = next(self._ids)
        self._sessions.add(session)
        return session

    def end_session(self, session: int) -> None:
        """Drop the session's ephemeral entries and election participants."""
        self._sessions.discard(session)
        for table, entries in self.state.items():
            for key in [k for k, e in entries.items() if e.owner == session]:
                del entries[key]
                self.dispatch_state(table, key, "deleted", None)
        for name, parts in self.elections.items():
            if any(p.session == session for p in parts):
                self.elections[name] = [p for p in parts if p.session != session]
                self.notify_election(name, parts)

    def owned_entries(self, session: int) -> list[tuple[str, str, str]]:
        return [
            (table, key, e.value)
            for table, entries in self.state.items()
            for key, e in entries.items()
            if e.owner == session
        ]

    def next_token(self) -> int:
        return next(self._ids)

    # -- dispatch (called with the lock held, so every client sees commit order) --

    def dispatch_objects(self, events: list[_ObjectEvent]) -> None:
        for ev in events:
            subs = self.kind_subs.get(ev.kind, set()) | self.object_subs.get(
                (ev.kind, ev.id), set()
            )
            for sub in subs:
                sub.client.notifier.submit(
                    partial(sub.deliver_object, ev.kind, ev.id, ev.change, ev.data, ev.version)
                )

    def reindex(self, kind: str, id: str, new: frozenset[indexes.IndexKey]) -> int:
        """Move object (kind, id) to the index keys `new`; returns how many entries
        changed. Watchers of each key hear of it."""
        old = self.index_entries.get((kind, id), frozenset())
        if old == new:
            return 0
        if new:
            self.index_entries[(kind, id)] = new
        else:
            self.index_entries.pop((kind, id), None)
        for ik in old - new:
            ids = self.indexes.get(ik)
            if ids is not None:
                ids.discard(id)
                if not ids:
                    del self.indexes[ik]
            self.dispatch_index(IndexEvent(ik[0], ik[1], "deleted", id))
        for ik in new - old:
            self.indexes.setdefault(ik, set()).add(id)
            self.dispatch_index(IndexEvent(ik[0], ik[1], "added", id))
        return len(old ^ new)

    def dispatch_index(self, event: IndexEvent) -> None:
        for sub in self.index_subs.get((event.index, event.key), set()):
            sub.client.notifier.submit(partial(sub.deliver_index, event))

    def dispatch_state(self, table: str, key: str, change: Change, value: str | None) -> None:
        for sub in self.state_subs.get(table, set()):
            sub.client.notifier.submit(partial(sub.deliver_state, table, key, change, value))

    def notify_election(self, name: str, previous: Sequence[_Participant] = ()) -> None:
        """Ask every participant, present or just removed, to re-check who leads."""
        seen: set[int] = set()
        for p in [*previous, *self.elections.get(name, [])]:
            if id(p.election) not in seen:
                seen.add(id(p.election))
                p.election.client.notifier.submit(p.election.check)


class MemoryNsdb(Nsdb):
    """One client (one session) of a `MemoryStore`."""

    def __init__(self, store: MemoryStore | None = None) -> None:
        self.store = store if store is not None else MemoryStore()
        with self.store.lock:
            self.session = self.store.open_session()
        self.notifier = Notifier(f"nsdb-memory-{self.session}")
        self._closed = False
        self._subs: set[_Sub] = set()
        self._elections: builtins.list[MemoryElection] = []

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("this NSDB client is closed")
        if not self.store.available:
            raise Unavailable("the in-memory NSDB is unavailable (simulated outage)")

    # -- objects --

    def get(self, kind: str, id: str) -> Stored[StoredObject]:
        kind_class(kind)
        with self.store.lock:
            self._check_open()
            obj = self.store.objects.get(kind, {}).get(id)
        if obj is None:
            raise NotFound(f"{describe(kind, id)} does not exist")
        return Stored(decode_object(kind, obj.data), obj.version)

    def list(self, kind: str) -> builtins.list[Stored[StoredObject]]:
        kind_class(kind)
        with self.store.lock:
            self._check_open()
            objs = builtins.list(self.store.objects.get(kind, {}).values())
        return [Stored(decode_object(kind, o.data), o.version) for o in objs]

    def commit(self, ops: Sequence[Op]) -> builtins.list[int]:
        # Encode outside the lock: it is the expensive part and needs no shared state.
        prepared = [
            (op, encode_object(op.obj) if isinstance(op, Create | Update) else b"") for op in ops
        ]
        check_commit_size(len(data) for _, data in prepared)
        store = self.store
        with store.lock:
            self._check_open()
            overlay: dict[tuple[str, str], _Obj | None] = {}
            final: dict[tuple[str, str], StoredObject | None] = {}  # indexed kinds only

            def current(kind: str, id: str) -> _Obj | None:
                if (kind, id) in overlay:
                    return overlay[(kind, id)]
                return store.objects.get(kind, {}).get(id)

            results: builtins.list[int] = []
            events: builtins.list[_ObjectEvent] = []
            for op, data in prepared:
                if isinstance(op, Create):
                    kind, id = kind_of(op.obj), op.obj.id
                    # A twin (a Neutron network) shares its id with its twin's kind only.
                    space = (kind,) if kind_class(kind).twin_of else ID_KINDS
                    holder = next((k for k in space if current(k, id) is not None), None)
                    if holder is not None:
                        raise AlreadyExists(id_taken(kind, id, holder))
                    new = _Obj(data.decode(), 1)
                    overlay[(kind, id)] = new
                    if kind in indexes.BY_KIND:
                        final[(kind, id)] = op.obj
                    results.append(new.version)
                    events.append(_ObjectEvent(kind, id, "added", new.data, new.version))
                elif isinstance(op, Update):
                    kind, id = kind_of(op.obj), op.obj.id
                    cur = _expect(current(kind, id), kind, id, op.version)
                    new = _Obj(data.decode(), cur.version + 1)
                    overlay[(kind, id)] = new
                    if kind in indexes.BY_KIND:
                        final[(kind, id)] = op.obj
                    results.append(new.version)
                    events.append(_ObjectEvent(kind, id, "changed", new.data, new.version))
                elif isinstance(op, Delete):
                    kind_class(op.kind)
                    cur = _expect(current(op.kind, op.id), op.kind, op.id, op.version)
                    overlay[(op.kind, op.id)] = None
                    if op.kind in indexes.BY_KIND:
                        final[(op.kind, op.id)] = None
                    results.append(-1)
                    events.append(_ObjectEvent(op.kind, op.id, "deleted", None, cur.version))
                elif isinstance(op, Check):
                    kind_class(op.kind)
                    _expect(current(op.kind, op.id), op.kind, op.id, op.version)
                    results.append(op.version if op.version is not None else -1)
                else:
                    raise TypeError(f"not an NSDB operation: {op!r}")
            for (kind, id), value in overlay.items():
                table = store.objects.setdefault(kind, {})
                if value is None:
                    table.pop(id, None)
                else:
                    table[id] = value
            store.dispatch_objects(events)
            for (kind, id), obj in final.items():
                store.reindex(kind, id, indexes.entries(obj))
        return results

    # -- watches --

    def _subscribe(self, registry: dict[object, set[_Sub]], key: object, sub: _Sub) -> Subscription:
        registry.setdefault(key, set()).add(sub)
        self._subs.add(sub)

        def cancel() -> None:
            sub.cancelled = True
            with self.store.lock:
                registry.get(key, set()).discard(sub)
                self._subs.discard(sub)

        return Subscription(cancel)

    def watch_kind(self, kind: str, callback: Callable[[WatchEvent], None]) -> Subscription:
        kind_class(kind)
        sub = _Sub(self, callback)
        with self.store.lock:
            self._check_open()
            for id, obj in self.store.objects.get(kind, {}).items():
                self.notifier.submit(
                    partial(sub.deliver_object, kind, id, "added", obj.data, obj.version)
                )
            return self._subscribe(self.store.kind_subs, kind, sub)  # type: ignore[arg-type]

    def watch_object(
        self, kind: str, id: str, callback: Callable[[WatchEvent], None]
    ) -> Subscription:
        kind_class(kind)
        sub = _Sub(self, callback)
        with self.store.lock:
            self._check_open()
            obj = self.store.objects.get(kind, {}).get(id)
            if obj is not None:
                self.notifier.submit(
                    lambda: sub.deliver_object(kind, id, "added", obj.data, obj.version)
                )
            return self._subscribe(self.store.object_subs, (kind, id), sub)  # type: ignore[arg-type]

    # -- indexes --

    def index_list(self, index: str, key: str) -> builtins.list[str]:
        indexes.index(index)
        with self.store.lock:
            self._check_open()
            return builtins.list(self.store.indexes.get((index, key), ()))

    def watch_index(
        self, index: str, key: str, callback: Callable[[IndexEvent], None]
    ) -> Subscription:
        indexes.index(index)
        sub = _Sub(self, callback)
        with self.store.lock:
            self._check_open()
            for id in self.store.indexes.get((index, key), ()):
                self.notifier.submit(
                    partial(sub.deliver_index, IndexEvent(index, key, "added", id))
                )
            self.notifier.submit(partial(sub.deliver_index, IndexEvent(index, key, "listed", "")))
            return self._subscribe(self.store.index_subs, (index, key), sub)  # type: ignore[arg-type]

    def repair_indexes(self) -> int:
        store = self.store
        with store.lock:
            self._check_open()
            fixed = 0
            seen: set[tuple[str, str]] = set()
            for kind in indexes.BY_KIND:
                for id, obj in store.objects.get(kind, {}).items():
                    seen.add((kind, id))
                    fixed += store.reindex(kind, id, indexes.entries(decode_object(kind, obj.data)))
            for stale in [k for k in store.index_entries if k not in seen]:
                fixed += store.reindex(*stale, frozenset())
            return fixed

    def drop_indexes(self) -> None:
        """Test hook: forget every index entry, as data written before the indexes
        existed (an upgrade) has none."""
        with self.store.lock:
            self.store.indexes.clear()
            self.store.index_entries.clear()

    # -- state tables --

    def state_set(self, table: str, key: str, value: str, ephemeral: bool = True) -> None:
        with self.store.lock:
            self._check_open()
            entries = self.store.state.setdefault(table, {})
            change: Change = "changed" if key in entries else "added"
            entries[key] = _Entry(value, self.session if ephemeral else None)
            self.store.dispatch_state(table, key, change, value)

    def state_create(self, table: str, key: str, value: str, ephemeral: bool = True) -> None:
        with self.store.lock:
            self._check_open()
            entries = self.store.state.setdefault(table, {})
            if key in entries:
                raise AlreadyExists(f"state entry {table}/{key} already exists")
            entries[key] = _Entry(value, self.session if ephemeral else None)
            self.store.dispatch_state(table, key, "added", value)

    def state_delete(self, table: str, key: str) -> None:
        with self.store.lock:
            self._check_open()
            if self.store.state.get(table, {}).pop(key, None) is not None:
                self.store.dispatch_state(table, key, "deleted", None)

    def state_get(self, table: str) -> dict[str, str]:
        with self.store.lock:
            self._check_open()
            return {k: e.value for k, e in self.store.state.get(table, {}).items()}

    def watch_state(self, table: str, callback: Callable[[StateEvent], None]) -> Subscription:
        sub = _Sub(self, callback)
        with self.store.lock:
            self._check_open()
            for key, entry in self.store.state.get(table, {}).items():
                self.notifier.submit(partial(sub.deliver_state, table, key, "added", entry.value))
            return self._subscribe(self.store.state_subs, table, sub)  # type: ignore[arg-type]

    # -- misc --

    def next_id(self, counter: str) -> int:
        with self.store.lock:
            self._check_open()
            value = self.store.counters.get(counter, 0) + 1
            self.store.counters[counter] = value
            return value

    @property
    def connected(self) -> bool:
        return not self._closed and self.store.available

    def leader_election(self, name: str, identifier: str) -> MemoryElection:
        self._check_open()
        election = MemoryElection(self, name, identifier)
        self._elections.append(election)
        return election

    def close(self) -> None:
        with self.store.lock:
            if self._closed:
                return
            self._closed = True
            for sub in self._subs:
                sub.cancelled = True
            registries = (
                self.store.kind_subs,
                self.store.object_subs,
                self.store.state_subs,
                self.store.index_subs,
            )
            for registry in registries:
                for subs in registry.values():
                    subs -= self._subs  # type: ignore[operator]
            self._subs.clear()
            for election in self._elections:
                election.stopped = True
            self.store.end_session(self.session)
        for election in self._elections:
            election.runner.step_down(wait=_STEP_DOWN_WAIT)
        self.notifier.stop()

    def expire_session(self) -> None:
        """Test hook: lose the session as ZooKeeper would expire it. Its ephemeral entries
        and election places vanish (others see "deleted"), then the client carries on
        under a new session and re-creates them, as the ZooKeeper backend does after it
        reconnects."""
        with self.store.lock:
            self._check_open()
            old = self.session
            owned = self.store.owned_entries(old)
            self.store.end_session(old)
            self.session = self.store.open_session()
            for table, key, value in owned:
                entries = self.store.state.setdefault(table, {})
                if key not in entries:
                    entries[key] = _Entry(value, self.session)
                    self.store.dispatch_state(table, key, "added", value)

    def ping(self, timeout: float) -> bool:
        """The store answers when its lock can be taken within `timeout` (a writer stuck
        holding it is this backend's frozen server) and it is available."""
        if not self.store.lock.acquire(timeout=timeout):
            return False
        try:
            return self.connected
        finally:
            self.store.lock.release()


def _expect(cur: _Obj | None, kind: str, id: str, version: int | None) -> _Obj:
    if cur is None:
        raise NotFound(f"{describe(kind, id)} does not exist")
    if version is not None and cur.version != version:
        raise Conflict(
            f"{describe(kind, id)} was changed concurrently (expected version {version})"
        )
    return cur


class MemoryElection(LeaderElection):
    """Participants queue in join order; the first live one leads."""

    def __init__(self, client: MemoryNsdb, name: str, identifier: str) -> None:
        self.client = client
        self.name = name
        self.identifier = identifier
        self.stopped = True
        self.runner = LeaderRunner(f"leader-{name}", self._term_ended)
        self._token: int | None = None
        self._on_elected: Callable[[object], None] | None = None

    def start(self, on_elected: Callable[[object], None]) -> None:
        store = self.client.store
        with store.lock:
            self.client._check_open()
            if not self.stopped:
                raise RuntimeError(f"election participant '{self.identifier}' already started")
            self.stopped = False
            self._on_elected = on_elected
            self._join()

    def _join(self) -> None:
        store = self.client.store
        self._token = store.next_token()
        parts = store.elections.setdefault(self.name, [])
        parts.append(_Participant(self._token, self.client.session, self.identifier, self))
        store.notify_election(self.name)

    def _leave(self) -> None:
        store = self.client.store
        parts = store.elections.get(self.name, [])
        remaining = [p for p in parts if p.token != self._token]
        if len(remaining) != len(parts):
            store.elections[self.name] = remaining
            store.notify_election(self.name, parts)
        self._token = None

    def check(self) -> None:
        """Runs on the client's notification thread whenever the queue changes."""
        store = self.client.store
        with store.lock:
            if self.stopped or self._on_elected is None:
                return
            parts = store.elections.get(self.name, [])
            if not any(p.token == self._token for p in parts):
                self.runner.step_down()  # our session ended: queue again at the back
                self._join()
                return
            first = parts[0].token == self._token
            on_elected = self._on_elected
        if first:
            self.runner.elect(on_elected)
        else:
            self.runner.step_down()

    def _term_ended(self, voluntary: bool) -> None:
        store = self.client.store
        with store.lock:
            if voluntary and not self.stopped:
                self._leave()  # resigning: let the next participant lead
                self._join()
        self.client.notifier.submit(self.check)

    def stop(self) -> None:
        with self.client.store.lock:
            if self.stopped:
                return
            self.stopped = True
            self._leave()
        self.runner.step_down(wait=_STEP_DOWN_WAIT)

    @property
    def is_leader(self) -> bool:
        return self.runner.leading

    def leader(self) -> str | None:
        with self.client.store.lock:
            self.client._check_open()
            parts = self.client.store.elections.get(self.name, [])
            return parts[0].identifier if parts else None
