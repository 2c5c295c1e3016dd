"""Connection state kept in Cassandra (`tessera agent --flow-state cassandra`): MidoNet's
original design, beside the local file and the peer push.

Every entry this host creates (conntrack, NAT bindings) is written to Cassandra with a
TTL equal to its idle timeout, and written again while it lives (every half timeout), so
a row outlives its connection by at most one timeout; an entry of ours that expires here
is deleted there. Nothing of it is on a packet's path: the agent thread only appends to
a bounded queue, which a writer thread drains with asynchronous requests (a full queue
drops, counted; Cassandra down only means the state is not durable meanwhile).

Reading back, two ways:
- at start, when the agent has no local state (its state file is gone: a new disk, a
  wiped state directory), it loads every row of its own (`flow_state_by_host`);
- when a simulation looks up a key the table does not have (`ConnTable` `on_miss`), the
  key is queued for a reader thread (each key at most once per `MISS_RETRY` seconds);
  an entry found there joins the table like one pushed by a peer, and its tag
  invalidates the flows that missed it — a host that never saw a connection (a
  failover) decides its next packet with the state.

Tables, in the keyspace given (`tessera` by default):
    flow_state          (key text PRIMARY KEY, record blob, owner text)
    flow_state_by_host  (host text, key text, record blob, PRIMARY KEY (host, key))
`record` is the entry in the peer-push wire format (`wire.encode_record`), so that the
decoder's checks apply to what comes back.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tessera.agent.flowstate.entry import StateKey
from tessera.agent.flowstate.wire import WireError, decode_record, encode_record
from tessera.simulation.flowstate import ConnKey, FlowStateEntry

log = logging.getLogger(__name__)

QUEUE_LIMIT = 100_000  # pending writes; beyond, new ones are dropped (counted)
IN_FLIGHT = 256  # asynchronous requests outstanding per thread
MISS_RETRY = 2.0  # seconds before the same missing key is asked again
REFRESH_EVERY = 5.0  # seconds between scans for rows to write again
MIN_TTL = 1


def key_text(key: StateKey) -> str:
    """The row key of an entry: its kind and every field of its key."""
    kind = "ct" if isinstance(key, ConnKey) else key.kind
    return f"{kind}/{key.proto}/{key.src}/{key.sport}/{key.dst}/{key.dport}/{key.device}"


def create_tables(session: Any, keyspace: str) -> None:
    """The two tables (idempotent; whoever makes the keyspace should make them first,
    see `lab.cassandra.ensure`)."""
    session.execute(
        f"CREATE TABLE IF NOT EXISTS {keyspace}.flow_state "
        "(key text PRIMARY KEY, record blob, owner text) WITH gc_grace_seconds = 600",
        timeout=60.0,
    )
    session.execute(
        f"CREATE TABLE IF NOT EXISTS {keyspace}.flow_state_by_host "
        "(host text, key text, record blob, PRIMARY KEY (host, key)) "
        "WITH gc_grace_seconds = 600",
        timeout=60.0,
    )


@dataclass
class DurableStats:
    """What `tessera conntrack --json` and the tests read."""

    written: int = 0
    deleted: int = 0
    write_errors: int = 0
    dropped: int = 0
    asked: int = 0
    found: int = 0
    read_errors: int = 0
    restored: int = 0
    read_latency: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=1000)
    )

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.read_latency)
        return {
            "written": self.written,
            "deleted": self.deleted,
            "write_errors": self.write_errors,
            "dropped": self.dropped,
            "asked": self.asked,
            "found": self.found,
            "read_errors": self.read_errors,
            "restored": self.restored,
            "read_ms_p50": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
        }


Found = Callable[[FlowStateEntry, float, float, str], None]
"""(entry, timeout, remaining TTL in seconds, owner host id)."""


class DurableFlowState:
    def __init__(
        self,
        host_id: str,
        contact_points: Sequence[str],
        keyspace: str = "tessera",
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host_id = host_id
        self.contact_points = list(contact_points)
        self.keyspace = keyspace
        self.clock = clock
        self.stats = DurableStats()
        self.on_found: Found | None = None
        # Plain deques: an append is atomic and takes no lock, which matters on the
        # agent thread; the threads wait on an event set only when they sleep.
        self._writes: collections.deque[tuple[str, FlowStateEntry, float]] = collections.deque()
        self._reads: collections.deque[StateKey] = collections.deque()
        self._write_idle = threading.Event()
        self._read_idle = threading.Event()
        self._wake_writer = threading.Event()
        self._wake_reader = threading.Event()
        self._stopping = False
        self._asked: dict[StateKey, float] = {}
        self._ours: dict[StateKey, tuple[FlowStateEntry, float, float]] = {}  # + written at
        self._ours_lock = threading.Lock()
        self._next_refresh = 0.0
        self._cluster: Any = None
        self._session: Any = None
        self._threads: list[threading.Thread] = []
        self.active = False  # connected; until then (or after a failed start) a no-op

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect and make the tables (blocking: the agent is starting); a
        CassandraError when no node answers."""
        from tessera.cassandra import client

        self._cluster, self._session = client.connect(self.contact_points)
        create_tables(self._session, self.keyspace)
        ks = self.keyspace
        prepare = self._session.prepare
        self._put = prepare(
            f"INSERT INTO {ks}.flow_state (key, record, owner) VALUES (?, ?, ?) USING TTL ?"
        )
        self._put_host = prepare(
            f"INSERT INTO {ks}.flow_state_by_host (host, key, record) VALUES (?, ?, ?) USING TTL ?"
        )
        self._del = prepare(f"DELETE FROM {ks}.flow_state WHERE key = ?")
        self._del_host = prepare(f"DELETE FROM {ks}.flow_state_by_host WHERE host = ? AND key = ?")
        self._get = prepare(
            f"SELECT record, owner, TTL(record) AS ttl FROM {ks}.flow_state WHERE key = ?"
        )
        self._get_host = prepare(
            f"SELECT record, TTL(record) AS ttl FROM {ks}.flow_state_by_host WHERE host = ?"
        )
        for target, name in (
            (self._write_loop, "flowstate-cass-w"),
            (self._read_loop, "flowstate-cass-r"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.active = True

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued writes (within `timeout`), then disconnect."""
        if not self.active:
            return
        self.active = False
        self._stopping = True
        self._wake_writer.set()
        self._wake_reader.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None

    # -- the agent thread's side (never blocks) -------------------------------------------

    def put(self, entry: FlowStateEntry, timeout: float) -> None:
        """An entry of ours, new or renewed: written with TTL = `timeout`."""
        if not self.active:
            return
        with self._ours_lock:
            self._ours[entry.key] = (entry, timeout, self.clock())
        self._enqueue(("put", entry, timeout))

    def delete(self, entry: FlowStateEntry) -> None:
        if not self.active:
            return
        with self._ours_lock:
            self._ours.pop(entry.key, None)
        self._enqueue(("delete", entry, 0.0))

    def _enqueue(self, item: tuple[str, FlowStateEntry, float]) -> None:
        if len(self._writes) >= QUEUE_LIMIT:
            self.stats.dropped += 1
            return
        self._writes.append(item)
        if self._write_idle.is_set():
            self._wake_writer.set()

    @property
    def pending_writes(self) -> int:
        """Writes queued, not yet sent (those in flight are not counted)."""
        return len(self._writes)

    def want(self, key: StateKey) -> None:
        """A simulation missed `key`: look for it in Cassandra (asynchronously)."""
        if not self.active:
            return
        now = self.clock()
        asked = self._asked.get(key)
        if asked is not None and now - asked < MISS_RETRY:
            return
        if len(self._asked) > QUEUE_LIMIT:
            self._asked = {k: t for k, t in self._asked.items() if now - t < MISS_RETRY}
        self._asked[key] = now
        if len(self._reads) >= QUEUE_LIMIT:
            self.stats.dropped += 1
            return
        self._reads.append(key)
        if self._read_idle.is_set():
            self._wake_reader.set()

    def refresh(self, alive: Callable[[StateKey], FlowStateEntry | None]) -> None:
        """Write again the rows of ours due for it (half their TTL gone) whose entries
        still live here; forget those that do not. Scans at most every REFRESH_EVERY s."""
        now = self.clock()
        if not self.active or now < self._next_refresh:
            return
        self._next_refresh = now + REFRESH_EVERY
        with self._ours_lock:
            items = list(self._ours.items())
        for key, (entry, timeout, written) in items:
            if alive(key) is None:
                with self._ours_lock:
                    self._ours.pop(key, None)
            elif now - written >= timeout / 2:
                self.put(entry, timeout)

    # -- start-up -------------------------------------------------------------------------

    def restore(self) -> list[tuple[FlowStateEntry, float, float]]:
        """(entry, timeout, remaining TTL) of every live row of this host (blocking)."""
        rows = self._session.execute(self._get_host, [self.host_id], timeout=30.0)
        out: list[tuple[FlowStateEntry, float, float]] = []
        for row in rows:
            decoded = self._decode(row.record)
            if decoded is None or not row.ttl:
                continue
            entry, timeout = decoded
            out.append((entry, timeout, float(row.ttl)))
            with self._ours_lock:
                self._ours[entry.key] = (entry, timeout, self.clock() - (timeout - row.ttl))
        self.stats.restored += len(out)
        return out

    # -- threads --------------------------------------------------------------------------

    def _write_loop(self) -> None:
        pending: list[tuple[str, list[Any]]] = []
        while True:
            item = self._next(self._writes, self._write_idle, self._wake_writer)
            if item is None:
                break
            op, entry, timeout = item
            key = key_text(entry.key)
            execute = self._session.execute_async
            try:
                if op == "put":
                    ttl = max(MIN_TTL, int(timeout + 0.999))
                    record = encode_record("add", entry, timeout)
                    futures = [
                        execute(self._put, [key, record, self.host_id, ttl]),
                        execute(self._put_host, [self.host_id, key, record, ttl]),
                    ]
                else:
                    futures = [
                        execute(self._del, [key]),
                        execute(self._del_host, [self.host_id, key]),
                    ]
            except Exception as exc:  # a closed session, a value out of range
                self.stats.write_errors += 1
                log.warning("flow state not written to Cassandra: %s", exc)
                continue
            pending.append((op, futures))
            if len(pending) >= IN_FLIGHT or not self._writes:
                self._settle(pending)
                pending = []
        self._settle(pending)

    def _settle(self, pending: list[tuple[str, list[Any]]]) -> None:
        """Wait for the requests sent; an entry counts as written (or deleted) once
        both its rows are."""
        for op, futures in pending:
            try:
                for future in futures:
                    future.result()
            except Exception as exc:
                self.stats.write_errors += 1
                log.debug("a Cassandra flow-state write failed: %s", exc)
                continue
            if op == "put":
                self.stats.written += 1
            else:
                self.stats.deleted += 1

    def _read_loop(self) -> None:
        while True:
            key = self._next(self._reads, self._read_idle, self._wake_reader)
            if key is None:
                break
            self.stats.asked += 1
            started = time.monotonic()
            try:
                row = self._session.execute(self._get, [key_text(key)], timeout=5.0).one()
            except Exception as exc:
                self.stats.read_errors += 1
                log.debug("flow state not read from Cassandra: %s", exc)
                continue
            self.stats.read_latency.append(time.monotonic() - started)
            if row is None or not row.ttl:
                continue
            decoded = self._decode(row.record)
            if decoded is None:
                continue
            self.stats.found += 1
            entry, timeout = decoded
            if self.on_found is not None:
                self.on_found(entry, timeout, float(row.ttl), str(row.owner))

    def _next(
        self, items: collections.deque[Any], idle: threading.Event, wake: threading.Event
    ) -> Any:
        """The next item of `items`, sleeping while there is none; None once stopping
        (writes still queued are sent first)."""
        while True:
            try:
                return items.popleft()
            except IndexError:
                pass
            if self._stopping:
                return None
            wake.clear()
            idle.set()
            if not items and not self._stopping:  # an append before idle.set() woke nobody
                wake.wait(0.5)
            idle.clear()

    @staticmethod
    def _decode(record: bytes) -> tuple[FlowStateEntry, float] | None:
        try:
            _op, entry, timeout = decode_record(bytes(record))
        except WireError as exc:
            log.warning("a bad flow-state row in Cassandra: %s", exc)
            return None
        return entry, timeout
