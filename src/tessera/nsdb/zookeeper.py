"""The ZooKeeper NSDB backend (kazoo).

Layout under the root (default `/tessera`), every name escaped by
`codec.escape_component` so any string is exactly one path component:

    ROOT/v1/objects/<kind>/<id>      the object's JSON; its version is the znode's
                                     data version + 1 (a new object is at version 1)
    ROOT/v1/state/<table>/<key>      one state entry, the value as UTF-8; ephemeral entries
                                     are ephemeral znodes of the writing session. A table
                                     name such as `mac_table/<bridge>` is ONE component
                                     (`mac_table%2F<bridge>`): a hierarchy would make table
                                     `a/b` collide with key `b` of table `a`, and ephemeral
                                     znodes cannot have children.
    ROOT/v1/counters/<name>          a counter is the data version of this znode: an
                                     unconditional set bumps it atomically, one round trip
    ROOT/v1/elections/<name>/<guid>-<seq>  ephemeral sequential participants; lowest leads

`commit` is one ZooKeeper multi-op (a single op uses the plain request). Every request
waits at most `connect_wait` for a connection and `op_timeout` for the answer, then
raises `Unavailable`, so callers (the API) answer 503 instead of hanging.

Watches are ZooKeeper's one-shot watches, re-armed by the read that follows each
notification, on one notification thread per client. kazoo 2.11 has no persistent
(AddWatch) watches, and it drops every watch when a connection is lost; so after each
reconnect the client re-reads everything it watches and reports the difference, and
after a session expiry it first re-creates its ephemeral entries and election places.
Because a notification is followed by a read of the *current* value, rapid writes to one
object may be coalesced: a watcher always ends at the latest version and never sees a
version go backwards, but may skip intermediate ones (the memory backend reports each).
"""

from __future__ import annotations

import builtins
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    RolledBackError,
    RuntimeInconsistency,
    SessionExpiredError,
    SessionMovedError,
    ZookeeperError,
)
from kazoo.protocol.states import EventType, KazooState, WatchedEvent, ZnodeStat
from kazoo.retry import KazooRetry

from tessera.model import KINDS
from tessera.nsdb.base import (
    Change,
    Check,
    Create,
    Delete,
    LeaderElection,
    Nsdb,
    Op,
    StateEvent,
    Stored,
    StoredObject,
    Subscription,
    Update,
    WatchEvent,
    kind_class,
)
from tessera.nsdb.codec import (
    decode_object,
    describe,
    encode_object,
    escape_component,
    kind_of,
    unescape_component,
)
from tessera.nsdb.errors import AlreadyExists, Conflict, NotFound, NsdbError, Unavailable
from tessera.nsdb.notify import LeaderRunner, Notifier

log = logging.getLogger(__name__)

_CONNECTION_ERRORS = (
    ConnectionLoss,
    SessionExpiredError,  # includes ConnectionClosedError
    SessionMovedError,
    OperationTimeoutError,
)
_STEP_DOWN_WAIT = 5.0
_RETRY_DELAY = 0.5  # before re-syncing watches after a failed read while still connected

E = TypeVar("E")


