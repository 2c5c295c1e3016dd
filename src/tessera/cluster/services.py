"""The services of one cluster node: supervision, one election per singleton, status.

Each enabled service gets a `ServiceRunner`, which runs it and restarts it after an
exponential back-off when it fails. An `every-node` service runs for the node's whole
life. A `singleton` service has an election of its own in the NSDB
(`cluster-service-NAME`): the node runs it only while it leads that election, so a
node can lead one service and follow another, and a failing service never costs the
node its other leaderships (its restarts happen inside its own term).

Leadership is spread over the nodes two ways: a node volunteers for its singletons one
after another, waiting `spread_delay` seconds per service it already leads before each
(so nodes started together share the work), and every `rebalance_interval` seconds a
node that leads at least two services more than some other node queued for one of them
resigns the one it took most recently (that node, or the next in the queue, takes it;
services the node led for longer keep their leader).

The node publishes the state of its services as one ephemeral entry of the NSDB state
table `cluster_nodes` (key: the node's name; value: JSON): `tessera cluster status`
reads it, and it vanishes with the node's session.
"""

from __future__ import annotations

import datetime
import json
import logging
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tessera.cluster.service import (
    SINGLETON,
    ClusterService,
    Redundancy,
    ServiceContext,
    ServiceEnv,
    ready_when_started,
    redundancy_of,
)
from tessera.nsdb.base import LeaderElection, Nsdb
from tessera.nsdb.errors import AlreadyExists, NsdbError

log = logging.getLogger(__name__)

STATUS_TABLE = "cluster_nodes"
"""key: node name; value: the node's status JSON (`ClusterServices.snapshot`). Ephemeral."""

ELECTION_PREFIX = "cluster-service-"
_JOIN_WAIT = 10.0  # how long stepping down waits for a service to return
_ERROR_LEN = 300  # a last error is shown, not archived

# Roles, as shown by `GET /cluster/services` and `tessera cluster status`.
LEADER = "leader"  # a singleton this node runs: it leads the service's election
FOLLOWER = "follower"  # a singleton queued behind another node's leader
STANDBY = "standby"  # enabled, not (yet) in the election: waiting to volunteer
ACTIVE = "active"  # an every-node service running here
DISABLED = "disabled"  # not enabled on this node (or its code could not be loaded)


def election_name(service: str) -> str:
    return ELECTION_PREFIX + service


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Timing:
    """How the node paces its services (the `[cluster]` table of the config file)."""

    spread_delay: float = 0.5
    rebalance_interval: float = 5.0  # 0: never resign a service to spread leadership
    restart_initial: float = 0.5
    restart_max: float = 30.0

    def backoff(self, failures: int) -> float:
        """The pause before restarting after the `failures`-th failure in a row:
        `restart_initial` doubled each time, never above `restart_max`."""
        if failures <= 0:
            return 0.0
        return float(min(self.restart_max, self.restart_initial * 2 ** min(failures - 1, 60)))


@dataclass(frozen=True)
class DisabledService:
    """A service known to the node but not run there (`reason` when it failed to load)."""

    name: str
    redundancy: Redundancy | None = None
    reason: str | None = None


