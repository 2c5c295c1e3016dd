"""Watch mirrors: what one client last reported about some znodes, kept true by
one-shot watches.

Only the client's notification thread touches a mirror. Every read re-arms the watch on
what it read and is compared with what was reported, so a notification is never lost
and the versions reported never go backwards, across reconnections included (the
session calls `resync` on each mirror after every reconnect).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent, ZnodeStat

from tessera.nsdb.base import Change
from tessera.nsdb.codec import escape_component, unescape_component

if TYPE_CHECKING:
    from tessera.nsdb.zookeeper.session import ZkSession

log = logging.getLogger("tessera.nsdb.zookeeper")

E = TypeVar("E")


@dataclass(eq=False)
class Sub(Generic[E]):
    callback: Callable[[E], None]
    cancelled: bool = False
    mirror: Mirror[E] | None = None

    def deliver(self, event: E) -> None:
        if not self.cancelled:
            try:
                self.callback(event)
            except Exception:
                log.exception("NSDB watch callback failed")


@dataclass
class Known:
    czxid: int
    version: int  # ZooKeeper's data version
    value: Any


class Mirror(Generic[E]):
    """The last state this client reported for some znodes, and its subscribers.

    Only the notification thread touches it. Every read re-arms the one-shot watch on
    what it read, and the result is compared with what was reported: so a notification
    is never lost, and versions reported never go backwards.
    """

    def __init__(
        self,
        nsdb: ZkSession,
        decode: Callable[[bytes], Any],
        make_event: Callable[[str, Change, Any, int], E],
        recreate_is_change: bool = False,
    ) -> None:
        self.nsdb = nsdb
        self.decode = decode
        self.make_event = make_event
        self.recreate_is_change = recreate_is_change
        self.subs: builtins.list[Sub[E]] = []
        self.known: dict[str, Known] = {}
        self.active = True

    def resync(self) -> None:
        raise NotImplementedError

    def attach(self, sub: Sub[E]) -> None:
        if sub.cancelled or not self.active:
            return
        for name, known in self.known.items():
            sub.deliver(self.make_event(name, "added", known.value, known.version + 1))
        self.subs.append(sub)

    def emit(self, name: str, change: Change, value: Any, version: int) -> None:
        for sub in builtins.list(self.subs):
            sub.deliver(self.make_event(name, change, value, version + 1))

    def apply(self, name: str, data: bytes | None, stat: ZnodeStat | None) -> None:
        old = self.known.get(name)
        if stat is None or data is None:
            if old is not None:
                del self.known[name]
                self.emit(name, "deleted", None, old.version)
            return
        if old is not None and old.czxid == stat.czxid and stat.version <= old.version:
            return  # a notification for something already reported
        try:
            value = self.decode(data)
        except ValueError as exc:
            log.warning("ignoring undecodable NSDB entry %s: %s", name, exc)
            return
        self.known[name] = Known(stat.czxid, stat.version, value)
        if old is None:
            self.emit(name, "added", value, stat.version)
        elif old.czxid == stat.czxid or self.recreate_is_change:
            self.emit(name, "changed", value, stat.version)
        else:  # deleted and created again between two reads: a new incarnation
            self.emit(name, "deleted", None, old.version)
            self.emit(name, "added", value, stat.version)

    def watcher(self, refresh: Callable[[], None]) -> Callable[[WatchedEvent], None]:
        def on_event(event: WatchedEvent) -> None:
            # kazoo's thread. NONE events come from kazoo dropping watches on a lost
            # connection; the re-sync after reconnecting covers them.
            if event.type != EventType.NONE and self.active:
                self.nsdb.notifier.submit(lambda: self.nsdb._guarded(self._if_active(refresh)))

        return on_event

    def _if_active(self, refresh: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            if self.active:
                refresh()

        return run


class DirMirror(Mirror[E]):
    """Every child of one directory (objects of a kind, entries of a state table)."""

    def __init__(
        self,
        nsdb: ZkSession,
        path: str,
        decode: Callable[[bytes], Any],
        make_event: Callable[[str, Change, Any, int], E],
        recreate_is_change: bool = False,
    ) -> None:
        super().__init__(nsdb, decode, make_event, recreate_is_change)
        self.path = path
        self._dir_watch = self.watcher(self.refresh_dir)
        self._child_watches: dict[str, Callable[[WatchedEvent], None]] = {}

    def _child_watch(self, name: str) -> Callable[[WatchedEvent], None]:
        watch = self._child_watches.get(name)
        if watch is None:
            watch = self._child_watches[name] = self.watcher(lambda: self.refresh([name]))
        return watch

    def _list(self) -> builtins.list[str]:
        zk, nsdb = self.nsdb._zk, self.nsdb
        children = nsdb._run(lambda: zk.get_children_async(self.path, watch=self._dir_watch))
        if isinstance(children, NoNodeError):
            nsdb._ensure_path(self.path)
            children = nsdb._run(lambda: zk.get_children_async(self.path, watch=self._dir_watch))
        if isinstance(children, Exception):
            raise children
        return [unescape_component(c) for c in children]

    def refresh(self, names: Sequence[str]) -> None:
        zk, nsdb = self.nsdb._zk, self.nsdb
        results = nsdb._run_many(
            [
                partial(
                    zk.get_async, f"{self.path}/{escape_component(n)}", watch=self._child_watch(n)
                )
                for n in names
            ]
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, NoNodeError):
                self._child_watches.pop(name, None)
                self.apply(name, None, None)
            elif isinstance(result, Exception):
                raise result
            else:
                self.apply(name, result[0], result[1])

    def refresh_dir(self) -> None:
        names = self._list()
        present = set(names)
        for gone in [n for n in self.known if n not in present]:
            self.apply(gone, None, None)
        self.refresh([n for n in names if n not in self.known])

    def resync(self) -> None:
        names = self._list()
        present = set(names)
        for gone in [n for n in self.known if n not in present]:
            self.apply(gone, None, None)
        self.refresh(names)


class KeysDirMirror(DirMirror[E]):
    """Only the names of a directory's children, for directories whose children carry
    no data that changes (an index key's members): a change is one listing, which
    re-arms the one watch; no child is read or watched. Half the round trips of a
    `DirMirror` per change, and one watch instead of one per child."""

    def refresh_dir(self) -> None:
        names = self._list()
        present = set(names)
        for gone in [n for n in self.known if n not in present]:
            self.apply(gone, None, None)
        for name in names:
            if name not in self.known:
                self.known[name] = Known(0, 0, None)
                self.emit(name, "added", None, 0)

    def resync(self) -> None:
        self.refresh_dir()


class ListedDirMirror(KeysDirMirror[E]):
    """A `KeysDirMirror` that tells each new subscriber when it has every child present
    at attach time (an index watch's "listed" event): a loader waits for it to know that
    a parent's children are all in, without a separate listing that could race."""

    def __init__(
        self,
        nsdb: ZkSession,
        path: str,
        make_event: Callable[[str, Change, Any, int], E],
        listed: Callable[[], E],
    ) -> None:
        super().__init__(nsdb, path, lambda data: None, make_event)
        self.listed = listed

    def attach(self, sub: Sub[E]) -> None:
        super().attach(sub)
        if not sub.cancelled and self.active:
            sub.deliver(self.listed())


class NodeMirror(Mirror[E]):
    """One znode, which may not exist yet (an `exists` watch then waits for it)."""

    def __init__(
        self,
        nsdb: ZkSession,
        path: str,
        name: str,
        decode: Callable[[bytes], Any],
        make_event: Callable[[str, Change, Any, int], E],
    ) -> None:
        super().__init__(nsdb, decode, make_event)
        self.path = path
        self.name = name
        self.watch = self.watcher(self.resync)

    def resync(self) -> None:
        zk, nsdb = self.nsdb._zk, self.nsdb
        for _ in range(10):
            result = nsdb._run(lambda: zk.get_async(self.path, watch=self.watch))
            if isinstance(result, NoNodeError):
                stat = nsdb._run(lambda: zk.exists_async(self.path, watch=self.watch))
                if isinstance(stat, Exception):
                    raise stat
                if stat is not None:
                    continue  # created between the two reads
                self.apply(self.name, None, None)
                return
            if isinstance(result, Exception):
                raise result
            self.apply(self.name, result[0], result[1])
            return