class ZookeeperNsdb(Nsdb):
    """One ZooKeeper session; reconnects by itself and keeps its watches alive."""

    def __init__(
        self,
        hosts: str,
        root: str = "/tessera",
        *,
        session_timeout: float = 10.0,
        op_timeout: float = 3.0,
        connect_wait: float = 1.0,
        connect_timeout: float = 5.0,
    ) -> None:
        """`connect_timeout` is how long the constructor waits for a first connection;
        if ZooKeeper is down the client still starts, keeps trying in the background,
        and its operations raise `Unavailable` meanwhile."""
        if not root.startswith("/"):
            raise ValueError(f"ZooKeeper root '{root}' must start with '/'")
        self.hosts = hosts
        self.root = root.rstrip("/") or ""
        base = f"{self.root}/v1"
        self._objects = f"{base}/objects"
        self._state = f"{base}/state"
        self._counters = f"{base}/counters"
        self._elections_dir = f"{base}/elections"
        self._op_timeout = op_timeout
        self._connect_wait = connect_wait
        self._closed = False
        self._connected = threading.Event()
        self._session_id: int | None = None
        self._generation = 0  # sessions established and recovered so far
        self._generation_cond = threading.Condition()
        self._resync_needed = False
        self._recover_session = False
        self._lock = threading.Lock()
        self._ephemerals: dict[tuple[str, str], str] = {}
        self._mirrors: dict[str, _Mirror[Any]] = {}  # only touched on the notifier thread
        self._elections: builtins.list[ZookeeperElection] = []
        self.notifier = Notifier(f"nsdb-zk-{hosts}")
        self._zk = KazooClient(
            hosts=hosts,
            timeout=session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=1.5, max_delay=1.0),
        )
        self._timeout_error: type[Exception] = self._zk.handler.timeout_exception
        self._zk.add_listener(self._on_state)
        self._zk.start_async()
        if not self._connected.wait(connect_timeout):
            log.warning("ZooKeeper at %s is unreachable; will keep trying", hosts)
            return
        try:
            self.notifier.run_sync(lambda: None, connect_timeout)  # the first _after_connect
        except Exception:
            pass

    # -- plumbing --

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("this NSDB client is closed")

    def _current_session(self) -> int | None:
        client_id = self._zk.client_id
        return client_id[0] if client_id else None

    def _down(self) -> Unavailable:
        return Unavailable(f"ZooKeeper at {self.hosts} is unreachable")

    def _run(self, start: Callable[[], Any]) -> Any:
        """Issue one kazoo async request and wait for it, boundedly."""
        return self._run_many([start])[0]

    def _run_many(self, starts: Iterable[Callable[[], Any]]) -> builtins.list[Any]:
        """Pipeline requests; results in order (an exception instance for a request that
        failed with a ZooKeeper error other than a connection problem)."""
        self._check_open()
        if not self._connected.wait(self._connect_wait):
            raise self._down()
        pending = [start() for start in starts]
        results: builtins.list[Any] = []
        for async_result in pending:
            # op_timeout bounds the wait for *progress*: answers to a long pipeline (a
            # re-sync of thousands of znodes) keep arriving, a dead server's do not.
            try:
                results.append(async_result.get(timeout=self._op_timeout))
            except self._timeout_error:
                raise Unavailable(
                    f"ZooKeeper at {self.hosts} did not answer within {self._op_timeout:g}s"
                ) from None
            except _CONNECTION_ERRORS:
                if self._closed:
                    raise Unavailable("this NSDB client is closed") from None
                raise self._down() from None
            except ZookeeperError as exc:
                results.append(exc)
        return results

    def _on_state(self, state: str) -> None:
        """kazoo's connection thread: only flag and hand over, never block."""
        if state == KazooState.CONNECTED:
            self._connected.set()
            self.notifier.submit(self._after_connect)
        else:
            self._connected.clear()
            for election in builtins.list(self._elections):
                election.runner.step_down()  # cannot prove leadership while cut off

    def _after_connect(self) -> None:
        """Notifier thread, after every (re)connection: kazoo dropped all our watches."""
        client_id = self._zk.client_id
        if client_id is None or self._closed:
            return
        session_id = client_id[0]
        if self._session_id is not None and session_id != self._session_id:
            # A new session: the old one expired with our ephemeral znodes. Kept as a
            # flag so that a failed recovery is retried on the next attempt.
            self._recover_session = True
            for election in self._elections:
                election.node = None
        self._session_id = session_id
        try:
            self._ensure_layout()
            if self._recover_session:
                self._recreate_ephemerals()
                self._recover_session = False
            self._resync()
        except (KazooException, NsdbError) as exc:
            log.info("re-syncing with ZooKeeper failed (%s); will retry", exc)
            self._retry_later()
            return
        with self._generation_cond:
            self._generation += 1
            self._generation_cond.notify_all()

    def _guarded(self, task: Callable[[], None]) -> None:
        """Run a watch task on the notifier thread; on a connection problem, schedule a
        full re-sync instead of losing the notification."""
        if self._closed:
            return
        if not self._connected.is_set():
            self._resync_needed = True  # _after_connect will re-read everything
            return
        try:
            task()
        except (KazooException, NsdbError) as exc:
            log.info("watch refresh failed (%s); will re-sync", exc)
            self._retry_later()

    def _retry_later(self) -> None:
        self._resync_needed = True

        def resubmit() -> None:
            self.notifier.submit(lambda: self._guarded(self._resync_if_needed))

        timer = threading.Timer(_RETRY_DELAY, resubmit)
        timer.daemon = True
        timer.start()

    def _resync_if_needed(self) -> None:
        if self._resync_needed:
            self._after_connect()

    def _resync(self) -> None:
        self._resync_needed = False
        for mirror in builtins.list(self._mirrors.values()):
            mirror.resync()
        for election in builtins.list(self._elections):
            election.check()

    def _ensure_layout(self) -> None:
        existing = self._run(lambda: self._zk.get_children_async(self._objects))
        if isinstance(existing, NoNodeError):
            existing = []
        elif isinstance(existing, Exception):
            raise existing
        for kind in KINDS:
            if kind not in existing:
                self._ensure_path(f"{self._objects}/{kind}")
        for path in (self._state, self._counters, self._elections_dir):
            self._ensure_path(path)

    def _ensure_path(self, path: str) -> None:
        self._check_open()
        if not self._connected.wait(self._connect_wait):
            raise self._down()
        try:
            self._zk.ensure_path_async(path).get(timeout=self._op_timeout)
        except self._timeout_error:
            raise self._down() from None
        except _CONNECTION_ERRORS:
            raise self._down() from None

    # -- paths --

    def _kind_dir(self, kind: str) -> str:
        kind_class(kind)
        return f"{self._objects}/{kind}"

    def _obj_path(self, kind: str, id: str) -> str:
        return f"{self._kind_dir(kind)}/{escape_component(id)}"

    def _table_dir(self, table: str) -> str:
        return f"{self._state}/{escape_component(table)}"

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
        for attempt in range(2):
            try:
                if len(planned) == 1:
                    return [self._commit_one(planned[0])]
                return self._commit_multi(planned)
            except _MissingKindDir as missing:
                if attempt:
                    raise NotFound(f"{missing.path} is missing in ZooKeeper") from None
                self._ensure_path(missing.path)
        raise AssertionError("unreachable")

    def _plan(self, op: Op) -> _Planned:
        if isinstance(op, Create):
            kind = kind_of(op.obj)
            return _Planned(
                op, kind, op.obj.id, self._obj_path(kind, op.obj.id), encode_object(op.obj)
            )
        if isinstance(op, Update):
            kind = kind_of(op.obj)
            return _Planned(
                op, kind, op.obj.id, self._obj_path(kind, op.obj.id), encode_object(op.obj)
            )
        if isinstance(op, Delete | Check):
            return _Planned(op, op.kind, op.id, self._obj_path(op.kind, op.id), b"")
        raise TypeError(f"not an NSDB operation: {op!r}")

    def _commit_one(self, p: _Planned) -> int:
        zk = self._zk
        op = p.op
        if isinstance(op, Create):
            result = self._run(lambda: zk.create_async(p.path, p.data))
        elif isinstance(op, Update):
            result = self._run(lambda: zk.set_async(p.path, p.data, p.zk_version))
        elif isinstance(op, Delete):
            result = self._run(lambda: zk.delete_async(p.path, p.zk_version))
        else:
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

    def _commit_multi(self, planned: builtins.list[_Planned]) -> builtins.list[int]:
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
        results = self._run(tx.commit_async)
        if isinstance(results, Exception):
            raise NsdbError(f"ZooKeeper refused the transaction: {type(results).__name__}")
        for p, result in zip(planned, results, strict=True):
            if isinstance(result, Exception) and not isinstance(
                result, RolledBackError | RuntimeInconsistency
            ):
                raise self._op_error(p, result)
        return [p.new_version(result) for p, result in zip(planned, results, strict=True)]

    def _op_error(self, p: _Planned, exc: Exception) -> Exception:
        what = describe(p.kind, p.id)
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
        self, key: str, make: Callable[[], _Mirror[E]], callback: Callable[[E], None]
    ) -> Subscription:
        """Create (and load) the mirror for `key` if needed, then attach a subscriber that
        first gets the mirror's current content as "added" events. Loading waits for
        ZooKeeper (raising `Unavailable`), delivery is asynchronous as in the memory
        backend."""
        sub: _Sub[E] = _Sub(callback)

        def setup() -> None:
            if sub.cancelled:
                return
            if not self._connected.is_set():
                raise self._down()
            mirror = self._mirrors.get(key)
            if mirror is None:
                mirror = make()
                self._mirrors[key] = mirror
                try:
                    mirror.resync()
                except BaseException:
                    del self._mirrors[key]
                    mirror.active = False
                    raise
            self.notifier.submit(lambda: mirror.attach(sub))
            sub.mirror = mirror

        try:
            if not self.notifier.run_sync(setup, timeout=max(10.0, 3 * self._op_timeout)):
                sub.cancelled = True
                raise Unavailable(f"ZooKeeper at {self.hosts} did not answer in time")
        except KazooException:
            sub.cancelled = True
            raise self._down() from None
        except BaseException:
            sub.cancelled = True
            raise

        def cancel() -> None:
            sub.cancelled = True
            self.notifier.submit(lambda: self._detach(key, sub))

        return Subscription(cancel)

    def _detach(self, key: str, sub: _Sub[Any]) -> None:
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
            lambda: _DirMirror(self, directory, lambda data: decode_object(kind, data), event),
            callback,
        )

    def watch_object(
        self, kind: str, id: str, callback: Callable[[WatchEvent], None]
    ) -> Subscription:
        path = self._obj_path(kind, id)
        self._check_open()

        def event(
            name: str, change: Change, value: StoredObject | None, version: int
        ) -> WatchEvent:
            return WatchEvent(kind, id, change, value, version)

        return self._attach(
            "object:" + path,
            lambda: _NodeMirror(self, path, id, lambda data: decode_object(kind, data), event),
            callback,
        )

    # -- state tables --

    def state_set(self, table: str, key: str, value: str, ephemeral: bool = True) -> None:
        path = f"{self._table_dir(table)}/{escape_component(key)}"
        data = value.encode("utf-8")
        zk = self._zk
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
        with self._lock:
            if ephemeral:
                self._ephemerals[(table, key)] = value
            else:
                self._ephemerals.pop((table, key), None)

    def state_delete(self, table: str, key: str) -> None:
        path = f"{self._table_dir(table)}/{escape_component(key)}"
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
            lambda: _DirMirror(
                self, directory, lambda data: data.decode("utf-8"), event, recreate_is_change=True
            ),
            callback,
        )

    def _recreate_ephemerals(self) -> None:
        """After a session expiry: our ephemeral entries died with the old session."""
        with self._lock:
            owned = dict(self._ephemerals)
        for (table, key), value in owned.items():
            path = f"{self._table_dir(table)}/{escape_component(key)}"
            result = self._run(
                partial(
                    self._zk.create_async,
                    path,
                    value.encode("utf-8"),
                    ephemeral=True,
                    makepath=True,
                )
            )
            if isinstance(result, NodeExistsError):
                stat = self._run(partial(self._zk.exists_async, path))
                if isinstance(stat, Exception):
                    raise stat
                if stat is not None and stat.ephemeralOwner != self._current_session():
                    with self._lock:  # someone else wrote it meanwhile: theirs now
                        if self._ephemerals.get((table, key)) == value:
                            del self._ephemerals[(table, key)]
            elif isinstance(result, Exception):
                raise result

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

    @property
    def connected(self) -> bool:
        return not self._closed and self._connected.is_set()

    def leader_election(self, name: str, identifier: str) -> ZookeeperElection:
        self._check_open()
        election = ZookeeperElection(self, name, identifier)
        self._elections.append(election)
        return election

    def close(self) -> None:
        if self._closed:
            return
        for election in builtins.list(self._elections):
            election.stop()
        self._closed = True
        self._connected.clear()
        self.notifier.stop()
        try:
            self._zk.stop()  # closes the session: its ephemeral znodes vanish now
            self._zk.close()
        except Exception as exc:
            log.info("closing the ZooKeeper client: %s", exc)

    def expire_session(self, timeout: float = 10.0) -> None:
        """Test hook: make ZooKeeper expire this session for real (another connection
        takes the session over and closes it). Returns once this client has noticed,
        started a new session and re-created its ephemeral entries and watches."""
        client_id = self._zk.client_id
        if client_id is None:
            raise self._down()
        with self._generation_cond:
            generation = self._generation
        thief = KazooClient(
            hosts=self.hosts, client_id=client_id, timeout=self._zk._session_timeout / 1000
        )
        try:
            thief.start(timeout=timeout)
        finally:
            thief.stop()
            thief.close()
        with self._generation_cond:
            if not self._generation_cond.wait_for(
                lambda: self._generation > generation and self._session_id != client_id[0],
                timeout,
            ):
                raise Unavailable("the client did not recover from its session expiry in time")


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

    @property
    def zk_version(self) -> int:
        version = getattr(self.op, "version", None)
        if version is None:
            return -1
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


