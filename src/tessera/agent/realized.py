"""Realization feedback: the agent tells the API which changes are in effect here.

The API asks by writing a request number into this host's request table
(`tessera.nsdb.realization`); every topology change committed before that number was
taken reaches this agent's NSDB client before the request does. The reporter then makes
sure the changes went all the way — the cache holds them and the loads they caused,
and the flows they invalidated are gone from the datapath — and only then reports the
number. Three waits, in this order, each bounded:

1. the cache's loader is idle: what the changes made it want is subscribed;
2. the NSDB client's notification thread has delivered everything queued before now
   (a throw-away subscription to the request table is answered in order behind it);
   if that delivery made the cache want more, back to 1;
3. the agent's upcall thread has drained the cache updates queued before now, which
   invalidates their flows (`flush_token`/`flushed`, called by `Agent.run_once`).

It runs on its own thread, so the upcall thread never waits for the NSDB on its behalf.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tessera.nsdb.base import Nsdb, StateEvent, Subscription
from tessera.nsdb.errors import NsdbError
from tessera.nsdb.realization import REALIZED, Report, decode_request, request_table

log = logging.getLogger(__name__)

SETTLE_ROUNDS = 50  # loads that cause loads (a chain's rules jump to chains...)
STEP_TIMEOUT = 5.0  # one wait of the three; a stuck agent reports nothing
BARRIER_TIMEOUT = 1.0
RETRY = 0.5  # after a failed report (NSDB unavailable)


class RealizationReporter:
    def __init__(
        self,
        nsdb: Nsdb,
        host_id: str,
        cache_idle: Callable[[], bool],
        wakeup: Callable[[], None],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.nsdb = nsdb
        self.host_id = host_id
        self._cache_idle = cache_idle
        self._wakeup = wakeup
        self._wall_clock = wall_clock
        self._cond = threading.Condition()
        self._requested = 0
        self._since: float | None = None  # monotonic: the oldest unreported request came
        self.reported = 0
        # Written by the reporter under the condition, read bare by the upcall thread
        # (an int read is atomic): the drain it asks for.
        self.flush_token = 0
        self._flushed = 0
        self._stopping = False
        self._sub: Subscription | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._sub = self.nsdb.watch_state_keys(request_table(self.host_id), self._on_request)
        self._thread = threading.Thread(target=self._run, name="agent-realized", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._sub is not None:
            self._sub.cancel()
        if self._thread is not None:
            self._thread.join(timeout=STEP_TIMEOUT + 1)

    # -- the upcall thread's side ----------------------------------------------------------

    def flushed(self, token: int) -> None:
        """Cache updates queued before `token` was read have been applied."""
        if token > self._flushed:
            with self._cond:
                self._flushed = max(self._flushed, token)
                self._cond.notify_all()

    # -- requests (notification thread) ------------------------------------------------------

    def _on_request(self, ev: StateEvent) -> None:
        seq = decode_request(ev.key) if ev.change != "deleted" else None
        if seq is None:
            return
        with self._cond:
            if seq > self._requested:
                self._requested = seq
                if self._since is None:
                    self._since = time.monotonic()
                self._cond.notify_all()

    # -- the reporter thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and self._requested <= self.reported:
                    self._cond.wait()
                if self._stopping:
                    return
                target = self._requested
                since = self._since if self._since is not None else time.monotonic()
            try:
                if not self._settle():
                    continue  # stopping, or a step timed out: the next round tries again
                report = Report(target, self._wall_clock(), time.monotonic() - since)
                self.nsdb.state_set(REALIZED, self.host_id, report.encode())
            except NsdbError as exc:
                log.warning("could not report realization %d: %s", target, exc)
                self._pause(RETRY)
                continue
            with self._cond:
                self.reported = max(self.reported, target)
                if self._requested <= self.reported:
                    self._since = None

    def _settle(self) -> bool:
        for _ in range(SETTLE_ROUNDS):
            if not self._until(self._cache_idle):
                return False
            if not self._notifier_barrier():
                return False
            if self._cache_idle():
                break
        with self._cond:
            self.flush_token += 1
            token = self.flush_token
        self._wakeup()
        with self._cond:
            return (
                self._cond.wait_for(
                    lambda: self._stopping or self._flushed >= token, timeout=STEP_TIMEOUT
                )
                and not self._stopping
            )

    def _notifier_barrier(self) -> bool:
        """Whether the notification thread ran everything queued before this call: a
        new subscription's first delivery is queued behind it."""
        delivered = threading.Event()
        sub = self.nsdb.watch_state_keys(request_table(self.host_id), lambda _ev: delivered.set())
        try:
            # The request that woke us is in the table, unless the API's session ended
            # meanwhile: then nothing is delivered, and the wait ends by timeout (with
            # ZooKeeper, subscribing has already waited for the thread anyway).
            delivered.wait(BARRIER_TIMEOUT)
            return not self._stopping
        finally:
            sub.cancel()

    def _until(self, condition: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + STEP_TIMEOUT
        while not condition():
            if self._stopping or time.monotonic() > deadline:
                return False
            self._pause(0.002)
        return not self._stopping

    def _pause(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._stopping, timeout=seconds)