class ServiceRunner:
    """Runs one service on this node and keeps its status."""

    def __init__(self, node: ClusterServices, service: ClusterService, env: ServiceEnv) -> None:
        self.node = node
        self.service = service
        self.env = env
        self.name = env.name
        self.redundancy = redundancy_of(service)
        self._lock = threading.Lock()
        self.role = STANDBY if self.redundancy == SINGLETON else ACTIVE
        self.since = _now()
        self.since_monotonic = time.monotonic()
        self.running = False
        self.ready = False
        self.restarts = 0
        self.failures_in_row = 0
        self.last_error: str | None = None
        self.last_error_at: str | None = None
        self.terms = 0
        self.election: LeaderElection | None = None
        self._resign = threading.Event()
        self._term_stop: threading.Event | None = None

    # -- status --

    def set_role(self, role: str) -> None:
        with self._lock:
            if role == self.role:
                return
            self.role = role
            self.since = _now()
            self.since_monotonic = time.monotonic()
        log.info("service %s: %s on %s", self.name, role, self.node.identifier)
        self.node.changed()

    def _set_ready(self) -> None:
        with self._lock:
            if self.ready or not self.running:
                return
            self.ready = True
        self.node.changed()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "name": self.name,
                "redundancy": self.redundancy,
                "enabled": True,
                "role": self.role,
                "since": self.since,
                "running": self.running,
                "ready": self.ready,
                "restarts": self.restarts,
                "last_error": self.last_error,
                "last_error_at": self.last_error_at,
            }

    # -- running --

    def supervise(self, stop: threading.Event) -> None:
        """Run the service until `stop`, restarting it with back-off when it fails."""
        while not stop.is_set():
            started = time.monotonic()
            ctx = ServiceContext(self.env, stop, self._set_ready)
            with self._lock:
                self.running, self.ready = True, ready_when_started(self.service)
            self.node.changed()
            error: str | None = None
            try:
                self.service.run(ctx)
                if not stop.is_set():
                    error = "returned without being asked to stop"
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}".splitlines()[0][:_ERROR_LEN]
                if isinstance(exc, NsdbError):
                    log.warning("service %s failed: %s", self.name, exc)
                else:
                    log.exception("service %s failed", self.name)
            with self._lock:
                self.running = self.ready = False
                if error is None:
                    delay = 0.0
                else:
                    if time.monotonic() - started >= self.node.timing.restart_max:
                        self.failures_in_row = 0  # it ran fine for a long while: start over
                    self.failures_in_row += 1
                    self.last_error, self.last_error_at = error, _now()
                    delay = self.node.timing.backoff(self.failures_in_row)
            self.node.changed()
            if error is None or stop.wait(delay):
                return
            with self._lock:
                self.restarts += 1
            log.info("service %s: restart %d after %.1fs", self.name, self.restarts, delay)

    def lead(self, step_down: object) -> None:
        """The election's `on_elected`: run the service for one leadership term. Returns
        when the term must end (`step_down`), or to resign (`resign()`)."""
        assert isinstance(step_down, threading.Event)
        term_stop = threading.Event()
        with self._lock:
            self.terms += 1
            self._term_stop = term_stop
            self.failures_in_row = 0  # a new term starts its back-off afresh
        self._resign.clear()

        def relay() -> None:
            step_down.wait()
            term_stop.set()

        threading.Thread(target=relay, name=f"relay-{self.name}", daemon=True).start()
        self.set_role(LEADER)
        worker = threading.Thread(
            target=self.supervise, args=(term_stop,), name=f"service-{self.name}", daemon=True
        )
        worker.start()
        term_stop.wait()
        worker.join(_JOIN_WAIT)
        if worker.is_alive():
            log.warning("service %s did not stop within %gs", self.name, _JOIN_WAIT)
        with self._lock:
            self._term_stop = None
        resigned = self._resign.is_set() and not step_down.is_set()
        self.set_role(FOLLOWER if resigned or not self.node.stopping else STANDBY)
        log.info("%s no longer leads %s", self.node.identifier, self.name)

    def resign(self) -> None:
        """End this term voluntarily: the election queues this node again at the back."""
        with self._lock:
            term_stop = self._term_stop
        if term_stop is not None:
            log.info("%s resigns %s to spread leadership", self.node.identifier, self.name)
            self._resign.set()
            term_stop.set()