@dataclass(eq=False)
class _Sub(Generic[E]):
    callback: Callable[[E], None]
    cancelled: bool = False
    mirror: _Mirror[E] | None = None

    def deliver(self, event: E) -> None:
        if not self.cancelled:
            try:
                self.callback(event)
            except Exception:
                log.exception("NSDB watch callback failed")


@dataclass
class _Known:
    czxid: int
    version: int  # ZooKeeper's data version
    value: Any


class _Mirror(Generic[E]):
    """The last state this client reported for some znodes, and its subscribers.

    Only the notification thread touches it. Every read re-arms the one-shot watch on
    what it read, and the result is compared with what was reported: so a notification
    is never lost, and versions reported never go backwards.
    """

    def __init__(
        self,
        nsdb: ZookeeperNsdb,
        decode: Callable[[bytes], Any],
        make_event: Callable[[str, Change, Any, int], E],
        recreate_is_change: bool = False,
    ) -> None:
        self.nsdb = nsdb
        self.decode = decode
        self.make_event = make_event
        self.recreate_is_change = recreate_is_change
        self.subs: builtins.list[_Sub[E]] = []
        self.known: dict[str, _Known] = {}
        self.active = True

    def resync(self) -> None:
        raise NotImplementedError

    def attach(self, sub: _Sub[E]) -> None:
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
        self.known[name] = _Known(stat.czxid, stat.version, value)
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


