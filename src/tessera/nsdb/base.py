"""The NSDB interface: one contract, two backends (`memory`, `zookeeper`).

Objects are stored whole with a version that every write bumps; multi-object writes go
through `commit`, which applies a list of operations atomically and only if every
version check holds (compare-and-set). A created object is at version 1; a deleted and
re-created one starts again at 1. Watches deliver added/changed/deleted events with
versions on one notification thread per client, in order: an object's version never goes
backwards and its latest state always arrives. The memory backend reports every commit;
ZooKeeper re-reads after each notification, so rapid successive writes to one object may
reach a watcher as one event with the latest version. State tables hold
small string entries (learned MACs, ARP entries, host liveness, leases); an *ephemeral*
entry belongs to the client session that wrote it and vanishes when that session ends.
Indexes (`tessera.nsdb.indexes`: the ports bound to a host, the children of a parent)
are written by `commit` in the same atomic write as the objects they list, and can be
listed and watched per key, so a client never needs a whole kind to find a few objects.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from tessera.model import StoredObject
from tessera.nsdb.errors import NotFound

T = TypeVar("T", bound=StoredObject)
Change = Literal["added", "changed", "deleted"]

# --- operations for commit() -------------------------------------------------------


@dataclass(frozen=True)
class Create:
    obj: StoredObject


@dataclass(frozen=True)
class Update:
    """Overwrite `obj`; with `version`, only if the stored version still equals it."""

    obj: StoredObject
    version: int | None = None


@dataclass(frozen=True)
class Delete:
    kind: str
    id: str
    version: int | None = None


@dataclass(frozen=True)
class Check:
    """Assert existence (and with `version`, the exact version) without writing."""

    kind: str
    id: str
    version: int | None = None


Op = Create | Update | Delete | Check

# --- results and events ------------------------------------------------------------


@dataclass(frozen=True)
class Stored(Generic[T]):
    value: T
    version: int


@dataclass(frozen=True)
class WatchEvent:
    kind: str
    id: str
    change: Change
    value: StoredObject | None  # None for "deleted"
    version: int


@dataclass(frozen=True)
class StateEvent:
    table: str
    key: str
    change: Change
    value: str | None  # None for "deleted"


@dataclass(frozen=True)
class IndexEvent:
    """An object id entered ("added") or left ("deleted") the index key, or ("listed",
    `id` empty) every id present when the watch began has been delivered."""

    index: str
    key: str
    change: Literal["added", "deleted", "listed"]
    id: str


@dataclass
class Subscription:
    """Handle of a watch; `cancel()` stops delivery (idempotent)."""

    _cancel: Callable[[], None] = field(repr=False)
    cancelled: bool = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._cancel()


class Nsdb(abc.ABC):
    """One client of the network state database (a ZooKeeper session, or a handle on a
    shared in-memory store). Every method may raise `Unavailable`."""

    # -- objects --
    @abc.abstractmethod
    def get(self, kind: str, id: str) -> Stored[StoredObject]:
        """The object and its version; `NotFound` if absent."""

    def get_many(self, kind: str, ids: Sequence[str]) -> builtins.list[Stored[StoredObject] | None]:
        """`get` of each id, None for an absent one. A backend may read them together
        (ZooKeeper: one round trip): a transaction checking one host's ports reads them
        all at once (`Transaction.indexed`)."""
        out: builtins.list[Stored[StoredObject] | None] = []
        for id in ids:
            try:
                out.append(self.get(kind, id))
            except NotFound:
                out.append(None)
        return out

    @abc.abstractmethod
    def list(self, kind: str) -> builtins.list[Stored[StoredObject]]:
        """Every object of a kind (unordered)."""

    @abc.abstractmethod
    def commit(self, ops: Sequence[Op]) -> builtins.list[int]:
        """Apply all ops or none. Raises `Conflict` when a version check fails,
        `NotFound` when an Update/Delete/Check target is missing, `AlreadyExists` for a
        Create of an id that an object of any kind holds (ids are unique across kinds),
        `ObjectTooLarge` (before anything is written) for an object or a commit above
        the limits in `codec`. Returns the new version of each op's object (the
        checked version for a Check with a version, else -1; -1 for Delete)."""

    def create(self, obj: StoredObject) -> int:
        return self.commit([Create(obj)])[0]

    def update(self, obj: StoredObject, version: int | None = None) -> int:
        return self.commit([Update(obj, version)])[0]

    def delete(self, kind: str, id: str, version: int | None = None) -> None:
        self.commit([Delete(kind, id, version)])

    # -- watches (callbacks run on the client's notification thread; keep them short) --
    @abc.abstractmethod
    def watch_kind(self, kind: str, callback: Callable[[WatchEvent], None]) -> Subscription:
        """Every later change to objects of `kind`. The current objects are first
        delivered as "added" events, so a watcher never misses what existed."""

    @abc.abstractmethod
    def watch_object(
        self, kind: str, id: str, callback: Callable[[WatchEvent], None]
    ) -> Subscription:
        """Changes of one object; its current state first ("added") if it exists."""

    def watch_objects(
        self, requests: Sequence[tuple[str, str, Callable[[WatchEvent], None]]]
    ) -> builtins.list[Subscription]:
        """`watch_object` for each (kind, id, callback), all or none: on an error the
        ones made are cancelled. A backend may load them together (ZooKeeper: one round
        trip for all, which is what an agent loading a tenant waits for)."""
        subs: builtins.list[Subscription] = []
        try:
            for kind, id, callback in requests:
                subs.append(self.watch_object(kind, id, callback))
        except BaseException:
            for sub in subs:
                sub.cancel()
            raise
        return subs

    # -- indexes (`tessera.nsdb.indexes`) --
    @abc.abstractmethod
    def index_list(self, index: str, key: str) -> builtins.list[str]:
        """The ids of the objects listed under `key` in `index` (unordered)."""

    @abc.abstractmethod
    def watch_index(
        self, index: str, key: str, callback: Callable[[IndexEvent], None]
    ) -> Subscription:
        """Ids entering and leaving one key of an index: the current ids first as
        "added", then one "listed" event, then every later change in order."""

    @abc.abstractmethod
    def repair_indexes(self) -> int:
        """Make every index agree with the objects (data written before the indexes
        existed has none); returns how many entries were added or dropped. Reads every
        indexed kind: a backend runs it once per namespace (see `indexes`), not per
        request. Safe beside concurrent writers, whose commits keep the index too."""

    # -- state tables --
    @abc.abstractmethod
    def state_set(self, table: str, key: str, value: str, ephemeral: bool = True) -> None:
        """Create or overwrite an entry (an ephemeral one is owned by this session)."""

    @abc.abstractmethod
    def state_create(self, table: str, key: str, value: str, ephemeral: bool = True) -> None:
        """Create an entry only if the key is free; `AlreadyExists` otherwise (whoever
        owns it). Claims (leases) rely on it: of concurrent creators exactly one wins."""

    @abc.abstractmethod
    def state_delete(self, table: str, key: str) -> None:
        """Remove an entry; absent entries are ignored."""

    def state_set_many(
        self, entries: Sequence[tuple[str, str, str]], ephemeral: bool = True
    ) -> None:
        """`state_set` of each (table, key, value). Not atomic: on an error some may be
        set. A backend may send them together (ZooKeeper: one round trip for entries
        that are new, as the requests of a waiting write are)."""
        for table, key, value in entries:
            self.state_set(table, key, value, ephemeral)

    def state_delete_many(self, entries: Sequence[tuple[str, str]]) -> None:
        """`state_delete` of each (table, key), together where the backend can."""
        for table, key in entries:
            self.state_delete(table, key)

    @abc.abstractmethod
    def state_get(self, table: str) -> dict[str, str]:
        """The table's entries (an absent table is empty)."""

    @abc.abstractmethod
    def watch_state(self, table: str, callback: Callable[[StateEvent], None]) -> Subscription:
        """Entries added/changed/deleted; current entries first as "added"."""

    def watch_state_keys(self, table: str, callback: Callable[[StateEvent], None]) -> Subscription:
        """`watch_state` for a watcher that needs only which keys are present (the
        events' values may be None): a backend may then skip reading each entry
        (ZooKeeper: one listing per change instead of a listing and a read)."""
        return self.watch_state(table, callback)

    # -- misc --
    @abc.abstractmethod
    def next_id(self, counter: str) -> int:
        """The next value (1, 2, ...) of a cluster-wide counter; never repeats."""

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """Whether the backend is reachable now (for health and 503s)."""

    @abc.abstractmethod
    def leader_election(self, name: str, identifier: str) -> LeaderElection:
        """A participant in the election `name` (one leader among live sessions)."""

    @abc.abstractmethod
    def close(self) -> None:
        """End this client's session: its ephemeral state entries vanish."""

    def ping(self, timeout: float) -> bool:
        """Whether the backend answers a request within `timeout` seconds, for health
        checks: `connected` says the connection is up, not that the other end answers
        (a frozen ZooKeeper keeps its TCP connection open). Never raises. This default
        suits a backend that cannot hang; a remote one makes a real round trip."""
        return self.connected


class LeaderElection(abc.ABC):
    """Run `on_elected` while this participant leads. `on_elected` is called on a
    background thread and should return only when leadership must end (it gets a
    `threading.Event` set when the participant should step down). Returning on its own
    resigns: the next participant leads and this one queues again. Participants lead in
    the order they started; a leader steps down when its session ends or (ZooKeeper)
    its connection is lost, and leads again if it is still first once reconnected."""

    @abc.abstractmethod
    def start(self, on_elected: Callable[[object], None]) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @property
    @abc.abstractmethod
    def is_leader(self) -> bool: ...

    @abc.abstractmethod
    def leader(self) -> str | None:
        """The current leader's identifier, if any."""
