"""`?wait=true`: a write answers once every agent it concerns has applied it.

Which agents a write concerns: those whose loaded topology holds an object the write
touched, before the write (a deleted rule was in some agents' closure) or after it (a
new binding brings a host in). The agent loads the closure of what its bound ports reach
(`agent.reach`); the API walks that rule backwards from the touched objects
(`agent.reach_back`) over its own copy of the topology (`api.reach_feed`, kept by
watches): the hosts met are concerned. "Before" is the copy with the touched objects as
they were when the write committed them (recorded by `RecordingNsdb`). Tunnel zones are
watched whole by every agent, so a change to one concerns every live agent.

Then (`tessera.nsdb.realization`): take a request number, write it into each concerned
host's request table, and wait until each has reported it, has died (its liveness entry
is gone), or the timeout passed. The write itself is committed in any case; a timeout
answers 504 naming the agents that had not applied it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tessera.api.instrumented import InstrumentedNsdb
from tessera.api.reach_feed import ReachFeed
from tessera.model import StoredObject, TunnelZone
from tessera.nsdb import tables
from tessera.nsdb.base import Check, Nsdb, Op, StateEvent, Subscription
from tessera.nsdb.errors import NsdbError
from tessera.nsdb.realization import REALIZE_COUNTER, REALIZED, decode_report, request_table

log = logging.getLogger(__name__)

WAIT_HEADER = b"x-tessera-wait"
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 600.0
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
GLOBAL_KINDS = frozenset({TunnelZone.kind})
"""Kinds whose change concerns every live agent: every agent watches them whole."""

Key = tuple[str, str]
Touched = set[Key]


@dataclass
class Recording:
    """What a waiting request's commits wrote: the objects, and each one as the API's
    copy held it before the request's first commit of it (None: absent)."""

    lookup: Callable[[Key], StoredObject | None]
    touched: Touched = field(default_factory=set)
    before: dict[Key, StoredObject | None] = field(default_factory=dict)


_recording: contextvars.ContextVar[Recording | None] = contextvars.ContextVar(
    "tessera_wait_recording", default=None
)


class RecordingNsdb(InstrumentedNsdb):
    """The API's NSDB client: also notes, for a request that will wait, which objects
    its commits wrote and what they were before (the request's context carries the
    `Recording` to fill)."""

    def commit(self, ops: Sequence[Op]) -> list[int]:
        rec = _recording.get()
        if rec is None:
            return super().commit(ops)
        keys = [_op_key(op) for op in ops if not isinstance(op, Check)]
        for key in keys:
            if key not in rec.before:
                rec.before[key] = rec.lookup(key)
        versions = super().commit(ops)
        rec.touched.update(keys)
        return versions


def _op_key(op: Op) -> Key:
    obj = getattr(op, "obj", None)
    if obj is not None:
        return (obj.kind, obj.id)
    return (op.kind, op.id)  # type: ignore[union-attr]


# --- which hosts a change concerns -----------------------------------------------------


def concerned_hosts(feed: ReachFeed, rec: Recording, live: set[str]) -> set[str]:
    """The live hosts a waiting write concerns (module doc)."""
    if any(kind in GLOBAL_KINDS for kind, _ in rec.touched):
        return set(live)
    hosts = feed.hosts(rec.touched) | feed.hosts(rec.touched, rec.before)
    return hosts & live


# --- waiting for the agents -------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    concerned: tuple[str, ...]
    pending: tuple[str, ...]  # concerned, alive, and not applied when the wait ended
    timing: tuple[tuple[str, float], ...] = ()  # (phase, seconds), for `Server-Timing`


class _Laps:
    """Where a wait's time went, phase by phase (answered as `Server-Timing`)."""

    def __init__(self) -> None:
        self.laps: list[tuple[str, float]] = []
        self._t = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps.append((name, now - self._t))
        self._t = now