class _DirMirror(_Mirror[E]):
    """Every child of one directory (objects of a kind, entries of a state table)."""

    def __init__(
        self,
        nsdb: ZookeeperNsdb,
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


class _NodeMirror(_Mirror[E]):
    """One znode, which may not exist yet (an `exists` watch then waits for it)."""

    def __init__(
        self,
        nsdb: ZookeeperNsdb,
        path: str,
        name: str,
        decode: Callable[[bytes], Any],
        make_event: Callable[[str, Change, Any, int], E],
    ) -> None:
        super().__init__(nsdb, decode, make_event)
        self.path = path
        self.name = name
        self._watch = self.watcher(self.resync)

    def resync(self) -> None:
        zk, nsdb = self.nsdb._zk, self.nsdb
        for _ in range(10):
            result = nsdb._run(lambda: zk.get_async(self.path, watch=self._watch))
            if isinstance(result, NoNodeError):
                stat = nsdb._run(lambda: zk.exists_async(self.path, watch=self._watch))
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


class ZookeeperElection(LeaderElection):
    """Participants are ephemeral sequential znodes; the lowest sequence leads, each
    other participant watches only its predecessor (no herd on every change)."""

    def __init__(self, nsdb: ZookeeperNsdb, name: str, identifier: str) -> None:
        self.nsdb = nsdb
        self.name = name
        self.identifier = identifier
        self.directory = f"{nsdb._elections_dir}/{escape_component(name)}"
        self.node: str | None = None  # our znode's name, touched on the notifier thread
        self.stopped = True
        self.runner = LeaderRunner(f"leader-{name}", self._term_ended)
        self._guid = uuid.uuid4().hex
        self._on_elected: Callable[[object], None] | None = None
        self._pred_watch = self._make_pred_watch()

    def _make_pred_watch(self) -> Callable[[WatchedEvent], None]:
        def on_event(event: WatchedEvent) -> None:
            if event.type != EventType.NONE:
                self.nsdb.notifier.submit(lambda: self.nsdb._guarded(self.check))

        return on_event

    def start(self, on_elected: Callable[[object], None]) -> None:
        """Joins as soon as ZooKeeper is reachable (now, or after it comes back)."""
        self.nsdb._check_open()
        if not self.stopped:
            raise RuntimeError(f"election participant '{self.identifier}' already started")
        self._on_elected = on_elected
        self.stopped = False
        # Join now when connected, so participants queue in the order they started.
        self.nsdb.notifier.run_sync(
            lambda: self.nsdb._guarded(self.check), self.nsdb._op_timeout + 1.0
        )

    @staticmethod
    def _seq(child: str) -> int:
        return int(child.rsplit("-", 1)[1])

    def _children(self) -> builtins.list[str]:
        zk, nsdb = self.nsdb._zk, self.nsdb
        children = nsdb._run(lambda: zk.get_children_async(self.directory))
        if isinstance(children, NoNodeError):
            return []
        if isinstance(children, Exception):
            raise children
        return sorted(children, key=self._seq)

    def check(self) -> None:
        """Notifier thread: join if needed, lead if first, else watch the predecessor."""
        zk, nsdb = self.nsdb._zk, self.nsdb
        for _ in range(10):
            if self.stopped:
                self._leave()
                return
            children = self._children()
            if self.node is None:
                # A create whose answer was lost may have worked: adopt it (its owner is
                # this session, or it would already be gone).
                mine = [c for c in children if c.startswith(self._guid)]
                if mine:
                    self.node = mine[0]
                else:
                    created = nsdb._run(
                        lambda: zk.create_async(
                            f"{self.directory}/{self._guid}-",
                            self.identifier.encode("utf-8"),
                            ephemeral=True,
                            sequence=True,
                            makepath=True,
                        )
                    )
                    if isinstance(created, Exception):
                        raise created
                    self.node = created.rsplit("/", 1)[1]
                    continue
            if self.node not in children:
                self.runner.step_down()  # our session ended: queue again
                self.node = None
                continue
            index = children.index(self.node)
            if index == 0:
                if self._on_elected is not None:
                    self.runner.elect(self._on_elected)
                return
            self.runner.step_down()
            predecessor = f"{self.directory}/{children[index - 1]}"
            stat = nsdb._run(partial(zk.exists_async, predecessor, watch=self._pred_watch))
            if isinstance(stat, Exception):
                raise stat
            if stat is not None:
                return
        raise NsdbError(f"election {self.name} did not settle")

    def _leave(self) -> None:
        if self.node is None:
            return
        node = f"{self.directory}/{self.node}"
        result = self.nsdb._run(lambda: self.nsdb._zk.delete_async(node))
        if isinstance(result, Exception) and not isinstance(result, NoNodeError):
            raise result
        self.node = None

    def _term_ended(self, voluntary: bool) -> None:
        def after() -> None:
            if voluntary and not self.stopped:
                self._leave()  # resigned: the next participant leads, we queue again
            self.check()

        self.nsdb.notifier.submit(lambda: self.nsdb._guarded(after))

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.runner.step_down(wait=_STEP_DOWN_WAIT)
        try:
            self.nsdb.notifier.run_sync(
                lambda: self.nsdb._guarded(self._leave), self.nsdb._op_timeout + 1.0
            )
        except Exception as exc:  # the znode is ephemeral: it goes with the session
            log.info("leaving election %s: %s", self.name, exc)

    @property
    def is_leader(self) -> bool:
        return self.runner.leading

    def leader(self) -> str | None:
        zk, nsdb = self.nsdb._zk, self.nsdb
        for _ in range(5):
            children = self._children()
            if not children:
                return None
            result = nsdb._run(partial(zk.get_async, f"{self.directory}/{children[0]}"))
            if isinstance(result, NoNodeError):
                continue
            if isinstance(result, Exception):
                raise result
            return str(result[0].decode("utf-8"))
        return None
