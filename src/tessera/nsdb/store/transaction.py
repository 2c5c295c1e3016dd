"""One read-modify-write of the topology, committed as a single NSDB transaction.

A `Transaction` remembers the version of everything it read; writes stay local until
`ops()` turns them into one `commit` whose version checks fail if anything read and
then written was changed meanwhile. `run` repeats the whole read-modify-write a bounded
number of times when it loses such a race, so callers see a `Conflict` only under
sustained contention.
"""

from __future__ import annotations

import builtins
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from tessera.model import StoredObject
from tessera.nsdb.base import Create, Delete, Nsdb, Op, Update
from tessera.nsdb.codec import describe
from tessera.nsdb.errors import Conflict, NotFound
from tessera.nsdb.indexes import Index
from tessera.nsdb.store import neutron_owners

log = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T", bound=StoredObject)

MAX_ATTEMPTS = 8
_BACKOFF_BASE = 0.004  # seconds; doubled per attempt, jittered, capped
_BACKOFF_CAP = 0.25


@dataclass
class _Slot:
    value: StoredObject | None  # the value as this transaction sees it; None = deleted
    version: int | None  # the version read; None = created in this transaction
    dirty: bool = False  # written (changed, created or deleted) here
    touched: bool = False  # to be rewritten unchanged, bumping its version
    original: StoredObject | None = None  # the value read from the NSDB


class Transaction:
    """A consistent working view of the objects one operation reads and writes."""

    def __init__(self, nsdb: Nsdb) -> None:
        self.nsdb = nsdb
        self._slots: dict[str, dict[str, _Slot]] = {}
        self._listed: set[str] = set()

    # -- reads --

    def _slot(self, kind: str, id: str) -> _Slot | None:
        by_id = self._slots.setdefault(kind, {})
        slot = by_id.get(id)
        if slot is None and kind not in self._listed:
            try:
                stored = self.nsdb.get(kind, id)
            except NotFound:
                return None
            slot = by_id[id] = _Slot(stored.value, stored.version, original=stored.value)
        return slot

    def _prefetch(self, kind: str, ids: Iterable[str]) -> None:
        """Read the objects this transaction has not seen yet, together."""
        by_id = self._slots.setdefault(kind, {})
        if kind in self._listed:
            return
        todo = sorted(id for id in ids if id not in by_id)
        if not todo:
            return
        for id, stored in zip(todo, self.nsdb.get_many(kind, todo), strict=True):
            if stored is not None:
                by_id[id] = _Slot(stored.value, stored.version, original=stored.value)

    def find(self, kind: str, id: str) -> StoredObject | None:
        slot = self._slot(kind, id)
        return slot.value if slot is not None else None

    def get(self, cls: type[T], id: str) -> T:
        """The object, or `NotFound` (which the API turns into a 404)."""
        obj = self.find(cls.kind, id)
        if obj is None:
            raise NotFound(f"{describe(cls.kind, id)} does not exist")
        assert isinstance(obj, cls)
        return obj

    def all(self, kind: str) -> builtins.list[StoredObject]:
        """Every object of a kind as this transaction sees it (listed once, then cached)."""
        by_id = self._slots.setdefault(kind, {})
        if kind not in self._listed:
            for stored in self.nsdb.list(kind):
                by_id.setdefault(
                    stored.value.id, _Slot(stored.value, stored.version, original=stored.value)
                )
            self._listed.add(kind)
        return [slot.value for slot in by_id.values() if slot.value is not None]

    def all_of(self, cls: type[T]) -> builtins.list[T]:
        return [obj for obj in self.all(cls.kind) if isinstance(obj, cls)]

    def indexed(self, cls: type[T], index: Index, key: str) -> builtins.list[T]:
        """The objects listed under `key` in `index`, as this transaction sees them: a
        check that only concerns one host's or one device's objects then reads those, not
        the whole kind (binding a port in a cloud of 10,000 read all 10,000). Objects
        this transaction wrote are judged by their new value, not the stored index."""
        assert index.kind == cls.kind
        ids = set(self.nsdb.index_list(index.name, key))
        self._prefetch(cls.kind, ids)
        ids.update(id for id, slot in self._slots.get(cls.kind, {}).items() if slot.dirty)
        out = []
        for id in sorted(ids):
            obj = self.find(cls.kind, id)
            if isinstance(obj, cls) and key in index.keys(obj):
                out.append(obj)
        return out

    # -- writes (local until committed) --

    def create(self, obj: StoredObject) -> None:
        """A new object; an existing id makes the commit fail with `AlreadyExists`."""
        self._slots.setdefault(obj.kind, {})[obj.id] = _Slot(obj, None, dirty=True)

    def put(self, obj: StoredObject) -> None:
        """Replace an object this transaction has read (or created)."""
        slot = self._slot(obj.kind, obj.id)
        if slot is None or slot.value is None:
            raise NotFound(f"{describe(obj.kind, obj.id)} does not exist")
        slot.value = obj
        slot.dirty = True

    def delete(self, kind: str, id: str) -> None:
        slot = self._slot(kind, id)
        if slot is None or slot.value is None:
            raise NotFound(f"{describe(kind, id)} does not exist")
        slot.value = None
        slot.dirty = True

    def touch(self, kind: str, id: str) -> None:
        """Rewrite the object unchanged at commit: a concurrent transaction that read it
        (to delete it, say) then fails its version check instead of missing our write."""
        slot = self._slot(kind, id)
        if slot is None or slot.value is None:
            raise NotFound(f"{describe(kind, id)} does not exist")
        slot.touched = True

    def is_deleted(self, kind: str, id: str) -> bool:
        slot = self._slots.get(kind, {}).get(id)
        return slot is not None and slot.value is None

    def ops(self) -> builtins.list[Op]:
        # The reverse index of the Neutron translation is written with what it indexes.
        changed = [
            (slot.original, slot.value)
            for kind, by_id in self._slots.items()
            if kind.startswith("neutron_")
            for slot in by_id.values()
            if slot.dirty
        ]
        neutron_owners.reindex(self, changed)
        return list(self._ops())

    def _ops(self) -> Iterator[Op]:
        for kind, by_id in self._slots.items():
            for id, slot in by_id.items():
                if slot.version is None:
                    if slot.value is not None:
                        yield Create(slot.value)
                elif slot.dirty:
                    if slot.value is None:
                        yield Delete(kind, id, slot.version)
                    else:
                        yield Update(slot.value, slot.version)
                elif slot.touched and slot.value is not None:
                    yield Update(slot.value, slot.version)


def run(
    nsdb: Nsdb,
    what: str,
    body: Callable[[Transaction], R],
    attempts: int = MAX_ATTEMPTS,
) -> R:
    """Run `body` on a fresh transaction and commit what it wrote; on a lost race
    (`Conflict`, or `NotFound` for something read that vanished before the commit) do it
    all again from fresh reads. `what` names the operation in the final error."""
    last: Exception | None = None
    for attempt in range(attempts):
        tx = Transaction(nsdb)
        result = body(tx)
        ops = tx.ops()
        if not ops:
            return result
        try:
            nsdb.commit(ops)
            return result
        except (Conflict, NotFound) as exc:
            last = exc
            log.debug("%s: attempt %d lost a race (%s); retrying", what, attempt + 1, exc)
            delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt)
            time.sleep(random.uniform(0, delay))
    raise Conflict(f"{what} kept conflicting with concurrent changes ({last}); try again")
