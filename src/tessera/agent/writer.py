"""NSDB writes that must never block the upcall loop: learned MACs and ARP entries.

The upcall thread only enqueues; one writer thread talks to the NSDB. Writes to the same
(table, key) are coalesced — only the latest value matters — so a burst of re-learning
costs one round trip, and an NSDB outage only delays the queue (retried with backoff,
bounded in size) instead of stalling forwarding.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from tessera.nsdb.base import Nsdb
from tessera.nsdb.errors import NsdbError

log = logging.getLogger(__name__)

_DELETE = object()


class StateWriter:
    def __init__(self, nsdb: Nsdb, max_pending: int = 10000) -> None:
        self.nsdb = nsdb
        self.max_pending = max_pending
        self._pending: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._inflight = 0  # a write taken off the queue, not yet done (or put back)
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.failures = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="agent-state-writer", daemon=True)
        self._thread.start()

    def stop(self, flush_timeout: float = 2.0) -> None:
        """Stop after trying to flush what is queued for up to `flush_timeout` seconds."""
        deadline = time.monotonic() + flush_timeout
        with self._cond:
            while (self._pending or self._inflight) and time.monotonic() < deadline:
                self._cond.wait(0.05)
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def set(self, table: str, key: str, value: str) -> None:
        self._put((table, key), value)

    def delete(self, table: str, key: str) -> None:
        self._put((table, key), _DELETE)

    def _put(self, where: tuple[str, str], value: object) -> None:
        with self._cond:
            if where in self._pending:
                self._pending.move_to_end(where)
            elif len(self._pending) >= self.max_pending:
                self.dropped += 1
                return
            self._pending[where] = value
            self._cond.notify_all()

    def pending(self) -> int:
        """Writes not done yet: queued, or being tried (a failing one is tried, then
        queued again: it must not look done in between)."""
        with self._cond:
            return len(self._pending) + self._inflight

    def _run(self) -> None:
        backoff = 0.05
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                (table, key), value = self._pending.popitem(last=False)
                self._inflight = 1
            try:
                if value is _DELETE:
                    self.nsdb.state_delete(table, key)
                else:
                    assert isinstance(value, str)
                    self.nsdb.state_set(table, key, value, ephemeral=True)
            except NsdbError as exc:
                self.failures += 1
                log.warning("state write %s/%s failed (%s); retrying", table, key, exc)
                with self._cond:
                    self._pending.setdefault((table, key), value)
                    self._pending.move_to_end((table, key), last=False)
                    self._inflight = 0
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            with self._cond:
                self._inflight = 0
                self.written += 1
                self._cond.notify_all()