class ClusterServices:
    """The services of one node. `services` are the enabled ones (constructed);
    `disabled` are listed in status only."""

    def __init__(
        self,
        nsdb: Nsdb,
        identifier: str,
        services: Sequence[ClusterService],
        *,
        timing: Timing | None = None,
        disabled: Sequence[DisabledService] = (),
        envs: Sequence[ServiceEnv] | None = None,
        registry: CollectorRegistry | None = None,
        info: dict[str, Any] | None = None,
        claim_wait: float = 12.0,
    ) -> None:
        """`envs`, parallel to `services`, are the environments they were built with
        (default: a bare one named after each service's `name`)."""
        self.nsdb = nsdb
        self.identifier = identifier
        self.timing = timing or Timing()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.info = dict(info or {})
        self.claim_wait = claim_wait
        if envs is None:
            envs = [ServiceEnv(s.name, identifier, nsdb, {}, self.registry) for s in services]
        self.runners = [ServiceRunner(self, s, e) for s, e in zip(services, envs, strict=True)]
        names = [r.name for r in self.runners] + [d.name for d in disabled]
        if len(set(names)) != len(names):
            raise ValueError(f"service names repeat: {', '.join(sorted(names))}")
        self.disabled = list(disabled)
        self.started_at = _now()
        self.stopping = False
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._published: str | None = None

    def add(self, service: ClusterService, env: ServiceEnv) -> None:
        """One more enabled service (before `start`)."""
        if any(r.name == env.name for r in self.runners) or any(
            d.name == env.name for d in self.disabled
        ):
            raise ValueError(f"service {env.name} is already known to this node")
        self.runners.append(ServiceRunner(self, service, env))

    def close_services(self) -> None:
        """Release what services hold outside a run (`close()`, e.g. a bound socket)."""
        for r in self.runners:
            close = getattr(r.service, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    log.exception("closing service %s", r.name)

    # -- queries --

    @property
    def singletons(self) -> list[ServiceRunner]:
        return [r for r in self.runners if r.redundancy == SINGLETON]

    def runner(self, name: str) -> ServiceRunner:
        return next(r for r in self.runners if r.name == name)

    @property
    def is_leader(self) -> bool:
        """Whether this node leads at least one singleton service."""
        return any(r.role == LEADER for r in self.singletons)

    def leads(self) -> list[str]:
        return [r.name for r in self.singletons if r.role == LEADER]

    @property
    def terms(self) -> int:
        """Leadership terms served, over all services (for tests and logs)."""
        return sum(r.terms for r in self.runners)

    def leader(self, service: str | None = None) -> str | None:
        """The node leading `service` (default: the first singleton), None if unknown."""
        runners = [r for r in self.singletons if service is None or r.name == service]
        if not runners or runners[0].election is None:
            return None
        try:
            return runners[0].election.leader()
        except NsdbError:
            return None

    def status(self) -> list[dict[str, Any]]:
        """Every known service on this node: enabled ones first, in start order."""
        out = [r.status() for r in self.runners]
        for d in self.disabled:
            out.append(
                {
                    "name": d.name,
                    "redundancy": d.redundancy,
                    "enabled": False,
                    "role": DISABLED,
                    "since": self.started_at,
                    "running": False,
                    "ready": False,
                    "restarts": 0,
                    "last_error": d.reason,
                    "last_error_at": self.started_at if d.reason else None,
                }
            )
        return out

    def snapshot(self) -> dict[str, Any]:
        """What the node publishes in `STATUS_TABLE`."""
        return {
            "node": self.identifier,
            "started": self.started_at,
            **self.info,
            "services": self.status(),
        }

    # -- life cycle --

    def start(self) -> None:
        """Claim the node's name, start the every-node services, then volunteer for the
        singletons (in the background: a ZooKeeper that is down is joined when back)."""
        self._claim_name()
        self._spawn(self._publish_loop, "cluster-status")
        for r in self.runners:
            if r.redundancy != SINGLETON:
                self._spawn(r.supervise, f"service-{r.name}", self._stop)
        if self.singletons:
            self._spawn(self._volunteer, "cluster-volunteer")
            if self.timing.rebalance_interval > 0:
                self._spawn(self._rebalance_loop, "cluster-rebalance")

    def _spawn(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _claim_name(self) -> None:
        """Two live nodes with one name would overwrite each other's status: refuse,
        but wait out the session of a previous run of this very node (killed, its
        entry not yet expired)."""
        value = json.dumps(self.snapshot(), sort_keys=True)
        deadline = time.monotonic() + self.claim_wait
        while True:
            try:
                self.nsdb.state_create(STATUS_TABLE, self.identifier, value)
                self._published = value
                return
            except AlreadyExists:
                if time.monotonic() >= deadline:
                    raise ValueError(
                        f"another live cluster node is named '{self.identifier}'"
                    ) from None
                time.sleep(0.5)
            except NsdbError as exc:  # unreachable: published later by the loop
                log.warning("cannot publish the node's status yet: %s", exc)
                return

    def stop(self) -> None:
        """Step down from every election, stop every service, withdraw the status."""
        if self._stop.is_set():
            return
        self.stopping = True
        self._stop.set()
        self._changed.set()
        for r in self.singletons:
            if r.election is not None:
                try:
                    r.election.stop()
                except NsdbError as exc:
                    log.info("leaving the election of %s: %s", r.name, exc)
        deadline = time.monotonic() + _JOIN_WAIT
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        if self._published is None:
            return  # never claimed: the entry, if any, is another live node's
        try:
            self.nsdb.state_delete(STATUS_TABLE, self.identifier)
        except NsdbError:
            pass  # ephemeral: it goes with the session anyway

    def changed(self) -> None:
        self._changed.set()

    # -- background work --

    def _volunteer(self) -> None:
        for r in self.singletons:
            delay = self.timing.spread_delay * len(self.leads())
            if self._stop.wait(delay):
                return
            while not self._stop.is_set():
                try:
                    election = self.nsdb.leader_election(election_name(r.name), self.identifier)
                    r.election = election
                    r.set_role(FOLLOWER)
                    election.start(r.lead)
                    if self._stop.is_set():  # stop() ran meanwhile and missed this one
                        election.stop()
                    break
                except NsdbError as exc:
                    log.warning("cannot join the election of %s yet: %s", r.name, exc)
                    r.election = None
                    r.set_role(STANDBY)
                    self._stop.wait(1.0)

    def _rebalance_loop(self) -> None:
        while not self._stop.wait(self.timing.rebalance_interval * random.uniform(0.75, 1.25)):
            try:
                self.rebalance_once(self.nsdb.state_get(STATUS_TABLE))
            except NsdbError as exc:
                log.info("cannot rebalance now: %s", exc)

    def rebalance_once(self, table: dict[str, str]) -> str | None:
        """Resign one service if another node queued for it leads two fewer; returns the
        service resigned. `table` is the status table as read from the NSDB."""
        mine = [r for r in self.singletons if r.role == LEADER]
        if len(mine) < 2:
            return None
        counts: dict[str, int] = {}
        followers: dict[str, set[str]] = {}
        for node, raw in table.items():
            if node == self.identifier:
                continue
            try:
                services = json.loads(raw).get("services", [])
            except (ValueError, AttributeError):
                continue
            counts[node] = sum(1 for s in services if s.get("role") == LEADER)
            for s in services:
                if s.get("role") == FOLLOWER:
                    followers.setdefault(str(s.get("name")), set()).add(node)
        candidates = [
            r
            for r in mine
            if any(counts.get(n, 0) <= len(mine) - 2 for n in followers.get(r.name, ()))
        ]
        if not candidates:
            return None
        newest = max(candidates, key=lambda r: r.since_monotonic)
        newest.resign()
        return newest.name

    def _publish_loop(self) -> None:
        while True:
            self._changed.wait(5.0)
            self._changed.clear()
            if self._stop.is_set():
                return
            value = json.dumps(self.snapshot(), sort_keys=True)
            if value == self._published:
                continue
            try:
                self.nsdb.state_set(STATUS_TABLE, self.identifier, value)
                self._published = value
            except NsdbError as exc:
                log.info("cannot publish the node's status: %s", exc)
                self._changed.set()
                if self._stop.wait(1.0):
                    return
            time.sleep(0.05)  # coalesce bursts of changes into one write


def read_cluster_status(nsdb: Nsdb) -> list[dict[str, Any]]:
    """Every live node's published status, by node name (unreadable entries skipped)."""
    nodes: list[dict[str, Any]] = []
    for name, raw in sorted(nsdb.state_get(STATUS_TABLE).items()):
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, dict):
            value.setdefault("node", name)
            nodes.append(value)
    return nodes


class ServiceCollector(Collector):
    """Per-service gauges and counters of this node, at scrape time."""

    def __init__(self, services: ClusterServices) -> None:
        self.services = services

    def describe(self) -> Iterator[Metric]:
        yield from self._families([])

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self.services.status())

    @staticmethod
    def _families(status: list[dict[str, Any]]) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "tessera_cluster_service_up",
            "1 while the service runs on this node and reports ready",
            labels=["service"],
        )
        leader = GaugeMetricFamily(
            "tessera_cluster_service_leader",
            "1 while this node leads the (singleton) service",
            labels=["service"],
        )
        enabled = GaugeMetricFamily(
            "tessera_cluster_service_enabled",
            "1 if the service is enabled on this node",
            labels=["service"],
        )
        restarts = CounterMetricFamily(
            "tessera_cluster_service_restarts",
            "Restarts of the service on this node after a failure",
            labels=["service"],
        )
        for s in status:
            name = [str(s["name"])]
            up.add_metric(name, int(bool(s["running"] and s["ready"])))
            leader.add_metric(name, int(s["role"] == LEADER))
            enabled.add_metric(name, int(bool(s["enabled"])))
            restarts.add_metric(name, int(s["restarts"]))
        yield up
        yield leader
        yield enabled
        yield restarts
