"""The host-liveness janitor: `Host.alive` follows the agent's NSDB session.

An agent writes an ephemeral entry in the liveness table when it registers; the entry
vanishes with its session (a crash or a partition included). The janitor watches that
table and the hosts, and writes `alive` wherever it disagrees with the table. It always
decides from a fresh read of the table rather than from the event itself, so events
that arrive late or coalesced cannot make it write a stale answer, and a periodic full
pass repairs anything missed while no janitor ran.
"""

from __future__ import annotations

import logging
import threading
import time

from tessera.cluster.service import SINGLETON, Redundancy, ServiceContext, ServiceEnv
from tessera.model import Host
from tessera.nsdb import tables
from tessera.nsdb.base import Nsdb, StateEvent, Subscription, WatchEvent
from tessera.nsdb.store import TopologyStore

log = logging.getLogger(__name__)


class HostLivenessJanitor:
    """A singleton cluster service: one janitor writes `alive` for the whole cluster.
    Ready after its first full pass (until then stored `alive` flags may be stale)."""

    name = "host-liveness"
    redundancy: Redundancy = SINGLETON
    ready_when_started = False

    @classmethod
    def from_env(cls, env: ServiceEnv) -> HostLivenessJanitor:
        """The cluster's factory: option `full_pass_interval` (seconds, default 10)."""
        interval = env.options.get("full_pass_interval", 10.0)
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise ValueError("full_pass_interval must be a positive number of seconds")
        return cls(env.nsdb, float(interval))

    def __init__(self, nsdb: Nsdb, full_pass_interval: float = 10.0) -> None:
        self.nsdb = nsdb
        self.store = TopologyStore(nsdb)
        self.full_pass_interval = full_pass_interval
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._wake = threading.Event()

    def _note(self, host_id: str) -> None:
        with self._lock:
            self._pending.add(host_id)
        self._wake.set()

    def _on_state(self, event: StateEvent) -> None:
        self._note(event.key)

    def _on_host(self, event: WatchEvent) -> None:
        if event.change != "deleted":
            self._note(event.id)

    def run(self, ctx: ServiceContext) -> None:
        stop = ctx.stop
        subs: list[Subscription] = []
        # Stepping down must not wait for the next timeout: let `stop` wake the loop too.
        threading.Thread(
            target=self._wake_on, args=(stop,), name="janitor-stop", daemon=True
        ).start()
        try:
            subs.append(self.nsdb.watch_state(tables.HOST_LIVENESS, self._on_state))
            subs.append(self.nsdb.watch_kind(Host.kind, self._on_host))
            next_full = 0.0
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_full:
                    self.full_pass()
                    ctx.ready()
                    next_full = now + self.full_pass_interval
                else:
                    self._drain()
                self._wake.wait(max(0.0, min(1.0, next_full - time.monotonic())))
                self._wake.clear()
        finally:
            for sub in subs:
                sub.cancel()

    def _wake_on(self, stop: threading.Event) -> None:
        stop.wait()
        self._wake.set()

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, set()
        if not pending:
            return
        try:
            live = self.store.live_hosts()
            for host_id in sorted(pending):
                if self.store.set_host_alive(host_id, host_id in live):
                    log.info("host %s is %s", host_id, "alive" if host_id in live else "dead")
        except Exception:
            with self._lock:  # try these again on the next round
                self._pending |= pending
            raise

    def full_pass(self) -> None:
        """Compare every host with the liveness table (also clears pending work)."""
        with self._lock:
            self._pending.clear()
        live = self.store.live_hosts()
        for host in self.store.list(Host):
            should = host.id in live
            if host.alive != should and self.store.set_host_alive(host.id, should):
                log.info("host %s is %s", host.id, "alive" if should else "dead")