class RealizationWaiter:
    """Watches the agents' reports and liveness (subscribed on first use) and waits."""

    def __init__(self, nsdb: Nsdb) -> None:
        self.nsdb = nsdb
        self.feed = ReachFeed(nsdb)
        self._cond = threading.Condition()
        self._reports: dict[str, int] = {}
        self._took: dict[str, float] = {}  # host -> its last report's own time
        self._alive: set[str] = set()
        self._subs: list[Subscription] | None = None
        self._sub_lock = threading.Lock()

    def close(self) -> None:
        with self._sub_lock, self._cond:
            subs, self._subs = self._subs or [], None
        for sub in subs:
            sub.cancel()
        self.feed.close()

    def warm(self) -> threading.Thread:
        """Load the API's copy of the topology now, in the background, rather than on
        the first waiting write (which then waits for it: seconds in a large cloud). A
        failure is only logged: that first write tries again."""

        def load() -> None:
            try:
                self._start()
            except NsdbError as exc:
                log.info("could not load the topology for --wait yet: %s", exc)

        thread = threading.Thread(target=load, name="api-wait-warm", daemon=True)
        thread.start()
        return thread

    def prepare(self) -> Recording:
        """Before a waiting write: the API's copy of the topology holds every commit
        made so far (its first call loads it); the write's commits are recorded
        against it. Raises NsdbError."""
        self._start()
        self.feed.barrier()
        return Recording(self.feed.get)

    def _start(self) -> None:
        self.feed.start()
        self._subscribe()

    def realize(self, rec: Recording, timeout: float) -> Outcome:
        deadline = time.monotonic() + timeout
        laps = _Laps()
        # The copy holds the write itself; the liveness and report watches (subscribed
        # by `prepare`, on the same notification thread) hold everything before it too.
        self.feed.barrier()
        laps.lap("barrier")
        with self._cond:
            live = set(self._alive)
        concerned = concerned_hosts(self.feed, rec, live)
        laps.lap("walk")
        if not concerned:
            return Outcome((), (), tuple(laps.laps))
        seq = self.nsdb.next_id(REALIZE_COUNTER)
        requests = [(request_table(host), str(seq)) for host in sorted(concerned)]
        try:
            self.nsdb.state_set_many([(t, k, "") for t, k in requests], ephemeral=True)
            laps.lap("request")
            with self._cond:
                self._cond.wait_for(
                    lambda: not self._pending(concerned, seq),
                    timeout=max(0.0, deadline - time.monotonic()),
                )
                pending = self._pending(concerned, seq)
                slowest = max((self._took.get(h, 0.0) for h in concerned - pending), default=0.0)
            laps.lap("agents")
            laps.laps.append(("agent", slowest))  # the slowest agent's own part of it
            if pending:  # a death the watch has not delivered yet is not a timeout
                pending &= set(self.nsdb.state_get(tables.HOST_LIVENESS))
        finally:
            try:  # some may not have been written (an error): deleting those is a no-op
                self.nsdb.state_delete_many(requests)
            except NsdbError as exc:  # ephemeral: they go with this session anyway
                log.debug("could not remove wait request %d: %s", seq, exc)
        laps.lap("cleanup")
        return Outcome(tuple(sorted(concerned)), tuple(sorted(pending)), tuple(laps.laps))

    def names(self, hosts: Iterable[str]) -> dict[str, str]:
        """Host names for messages (from the liveness entries; best effort)."""
        try:
            entries = self.nsdb.state_get(tables.HOST_LIVENESS)
        except NsdbError:
            return {}
        return {h: tables.decode_liveness(entries[h]).name for h in hosts if h in entries}

    def _pending(self, concerned: set[str], seq: int) -> set[str]:
        return {h for h in concerned if h in self._alive and self._reports.get(h, 0) < seq}

    def _subscribe(self) -> None:
        """Once (a concurrent caller waits for it; a failure leaves it to the next)."""
        with self._sub_lock:
            if self._subs is not None:
                return
            subs = [self.nsdb.watch_state(REALIZED, self._on_report)]
            try:
                subs.append(self.nsdb.watch_state(tables.HOST_LIVENESS, self._on_liveness))
            except BaseException:
                subs[0].cancel()
                raise
            with self._cond:
                self._subs = subs

    def _record(self, host: str, value: str | None) -> None:
        report = decode_report(value) if value is not None else None
        with self._cond:
            if report is None:
                self._reports.pop(host, None)
                self._took.pop(host, None)
            elif report.seq > self._reports.get(host, 0):
                self._reports[host] = report.seq
                self._took[host] = report.took
            self._cond.notify_all()

    def _on_report(self, ev: StateEvent) -> None:
        self._record(ev.key, ev.value if ev.change != "deleted" else None)

    def _on_liveness(self, ev: StateEvent) -> None:
        with self._cond:
            if ev.change == "deleted":
                self._alive.discard(ev.key)
            else:
                self._alive.add(ev.key)
            self._cond.notify_all()


# --- the HTTP side ----------------------------------------------------------------------


