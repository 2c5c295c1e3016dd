"""Singleton services run only by the leader among the API servers.

Every `tessera api serve` process joins one election; the winner runs every registered
service, each on its own thread, until it loses leadership (its NSDB session ends or is
cut off, or it stops), then another process takes over. A service that fails is logged
and restarted after a pause for as long as this process leads, so one bad service
cannot take leadership away from the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

from tessera.nsdb.base import LeaderElection, Nsdb
from tessera.nsdb.errors import NsdbError

log = logging.getLogger(__name__)

ELECTION = "cluster-services"
_JOIN_WAIT = 10.0  # how long stepping down waits for a service to return


class Service(Protocol):
    """A singleton service: `run` works until `stop` is set, then returns."""

    name: str

    def run(self, stop: threading.Event) -> None: ...


class ClusterServices:
    def __init__(
        self,
        nsdb: Nsdb,
        identifier: str,
        services: Sequence[Service],
        restart_delay: float = 1.0,
    ) -> None:
        self.nsdb = nsdb
        self.identifier = identifier
        self.services = list(services)
        self.restart_delay = restart_delay
        self.terms = 0  # leadership terms served (for tests and metrics)
        self._election: LeaderElection | None = None

    def start(self) -> None:
        """Join the election (a ZooKeeper that is down is joined when it comes back)."""
        self._election = self.nsdb.leader_election(ELECTION, self.identifier)
        self._election.start(self._lead)

    def stop(self) -> None:
        if self._election is not None:
            self._election.stop()

    @property
    def is_leader(self) -> bool:
        return self._election is not None and self._election.is_leader

    def leader(self) -> str | None:
        """The identifier of the process running the services (None if unknown)."""
        if self._election is None:
            return None
        try:
            return self._election.leader()
        except NsdbError:
            return None

    def _lead(self, step_down: object) -> None:
        assert isinstance(step_down, threading.Event)
        self.terms += 1
        log.info(
            "%s leads the cluster services: starting %s",
            self.identifier,
            ", ".join(s.name for s in self.services) or "none",
        )
        threads = [
            threading.Thread(
                target=self._supervise, args=(s, step_down), name=f"service-{s.name}", daemon=True
            )
            for s in self.services
        ]
        for t in threads:
            t.start()
        step_down.wait()
        for t in threads:
            t.join(_JOIN_WAIT)
            if t.is_alive():
                log.warning("service thread %s did not stop within %gs", t.name, _JOIN_WAIT)
        log.info("%s no longer leads the cluster services", self.identifier)

    def _supervise(self, service: Service, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                service.run(stop)
            except Exception as exc:
                if isinstance(exc, NsdbError):
                    log.warning("service %s: %s; restarting", service.name, exc)
                else:
                    log.exception("service %s failed; restarting", service.name)
            if stop.wait(self.restart_delay):
                return
