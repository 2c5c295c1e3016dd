"""The ZooKeeper session under `ZookeeperNsdb`: bounded requests, reconnection, recovery.

kazoo drops every watch when a connection is lost and every ephemeral znode when a
session expires; this class notices both (kazoo's state listener) and, on the client's
notification thread, puts back what the NSDB promised its users: the layout, the
ephemeral state entries (`_ephemerals`), the watch mirrors and the election places.
"""

from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
    SessionMovedError,
    ZookeeperError,
)
from kazoo.protocol.states import KazooState
from kazoo.retry import KazooRetry

from tessera.model import ID_KINDS, KINDS
from tessera.nsdb.codec import escape_component, kind_class
from tessera.nsdb.errors import NsdbError, Unavailable
from tessera.nsdb.notify import Notifier
from tessera.nsdb.zookeeper.mirrors import Mirror, NodeMirror

if TYPE_CHECKING:
    from tessera.nsdb.zookeeper.election import ZookeeperElection

log = logging.getLogger("tessera.nsdb.zookeeper")

CONNECTION_ERRORS = (
    ConnectionLoss,
    SessionExpiredError,  # includes ConnectionClosedError
    SessionMovedError,
    OperationTimeoutError,
)
# The data of ROOT/v1/ids once every object stored before the registry has its entry.
_IDS_FILLED = b"filled"
_RETRY_DELAY = 0.5  # before re-syncing watches after a failed read while still connected


