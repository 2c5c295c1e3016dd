"""`ZookeeperNsdb`: the NSDB operations (objects, commits, watches, state tables,
counters, elections) over one `ZkSession`. The layout they use is in the package
docstring."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from kazoo.exceptions import (
    BadVersionError,
    KazooException,
    NodeExistsError,
    NoNodeError,
    RolledBackError,
    RuntimeInconsistency,
)
from kazoo.protocol.states import ZnodeStat

from tessera.model import ID_KINDS, KINDS
from tessera.nsdb import indexes
from tessera.nsdb.base import (
    Change,
    Check,
    Create,
    Delete,
    IndexEvent,
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
    escape_component,
    id_taken,
    kind_of,
    unescape_component,
)
from tessera.nsdb.errors import AlreadyExists, Conflict, NotFound, NsdbError, Unavailable
from tessera.nsdb.zookeeper.election import ZookeeperElection
from tessera.nsdb.zookeeper.mirrors import (
    DirMirror,
    KeysDirMirror,
    ListedDirMirror,
    Mirror,
    NodeMirror,
    Sub,
)
from tessera.nsdb.zookeeper.session import ZkSession

E = TypeVar("E")

log = logging.getLogger("tessera.nsdb.zookeeper")


class ZookeeperNsdb(ZkSession, Nsdb):
    """One ZooKeeper session; reconnects by itself and keeps its watches alive."""

    # -- objects --

    def get(self, kind: str, id: str) -> Stored[StoredObject]:
        path = self._obj_path(kind, id)
        result = self._run(lambda: self._zk.get_async(path))
        if isinstance(result, NoNodeError):
            raise NotFound(f"{describe(kind, id)} does not exist")
        if isinstance(result, Exception):
            raise result
        data, stat = result
        return Stored(decode_object(kind, data), stat.version + 1)

    def get_many(self, kind: str, ids: Sequence[str]) -> builtins.list[Stored[StoredObject] | None]:
        results = self._run_many(
            [partial(self._zk.get_async, self._obj_path(kind, id)) for id in ids]
        )
        out: builtins.list[Stored[StoredObject] | None] = []
        for result in results:
            if isinstance(result, NoNodeError):
                out.append(None)
            elif isinstance(result, Exception):
                raise result
            else:
                data, stat = result
                out.append(Stored(decode_object(kind, data), stat.version + 1))
        return out

    def list(self, kind: str) -> builtins.list[Stored[StoredObject]]:
        directory = self._kind_dir(kind)
        children = self._run(lambda: self._zk.get_children_async(directory))
        if isinstance(children, NoNodeError):
            return []
        if isinstance(children, Exception):
            raise children
        results = self._run_many(
            [partial(self._zk.get_async, f"{directory}/{c}") for c in children]
        )
        out: builtins.list[Stored[StoredObject]] = []
        for result in results:
            if isinstance(result, NoNodeError):
                continue  # deleted since the listing
            if isinstance(result, Exception):
                raise result
            data, stat = result
            out.append(Stored(decode_object(kind, data), stat.version + 1))
        return out

    def commit(self, ops: Sequence[Op]) -> builtins.list[int]:
        if not ops:
            return []
        planned = [self._plan(op) for op in ops]
        check_commit_size((len(p.data) for p in planned), self.root or "/")
        ensured: set[str] = set()
        read_entries = False
        drifted: set[str] = set()
        index_ops: builtins.list[_IxOp] = []
        for _ in range(5):
            try:
                index_ops = self._index_ops(planned, drifted)
                if (
                    len(planned) == 1
                    and isinstance(planned[0].op, Update | Check)
                    and not index_ops
                ):
                    return [self._commit_one(planned[0])]
                registry = self._registry_ops(planned, read_entries)
                return self._commit_multi(planned, registry, index_ops)
            except _IndexRace:
                continue  # an indexed object changed between our read and the write
            except _IndexDrift as drift:  # an entry missing or present already: skip it
                drifted.add(drift.path)
            except _MissingKindDir as missing:  # the kind's directory, or the registry's
                if missing.path in ensured:
                    raise NotFound(f"{missing.path} is missing in ZooKeeper") from None
                if missing.path.startswith(f"{self._index}/"):
                    # A new parent's index key: a commit creating a tenant has several,
                    # made at once here rather than one failed transaction each.
                    parents = {o.path.rsplit("/", 1)[0] for o in index_ops if o.action == "create"}
                    ensured |= parents
                    self._ensure_paths(sorted(parents))
                else:
                    ensured.add(missing.path)
                    self._ensure_path(missing.path)
            except _StaleIdEntry as stale:
                self._drop_stale_id(stale)
            except _MissingIdEntry:
                if read_entries:  # read present, gone at the commit: a concurrent delete
                    raise Conflict("an id registry entry changed during this write") from None
                read_entries = True
        raise Conflict("the id registry kept changing during this write; try again")

    def _plan(self, op: Op) -> _Planned:
        if isinstance(op, Create | Update):
            kind = kind_of(op.obj)
            return _Planned(
                op, kind, op.obj.id, self._obj_path(kind, op.obj.id), encode_object(op.obj)
            )
        if isinstance(op, Delete | Check):
            return _Planned(op, op.kind, op.id, self._obj_path(op.kind, op.id), b"")
        raise TypeError(f"not an NSDB operation: {op!r}")

    def _registry_ops(
        self, planned: builtins.list[_Planned], read_entries: bool
    ) -> builtins.list[_IdOp]:
        """The id registry's part of a commit (see the package doc): each Create takes
        its id's entry; each Delete releases its entry, blindly at first (no extra round
        trip: an entry is created at version 0 and never changed, unless it records a
        legacy duplicate). An object stored before the registry was filled has no entry,
        and a legacy duplicate's entry names several kinds at a later version; either
        fails the commit, which is then redone with `read_entries`: the deletes' entries
        are read, and each loses only the deleted objects' kinds."""
        out: builtins.list[_IdOp] = []  # releases first: a commit may free an id and take it
        # Twins (Neutron networks, ports) share their twin's entry and take none.
        planned = [p for p in planned if p.kind in ID_KINDS]
        deletes = [p for p in planned if isinstance(p.op, Delete)]
        if not read_entries:
            out = [_IdOp(p, self._id_path(p.id), "delete", 0) for p in deletes]
        else:
            by_id: dict[str, builtins.list[_Planned]] = {}
            for p in deletes:
                by_id.setdefault(p.id, []).append(p)
            ids = builtins.list(by_id)
            entries = self._run_many([partial(self._zk.get_async, self._id_path(id)) for id in ids])
            for id, entry in zip(ids, entries, strict=True):
                if isinstance(entry, NoNodeError):
                    continue
                if isinstance(entry, Exception):
                    raise entry
                data, stat = entry
                held = _kinds(data)
                gone = {p.kind for p in by_id[id]}
                if not held & gone:
                    continue  # another kind's entry (a legacy duplicate)
                left = sorted(held - gone)
                first = by_id[id][0]
                if left:
                    out.append(_IdOp(first, self._id_path(id), "set", stat.version, left))
                else:
                    out.append(_IdOp(first, self._id_path(id), "delete", stat.version))
        creates = [p for p in planned if isinstance(p.op, Create)]
        return out + [_IdOp(p, self._id_path(p.id), "create", -1) for p in creates]

    def _index_path(self, index: str, key: str, id: str | None = None) -> str:
        indexes.index(index)
        base = f"{self._index}/{index}/{escape_component(key)}"
        return base if id is None else f"{base}/{escape_component(id)}"

    def _index_ops(
        self, planned: builtins.list[_Planned], drifted: set[str]
    ) -> builtins.list[_IxOp]:
        """The index entries a commit adds and removes (see the package doc). The old
        keys of an updated or deleted object come from reading it; that read's version
        is then required by the write (unless the caller gave one), so what we read is
        what we replace."""
        touched = [p for p in planned if p.kind in indexes.BY_KIND]
        if not touched:
            return []
        reads = [p for p in touched if not isinstance(p.op, Create | Check)]
        first: dict[tuple[str, str], _Planned] = {}
        for p in reads:
            first.setdefault((p.kind, p.id), p)
        results = self._run_many([partial(self._zk.get_async, p.path) for p in first.values()])
        now: dict[tuple[str, str], frozenset[indexes.IndexKey]] = {}
        for (kind, id), p, result in zip(first, first.values(), results, strict=True):
            p.pin = None
            if isinstance(result, NoNodeError):
                now[(kind, id)] = frozenset()
                continue
            if isinstance(result, Exception):
                raise result
            data, stat = result
            now[(kind, id)] = indexes.entries(decode_object(kind, data))
            if getattr(p.op, "version", None) is None:
                p.pin = stat.version
        before = dict(now)
        for p in touched:
            if isinstance(p.op, Create | Update):
                now[(p.kind, p.id)] = indexes.entries(p.op.obj)
            elif isinstance(p.op, Delete):
                now[(p.kind, p.id)] = frozenset()
        out: builtins.list[_IxOp] = []
        for (kind, id), new in now.items():
            old = before.get((kind, id), frozenset())
            for ik in sorted(old - new):
                out.append(_IxOp(self._index_path(*ik, id), "delete"))
            for ik in sorted(new - old):
                out.append(_IxOp(self._index_path(*ik, id), "create"))
        return [o for o in out if o.path not in drifted]

    def _commit_one(self, p: _Planned) -> int:
        zk = self._zk
        op = p.op
        if isinstance(op, Update):
            result = self._run(lambda: zk.set_async(p.path, p.data, p.zk_version))
        else:
            assert isinstance(op, Check)
            result = self._run(lambda: zk.exists_async(p.path))
            if result is None:
                result = NoNodeError()
            elif (
                not isinstance(result, Exception)
                and op.version is not None
                and result.version + 1 != op.version
            ):
                result = BadVersionError()
        if isinstance(result, Exception):
            raise self._op_error(p, result)
        return p.new_version(result)

    def _commit_multi(
        self,
        planned: builtins.list[_Planned],
        registry: builtins.list[_IdOp],
        index_ops: builtins.list[_IxOp] = [],  # noqa: B006 (never mutated)
    ) -> builtins.list[int]:
        tx = self._zk.transaction()
        for p in planned:
            op = p.op
            if isinstance(op, Create):
                tx.create(p.path, p.data)
            elif isinstance(op, Update):
                tx.set_data(p.path, p.data, p.zk_version)
            elif isinstance(op, Delete):
                tx.delete(p.path, p.zk_version)
            else:
                tx.check(p.path, p.zk_version)
        for r in registry:
            if r.action == "create":
                tx.create(r.path, r.of.kind.encode("utf-8"))
            elif r.action == "set":
                tx.set_data(r.path, ",".join(r.kinds).encode("utf-8"), r.zk_version)
            else:
                tx.delete(r.path, r.zk_version)
        for ix in index_ops:
            if ix.action == "create":
                tx.create(ix.path, b"")
            else:
                tx.delete(ix.path)
        results = self._run(tx.commit_async)
        if isinstance(results, Exception):
            raise NsdbError(f"ZooKeeper refused the transaction: {type(results).__name__}")
        for p, result in zip(planned, results, strict=False):
            if isinstance(result, Exception) and not isinstance(
                result, RolledBackError | RuntimeInconsistency
            ):
                raise self._op_error(p, result)
        for r, result in zip(
            registry, results[len(planned) : len(planned) + len(registry)], strict=True
        ):
            if isinstance(result, Exception) and not isinstance(
                result, RolledBackError | RuntimeInconsistency
            ):
                raise self._id_error(r, result)
        for ix, result in zip(index_ops, results[len(planned) + len(registry) :], strict=True):
            if isinstance(result, RolledBackError | RuntimeInconsistency):
                continue
            if isinstance(result, NoNodeError) and ix.action == "create":
                raise _MissingKindDir(ix.path.rsplit("/", 1)[0])
            if isinstance(result, NoNodeError | NodeExistsError):
                raise _IndexDrift(ix.path)
            if isinstance(result, Exception):
                raise NsdbError(f"ZooKeeper refused index entry {ix.path}: {type(result).__name__}")
        return [p.new_version(result) for p, result in zip(planned, results, strict=False)]

    def _id_error(self, r: _IdOp, exc: Exception) -> Exception:
        """Why the id registry's part of a commit failed."""
        what = describe(r.of.kind, r.of.id)
        if r.action != "create":
            if r.zk_version == 0 and isinstance(exc, NoNodeError | BadVersionError):
                return _MissingIdEntry(r.path)  # a blind release missed: read, then redo
            return Conflict(f"the id of {what} changed concurrently")
        if isinstance(exc, NoNodeError):
            return _MissingKindDir(self._ids)
        if not isinstance(exc, NodeExistsError):
            return NsdbError(f"ZooKeeper refused the id of {what}: {type(exc).__name__}")
        entry = self._run(partial(self._zk.get_async, r.path))
        if isinstance(entry, NoNodeError):  # released meanwhile: the caller may retry
            return Conflict(f"the id of {what} changed concurrently")
        if isinstance(entry, Exception):
            return entry
        data, stat = entry
        holders = sorted(_kinds(data) & set(KINDS))
        found = self._run_many(
            [partial(self._zk.exists_async, self._obj_path(k, r.of.id)) for k in holders]
        )
        for holder, exists in zip(holders, found, strict=True):
            if exists is not None and not isinstance(exists, Exception):
                return AlreadyExists(id_taken(r.of.kind, r.of.id, holder))
        # No object holds it (left by a legacy duplicate, or by a delete racing the
        # registry's filling): reclaim it.
        return _StaleIdEntry(r.path, stat.version)

    def _drop_stale_id(self, stale: _StaleIdEntry) -> None:
        log.warning("dropping id registry entry %s: no object holds it", stale.path)
        result = self._run(partial(self._zk.delete_async, stale.path, stale.version))
        if isinstance(result, Exception) and not isinstance(result, NoNodeError | BadVersionError):
            raise result

    def _op_error(self, p: _Planned, exc: Exception) -> Exception:
        what = describe(p.kind, p.id)
        if isinstance(exc, BadVersionError) and p.pin is not None:
            return _IndexRace(p.path)
        if isinstance(exc, NoNodeError):
            if isinstance(p.op, Create):
                return _MissingKindDir(self._kind_dir(p.kind))
            return NotFound(f"{what} does not exist")
        if isinstance(exc, NodeExistsError):
            return AlreadyExists(f"{what} already exists")
        if isinstance(exc, BadVersionError):
            return Conflict(f"{what} was changed concurrently (expected version {p.op.version})")  # type: ignore[union-attr]
        return NsdbError(f"ZooKeeper refused the write of {what}: {type(exc).__name__}")

    # -- watches --

    def _attach(
        self, key: str, make: Callable[[], Mirror[E]], callback: Callable[[E], None]
    ) -> Subscription:
        """Create (and load) the mirror for `key` if needed, then attach a subscriber that
        first gets the mirror's current content as "added" events. Loading waits for
        ZooKeeper (raising `Unavailable`), delivery is asynchronous as in the memory
        backend."""
        return self._attach_many([(key, make, callback)])[0]

    def _attach_many(
        self, items: Sequence[tuple[str, Callable[[], Mirror[Any]], Callable[[Any], None]]]
    ) -> builtins.list[Subscription]:
        """`_attach` for several mirrors in one turn of the notification thread, the
        new ones' first reads pipelined (one round trip for all, not one each)."""
        subs: builtins.list[tuple[str, Sub[Any]]] = [(key, Sub(cb)) for key, _, cb in items]

        def setup() -> None:
            if not self._connected.is_set():
                raise self._down()
            made: builtins.list[tuple[str, Mirror[Any]]] = []
            for key, make, _ in items:
                if key not in self._mirrors:
                    mirror = make()
                    self._mirrors[key] = mirror
                    made.append((key, mirror))
            try:
                self._resync_many([m for _, m in made])
            except BaseException:
                for key, mirror in made:
                    del self._mirrors[key]
                    mirror.active = False
                raise
            for key, sub in subs:
                mirror = self._mirrors[key]
                self.notifier.submit(partial(mirror.attach, sub))
                sub.mirror = mirror

        try:
            if not self.notifier.run_sync(setup, timeout=max(10.0, 3 * self._op_timeout)):
                for _, sub in subs:
                    sub.cancelled = True
                raise Unavailable(f"ZooKeeper at {self.hosts} did not answer in time")
        except KazooException:
            for _, sub in subs:
                sub.cancelled = True
            raise self._down() from None
        except BaseException:
            for _, sub in subs:
                sub.cancelled = True
            raise
        return [Subscription(partial(self._cancel, key, sub)) for key, sub in subs]

    def _cancel(self, key: str, sub: Sub[Any]) -> None:
        sub.cancelled = True
        self.notifier.submit(lambda: self._detach(key, sub))

    def _detach(self, key: str, sub: Sub[Any]) -> None:
        mirror = self._mirrors.get(key)
        if mirror is None or sub.mirror is not mirror:
            return
        mirror.subs = [s for s in mirror.subs if s is not sub]
        if not mirror.subs:
            mirror.active = False  # its pending one-shot watches fire once more, ignored
            del self._mirrors[key]

    def watch_kind(self, kind: str, callback: Callable[[WatchEvent], None]) -> Subscription:
        directory = self._kind_dir(kind)
        self._check_open()

        def event(
            name: str, change: Change, value: StoredObject | None, version: int
        ) -> WatchEvent:
            return WatchEvent(kind, name, change, value, version)

        return self._attach(
            directory,
            lambda: DirMirror(self, directory, lambda data: decode_object(kind, data), event),
            callback,
        )

    def watch_object(
        self, kind: str, id: str, callback: Callable[[WatchEvent], None]
    ) -> Subscription:
        return self.watch_objects([(kind, id, callback)])[0]

    def watch_objects(
        self, requests: Sequence[tuple[str, str, Callable[[WatchEvent], None]]]
    ) -> builtins.list[Subscription]:
        self._check_open()
        items: builtins.list[tuple[str, Callable[[], Mirror[Any]], Callable[[Any], None]]] = []
        for kind, id, callback in requests:
            path = self._obj_path(kind, id)
            make = partial(
                NodeMirror, self, path, id, partial(decode_object, kind), partial(_event, kind)
            )
            items.append(("object:" + path, make, callback))
        return self._attach_many(items)

    # -- indexes --

    def index_list(self, index: str, key: str) -> builtins.list[str]:
        path = self._index_path(index, key)
        children = self._run(lambda: self._zk.get_children_async(path))
        if isinstance(children, NoNodeError):
            return []
        if isinstance(children, Exception):
            raise children
        return [unescape_component(c) for c in children]

    def watch_index(
        self, index: str, key: str, callback: Callable[[IndexEvent], None]
    ) -> Subscription:
        path = self._index_path(index, key)
        self._check_open()

        def event(name: str, change: Change, value: object, version: int) -> IndexEvent:
            return IndexEvent(index, key, "deleted" if change == "deleted" else "added", name)

        return self._attach(
            "index:" + path,
            lambda: ListedDirMirror(
                self, path, event, lambda: IndexEvent(index, key, "listed", "")
            ),
            callback,
        )

    def _fill_indexes(self) -> None:
        """Once per namespace (the session calls it after connecting): index what was
        stored before the indexes existed, then mark the index root done."""
        marker = self._run(partial(self._zk.get_async, self._index))
        if isinstance(marker, Exception):
            raise marker
        if marker[0] == indexes.INDEX_FORMAT:
            return
        self.repair_indexes()
        log.info("NSDB indexes built from the objects stored before them")

    def repair_indexes(self) -> int:
        # Entries first, then objects: an entry listed whose object (listed later) does
        # not have it is stale, whatever was written in between.
        actual: set[str] = set()
        for ix in indexes.INDEXES:
            top = f"{self._index}/{ix.name}"
            keys = self._run(partial(self._zk.get_children_async, top))
            if isinstance(keys, NoNodeError):
                continue
            if isinstance(keys, Exception):
                raise keys
            listed = self._run_many(
                [partial(self._zk.get_children_async, f"{top}/{k}") for k in keys]
            )
            for k, ids in zip(keys, listed, strict=True):
                if isinstance(ids, NoNodeError):
                    continue
                if isinstance(ids, Exception):
                    raise ids
                actual.update(f"{top}/{k}/{i}" for i in ids)
        expected: dict[str, tuple[str, int]] = {}  # entry path -> (object path, zk version)
        for kind in indexes.BY_KIND:
            for stored in self.list(kind):
                obj_path = self._obj_path(kind, stored.value.id)
                for ik in indexes.entries(stored.value):
                    path = self._index_path(*ik, stored.value.id)
                    expected[path] = (obj_path, stored.version - 1)
        fixed = 0
        for path in sorted(actual - expected.keys()):
            result = self._run(partial(self._zk.delete_async, path))
            if isinstance(result, Exception) and not isinstance(result, NoNodeError):
                raise result
            fixed += 1
        for path in sorted(expected.keys() - actual):
            obj_path, version = expected[path]
            self._ensure_path(path.rsplit("/", 1)[0])
            tx = self._zk.transaction()
            tx.check(obj_path, version)  # changed meanwhile: its own commit indexed it
            tx.create(path, b"")
            result = self._run(tx.commit_async)
            if isinstance(result, Exception):
                raise result
            fixed += not any(isinstance(r, Exception) for r in result)
        done = self._run(partial(self._zk.set_async, self._index, indexes.INDEX_FORMAT))
        if isinstance(done, Exception):
            raise done
        if fixed:
            log.warning("repaired %d NSDB index entries", fixed)
        return fixed

    # -- state tables --

    def state_set(self, table: str, key: str, value: str, ephemeral: bool = True) -> None:
        path = self._entry_path(table, key)
        data = value.encode("utf-8")
        zk = self._zk
        if ephemeral and self._owns(table, key):
            # Overwriting our own entry (an agent's report, its liveness): one round
            # trip. The answer says whose the znode is; if no longer ours, or gone, the
            # general way below makes it ours.
            stat = self._run(partial(zk.set_async, path, data, -1))
            if isinstance(stat, ZnodeStat) and stat.ephemeralOwner == self._current_session():
                self._written(table, key, value, ephemeral)
                return
        for _ in range(20):
            result = self._run(
                lambda: zk.create_async(path, data, ephemeral=ephemeral, makepath=True)
            )
            if not isinstance(result, NodeExistsError):
                if isinstance(result, Exception):
                    raise result
                break
            stat = self._run(lambda: zk.exists_async(path))
            if stat is None:
                continue
            if isinstance(stat, Exception):
                raise stat
            owner = stat.ephemeralOwner
            if owner == (self._current_session() if ephemeral else 0):
                # Same owner kind: overwrite in place, keeping the znode.
                result = self._run(partial(zk.set_async, path, data, stat.version))
            else:
                # Ownership changes (persistent <-> ephemeral, or another session's
                # ephemeral entry): replace the znode atomically.
                tx = zk.transaction()
                tx.delete(path, stat.version)
                tx.create(path, data, ephemeral=ephemeral)
                result = self._run(tx.commit_async)
                if isinstance(result, builtins.list) and any(
                    isinstance(r, Exception) for r in result
                ):
                    continue
            if isinstance(result, BadVersionError | NoNodeError):
                continue
            if isinstance(result, Exception):
                raise result
            break
        else:
            raise Conflict(f"state entry {table}/{key} kept changing; gave up")
        self._written(table, key, value, ephemeral)

    def _owns(self, table: str, key: str) -> bool:
        with self._lock:
            return (table, key) in self._ephemerals

    def state_set_many(
        self, entries: Sequence[tuple[str, str, str]], ephemeral: bool = True
    ) -> None:
        """New entries in one round trip (creates pipelined); one that exists already
        is set the general way."""
        zk = self._zk
        paths = [self._entry_path(t, k) for t, k, _ in entries]
        results = self._run_many(
            [
                partial(zk.create_async, path, v.encode("utf-8"), ephemeral=ephemeral,
                        makepath=True)
                for path, (_, _, v) in zip(paths, entries, strict=True)
            ]
        )  # fmt: skip
        failure: Exception | None = None
        for (table, key, value), result in zip(entries, results, strict=True):
            if isinstance(result, NodeExistsError):
                self.state_set(table, key, value, ephemeral)
            elif isinstance(result, Exception):
                failure = failure or result
            else:
                self._written(table, key, value, ephemeral)
        if failure is not None:
            raise failure

    def state_delete_many(self, entries: Sequence[tuple[str, str]]) -> None:
        results = self._run_many(
            [partial(self._zk.delete_async, self._entry_path(t, k)) for t, k in entries]
        )
        with self._lock:
            for entry in entries:
                self._ephemerals.pop(entry, None)
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, NoNodeError):
                raise result

    def state_create(self, table: str, key: str, value: str, ephemeral: bool = True) -> None:
        path = self._entry_path(table, key)
        data = value.encode("utf-8")
        zk = self._zk
        result = self._run(lambda: zk.create_async(path, data, ephemeral=ephemeral, makepath=True))
        if isinstance(result, NodeExistsError):
            raise AlreadyExists(f"state entry {table}/{key} already exists")
        if isinstance(result, Exception):
            raise result
        self._written(table, key, value, ephemeral)

    def state_delete(self, table: str, key: str) -> None:
        path = self._entry_path(table, key)
        result = self._run(lambda: self._zk.delete_async(path))
        if isinstance(result, Exception) and not isinstance(result, NoNodeError):
            raise result
        with self._lock:
            self._ephemerals.pop((table, key), None)

    def state_get(self, table: str) -> dict[str, str]:
        directory = self._table_dir(table)
        children = self._run(lambda: self._zk.get_children_async(directory))
        if isinstance(children, NoNodeError):
            return {}
        if isinstance(children, Exception):
            raise children
        results = self._run_many(
            [partial(self._zk.get_async, f"{directory}/{c}") for c in children]
        )
        out: dict[str, str] = {}
        for child, result in zip(children, results, strict=True):
            if isinstance(result, NoNodeError):
                continue
            if isinstance(result, Exception):
                raise result
            out[unescape_component(child)] = result[0].decode("utf-8")
        return out

    def watch_state(self, table: str, callback: Callable[[StateEvent], None]) -> Subscription:
        directory = self._table_dir(table)
        self._check_open()

        def event(name: str, change: Change, value: str | None, version: int) -> StateEvent:
            return StateEvent(table, name, change, value)

        return self._attach(
            directory,
            lambda: DirMirror(
                self, directory, lambda data: data.decode("utf-8"), event, recreate_is_change=True
            ),
            callback,
        )

    def watch_state_keys(self, table: str, callback: Callable[[StateEvent], None]) -> Subscription:
        directory = self._table_dir(table)
        self._check_open()

        def event(name: str, change: Change, value: str | None, version: int) -> StateEvent:
            return StateEvent(table, name, change, None)

        return self._attach(
            "keys:" + directory,
            lambda: KeysDirMirror(self, directory, lambda data: None, event),
            callback,
        )

    # -- misc --

    def next_id(self, counter: str) -> int:
        path = f"{self._counters}/{escape_component(counter)}"
        for _ in range(3):
            result = self._run(lambda: self._zk.set_async(path, b""))
            if isinstance(result, ZnodeStat):
                return int(result.version)
            if not isinstance(result, NoNodeError):
                raise result
            created = self._run(lambda: self._zk.create_async(path, b"", makepath=True))
            if isinstance(created, Exception) and not isinstance(created, NodeExistsError):
                raise created
        raise NsdbError(f"counter {counter} could not be created")

    def leader_election(self, name: str, identifier: str) -> ZookeeperElection:
        self._check_open()
        election = ZookeeperElection(self, name, identifier)
        self._elections.append(election)
        return election

    def ping(self, timeout: float) -> bool:
        """One `exists` on the root, answered by the server itself, within `timeout`
        (kazoo's own pings and the session timeout take seconds to notice a server
        that stopped answering but kept its connection)."""
        if not self.connected:
            return False
        try:
            self._zk.exists_async(self.root or "/").get(timeout=timeout)
        except (self._timeout_error, KazooException):
            return False
        return True


