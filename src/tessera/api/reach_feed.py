"""The API's copy of the topology, kept by NSDB watches, to find whom a write concerns.

`?wait=true` asks which agents hold what a write touched (`tessera.agent.reach_back`
walks the agent's rule backwards over this copy). Reading the topology per waiting
write cost seconds at a thousand hypervisors; the copy costs one watch per object in
the API process, subscribed on the first waiting write, and a waiting write then reads
nothing but what it touched.

The copy must hold everything committed before a given moment (a port created just
before a waiting write binds it), and watch deliveries come on the client's
notification thread some time after the commit. `barrier()` waits for that thread to
deliver everything queued before it: a new subscription's first event is queued behind
them, so the API keeps one entry of its own in `BARRIER_TABLE` to be sure one comes.
ZooKeeper sends a session the notification of a change before the answer to any later
request, so a commit made before `barrier()` is in the copy when it returns.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable

from tessera.agent.reach import REACH_KINDS, Key
from tessera.agent.reach_back import Overlay, ReverseReach
from tessera.model import StoredObject
from tessera.nsdb.base import Nsdb, StateEvent, Subscription, WatchEvent
from tessera.nsdb.errors import NsdbError
from tessera.nsdb.realization import BARRIER_TABLE

log = logging.getLogger(__name__)


BARRIER_TIMEOUT = 2.0


class ReachFeed:
    def __init__(self, nsdb: Nsdb) -> None:
        self.nsdb = nsdb
        self.key = uuid.uuid4().hex  # this process's barrier entry
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._rr = ReverseReach()
        self._subs: list[Subscription] | None = None

    def start(self) -> None:
        """Subscribe (once; every later call returns at once) and wait until the
        current topology is in. Raises NsdbError."""
        with self._start_lock:
            if self._subs is not None:
                return
            self.nsdb.state_set(BARRIER_TABLE, self.key, "", ephemeral=True)
            subs: list[Subscription] = []
            try:
                for kind in REACH_KINDS:
                    subs.append(self.nsdb.watch_kind(kind, self._on_event))
                self.barrier()
            except BaseException:
                for sub in subs:
                    sub.cancel()
                with self._lock:
                    self._rr = ReverseReach()
                raise
            self._subs = subs

    def close(self) -> None:
        with self._start_lock:
            subs, self._subs = self._subs or [], None
        for sub in subs:
            sub.cancel()

    def barrier(self) -> None:
        """Return once the notifications queued before this call are delivered (so the
        copy holds every commit this client made or saw before it). Raises NsdbError."""
        for attempt in range(2):
            delivered = threading.Event()
            sub = self.nsdb.watch_state(BARRIER_TABLE, _setter(delivered))
            try:
                if delivered.wait(BARRIER_TIMEOUT):
                    return
            finally:
                sub.cancel()
            if attempt == 0:  # our entry went with an expired session: put it back
                self.nsdb.state_set(BARRIER_TABLE, self.key, "", ephemeral=True)
        raise NsdbError(f"the NSDB's notifications did not arrive within {BARRIER_TIMEOUT:g}s")

    def get(self, key: Key) -> StoredObject | None:
        with self._lock:
            return self._rr.get(key)

    def hosts(self, touched: Iterable[Key], overlay: Overlay | None = None) -> set[str]:
        """The hosts whose agents' closures hold any of `touched` (`reach_back`)."""
        with self._lock:
            return self._rr.hosts(touched, overlay)

    def _on_event(self, ev: WatchEvent) -> None:
        with self._lock:
            if ev.change == "deleted" or ev.value is None:
                self._rr.remove((ev.kind, ev.id))
            else:
                self._rr.put(ev.value)


def _setter(event: threading.Event) -> Callable[[StateEvent], None]:
    def seen(_ev: StateEvent) -> None:
        event.set()

    return seen