class ZkSession:
    """One ZooKeeper session and what must survive its reconnections and expiries.

    Requests go through `_run`/`_run_many`, which bound every wait (`Unavailable`
    instead of a hang). After each reconnection (`_after_connect`, notifier thread) the
    layout is ensured, ephemeral entries are re-created if the session changed, and every
    watch mirror and election re-reads what it follows. `ZookeeperNsdb` builds the NSDB
    operations on top; the mirrors and elections call back into this class only.
    """

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
        self._ids = f"{base}/ids"
        self._index = f"{base}/index"
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
        self._mirrors: dict[str, Mirror[Any]] = {}  # only touched on the notifier thread
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
            except CONNECTION_ERRORS:
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
        self._resync_many(builtins.list(self._mirrors.values()))
        for election in builtins.list(self._elections):
            election.check()

    def _resync_many(self, mirrors: Sequence[Mirror[Any]]) -> None:
        """Read mirrors again (new ones, or all after a reconnection): the objects' reads
        pipelined, one round trip for all instead of one each (an agent holds hundreds,
        and a thousand agents reconnecting at once must not each wait for hundreds of
        round trips); a missing object (an `exists` watch to set) and directory mirrors
        by their own resync."""
        nodes = [m for m in mirrors if isinstance(m, NodeMirror)]
        zk = self._zk
        results = self._run_many([partial(zk.get_async, m.path, watch=m.watch) for m in nodes])
        for mirror, result in zip(nodes, results, strict=True):
            if isinstance(result, NoNodeError):
                mirror.resync()
            elif isinstance(result, Exception):
                raise result
            else:
                mirror.apply(mirror.name, result[0], result[1])
        for other in mirrors:
            if not isinstance(other, NodeMirror):
                other.resync()

    def _ensure_layout(self) -> None:
        existing = self._run(lambda: self._zk.get_children_async(self._objects))
        if isinstance(existing, NoNodeError):
            existing = []
        elif isinstance(existing, Exception):
            raise existing
        for kind in KINDS:
            if kind not in existing:
                self._ensure_path(f"{self._objects}/{kind}")
        for path in (self._state, self._counters, self._elections_dir, self._ids, self._index):
            self._ensure_path(path)
        self._fill_id_registry()
        self._fill_indexes()

    def _fill_indexes(self) -> None:
        """Index what was stored before the indexes existed (the client does it)."""

    def _fill_id_registry(self) -> None:
        """Once per namespace: give every object stored before the id registry existed
        its entry (`ids/<id>`, data: the kind), then mark the registry filled (the data
        of `ids`). Idempotent, so clients doing it at once, or one interrupted and
        redone, are harmless. Two objects of two kinds sharing an id (possible before)
        are logged: the first kind listed keeps the entry. An object deleted while this
        runs may leave an entry no object holds; the next create of that id reclaims
        it."""
        marker = self._run(partial(self._zk.get_async, self._ids))
        if isinstance(marker, Exception):
            raise marker
        if marker[0] == _IDS_FILLED:
            return
        for kind in ID_KINDS:
            children = self._run(partial(self._zk.get_children_async, f"{self._objects}/{kind}"))
            if isinstance(children, NoNodeError):
                continue
            if isinstance(children, Exception):
                raise children
            data = kind.encode("utf-8")
            results = self._run_many(
                [partial(self._zk.create_async, f"{self._ids}/{c}", data) for c in children]
            )
            for child, result in zip(children, results, strict=True):
                if isinstance(result, NodeExistsError):
                    self._record_duplicate(f"{self._ids}/{child}", kind)
                elif isinstance(result, Exception):
                    raise result
        done = self._run(partial(self._zk.set_async, self._ids, _IDS_FILLED, marker[1].version))
        if isinstance(done, BadVersionError):
            return  # another client filled it meanwhile
        if isinstance(done, Exception):
            raise done
        log.info("id registry filled from the objects stored before it")

    def _record_duplicate(self, path: str, kind: str) -> None:
        """An entry exists for an object of `kind`: if it names other kinds, the id was
        shared across kinds before ids were unique. The entry then lists every holder
        (a later version than a fresh entry's 0, so a blind release of it fails and
        reads first: the id stays taken until its last holder is deleted)."""
        held = self._run(partial(self._zk.get_async, path))
        if isinstance(held, NoNodeError):
            return
        if isinstance(held, Exception):
            raise held
        data, stat = held
        kinds = [k for k in data.decode("utf-8", "replace").split(",") if k]
        if kind in kinds:
            return
        log.warning(
            "id %s is held by objects of several kinds (%s) stored before ids were unique "
            "across kinds; they keep working, but delete all but one",
            path.rsplit("/", 1)[-1],
            ", ".join([*kinds, kind]),
        )
        merged = ",".join(sorted([*kinds, kind])).encode("utf-8")
        result = self._run(partial(self._zk.set_async, path, merged, stat.version))
        if isinstance(result, BadVersionError):
            self._record_duplicate(path, kind)  # changed meanwhile: merge into the new one
        elif isinstance(result, Exception):
            raise result

    def _ensure_path(self, path: str) -> None:
        self._check_open()
        if not self._connected.wait(self._connect_wait):
            raise self._down()
        try:
            self._zk.ensure_path_async(path).get(timeout=self._op_timeout)
        except self._timeout_error:
            raise self._down() from None
        except CONNECTION_ERRORS:
            raise self._down() from None

    def _ensure_paths(self, paths: Iterable[str]) -> None:
        """`_ensure_path` for many paths, pipelined."""
        for result in self._run_many([partial(self._zk.ensure_path_async, p) for p in paths]):
            if isinstance(result, Exception) and not isinstance(result, NodeExistsError):
                raise result

    # -- paths --

    def _kind_dir(self, kind: str) -> str:
        kind_class(kind)
        return f"{self._objects}/{kind}"

    def _obj_path(self, kind: str, id: str) -> str:
        return f"{self._kind_dir(kind)}/{escape_component(id)}"

    def _id_path(self, id: str) -> str:
        return f"{self._ids}/{escape_component(id)}"

    def _table_dir(self, table: str) -> str:
        return f"{self._state}/{escape_component(table)}"

    def _entry_path(self, table: str, key: str) -> str:
        return f"{self._table_dir(table)}/{escape_component(key)}"

    def _written(self, table: str, key: str, value: str, ephemeral: bool) -> None:
        """Note an entry this client has just written: an ephemeral one is re-created
        after a session expiry (`_recreate_ephemerals`) and overwritten in one round
        trip; a persistent one is no longer ours to re-create."""
        with self._lock:
            if ephemeral:
                self._ephemerals[(table, key)] = value
            else:
                self._ephemerals.pop((table, key), None)

    # -- recovery --

    def _recreate_ephemerals(self) -> None:
        """After a session expiry: our ephemeral entries died with the old session."""
        with self._lock:
            owned = dict(self._ephemerals)
        for (table, key), value in owned.items():
            path = self._entry_path(table, key)
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

    # -- session --

    @property
    def connected(self) -> bool:
        return not self._closed and self._connected.is_set()

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