def _kinds(data: bytes) -> set[str]:
    """The kinds an id registry entry names: one, or several for a legacy duplicate."""
    return {k for k in data.decode("utf-8", "replace").split(",") if k}


@dataclass
class _IdOp:
    """What a commit does to an id registry entry: "create" it (with a Create), "delete"
    it or "set" it to the `kinds` still holding the id (with a Delete)."""

    of: _Planned
    path: str
    action: str  # "create" | "delete" | "set"
    zk_version: int
    kinds: builtins.list[str] = field(default_factory=builtins.list)


class _MissingIdEntry(Exception):
    """A deleted object had no registry entry (stored before the registry was filled)."""


class _StaleIdEntry(Exception):
    def __init__(self, path: str, version: int) -> None:
        super().__init__(path)
        self.path = path
        self.version = version


@dataclass
class _IxOp:
    path: str
    action: str  # "create" | "delete"


class _IndexRace(Exception):
    """An indexed object changed between the commit's read of it and its write."""


class _IndexDrift(Exception):
    """An index entry the commit meant to create exists, or to delete is missing."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class _MissingKindDir(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


@dataclass
class _Planned:
    op: Op
    kind: str
    id: str
    path: str
    data: bytes
    pin: int | None = None  # the zk version read by `_index_ops`, required by the write

    @property
    def zk_version(self) -> int:
        version = getattr(self.op, "version", None)
        if version is None:
            return -1 if self.pin is None else self.pin
        # -1 is ZooKeeper's "any version"; -2 never matches (our versions start at 1).
        return version - 1 if version >= 1 else -2

    def new_version(self, result: Any) -> int:
        if isinstance(self.op, Create):
            return 1
        if isinstance(self.op, Update):
            return int(result.version) + 1
        if isinstance(self.op, Delete):
            return -1
        return self.op.version if self.op.version is not None else -1


def _event(
    kind: str, name: str, change: Change, value: StoredObject | None, version: int
) -> WatchEvent:
    return WatchEvent(kind, name, change, value, version)