class WaitRequestError(ValueError):
    pass


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def wait_timeout(scope: Scope) -> float | None:
    """The timeout a request asks to wait for, None if it does not ask:
    `?wait=true[&wait_timeout=S]`, or the header `X-Tessera-Wait: true|false|S`. Values
    are checked even when they ask nothing (what the schema refuses is a 422)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    wait = query.get("wait", [None])[-1]
    timeout_text = query.get("wait_timeout", [None])[-1]
    timeout = _seconds(timeout_text, "wait_timeout") if timeout_text is not None else None
    asked = False
    if wait is not None:
        if wait.lower() not in _TRUE | _FALSE:
            raise WaitRequestError(f"wait must be true or false, not '{wait}'")
        asked = wait.lower() in _TRUE
    header = next(
        (v.decode("latin-1").strip() for k, v in scope.get("headers", []) if k == WAIT_HEADER),
        None,
    )
    if header is not None and header.lower() not in _FALSE:
        asked = True
        if header.lower() not in _TRUE and timeout is None:
            timeout = _seconds(header, "X-Tessera-Wait")
    if not asked:
        return None
    return timeout if timeout is not None else DEFAULT_TIMEOUT


def _seconds(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise WaitRequestError(f"{what} must be a number of seconds, not '{text}'") from None
    if not 0 < value <= MAX_TIMEOUT:  # NaN fails too
        raise WaitRequestError(f"{what} must be in (0, {MAX_TIMEOUT:g}] seconds, not {text}")
    return value


class WaitMiddleware:
    """Holds a waiting write's answer until its change is in effect (or the timeout)."""

    def __init__(self, app: ASGIApp, waiter: RealizationWaiter, prefix: str) -> None:
        self.app = app
        self.waiter = waiter
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") not in WRITE_METHODS
            or not str(scope.get("path", "")).startswith(self.prefix)
        ):
            await self.app(scope, receive, send)
            return
        try:
            timeout = wait_timeout(scope)
        except WaitRequestError as exc:
            await _answer(send, 422, {"message": str(exc)})
            return
        if timeout is None:
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        try:
            rec = await run_in_threadpool(self.waiter.prepare)
        except NsdbError as exc:
            await _answer(send, 503, {"message": f"cannot wait: the NSDB failed: {exc}"})
            return
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        t1 = time.monotonic()
        token = _recording.set(rec)
        try:
            await self.app(scope, receive, hold)
        finally:
            _recording.reset(token)
        before = (("prepare", t1 - t0), ("write", time.monotonic() - t1))
        status = next((m["status"] for m in held if m["type"] == "http.response.start"), 500)
        if 200 <= status < 300 and rec.touched:
            try:
                outcome = await run_in_threadpool(self.waiter.realize, rec, timeout)
            except NsdbError as exc:
                await _answer(
                    send, 503,
                    {"message": f"the change is committed, but waiting for it failed: {exc}"},
                )  # fmt: skip
                return
            if outcome.pending:
                names = await run_in_threadpool(self.waiter.names, outcome.pending)
                listed = ", ".join(
                    f"{h} ({names[h]})" if names.get(h) else h for h in outcome.pending
                )
                await _answer(
                    send, 504,
                    {
                        "message": f"the change is committed, but {len(outcome.pending)} of "
                        f"{len(outcome.concerned)} concerned agents did not apply it within "
                        f"{timeout:g}s: {listed}",
                        "hosts": list(outcome.pending),
                    },
                    [(b"server-timing", server_timing(before + outcome.timing))],
                )  # fmt: skip
                return
            _add_header(held, b"x-tessera-realized", str(len(outcome.concerned)).encode())
            _add_header(held, b"server-timing", server_timing(before + outcome.timing))
        for message in held:
            await send(message)


def server_timing(laps: Iterable[tuple[str, float]]) -> bytes:
    """`Server-Timing` (W3C): where a waiting write's time went, in milliseconds —
    prepare (the API's topology copy current), write, barrier (the copy holds the
    write), walk (which agents it concerns), request, agents (until the last report;
    `agent` is the slowest reporter's own part), cleanup."""
    return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in laps).encode()


def _add_header(held: list[Message], name: bytes, value: bytes) -> None:
    for message in held:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (name, value)]


async def _answer(
    send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


_WAIT_PARAMS = [
    {
        "name": "wait",
        "in": "query",
        "required": False,
        "description": "Answer only once every agent the change concerns has applied it "
        "(cache updated, flows invalidated); also the header `X-Tessera-Wait: true|SECONDS`.",
        "schema": {"type": "boolean", "default": False},
    },
    {
        "name": "wait_timeout",
        "in": "query",
        "required": False,
        "description": f"Seconds to wait with `wait=true` (default {DEFAULT_TIMEOUT:g}, at "
        f"most {MAX_TIMEOUT:g}); past it the answer is 504, the change staying committed.",
        "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT},
    },
]


def document_wait(schema: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Declare `wait`/`wait_timeout` and the 504 on every write of the REST API."""
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith(prefix):
            continue
        for method, operation in operations.items():
            if method.upper() not in WRITE_METHODS or not isinstance(operation, dict):
                continue
            operation.setdefault("parameters", []).extend(dict(p) for p in _WAIT_PARAMS)
            operation.setdefault("responses", {})["504"] = {
                "description": "With `wait=true`: committed, but not applied by every "
                "concerned agent in time (`hosts` names them)",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorMessage"}}
                },
            }
    return schema
