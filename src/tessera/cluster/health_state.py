"""What the health monitor decides, apart from how it probes: pure, time passed in.

Each pool member watched by a TCP health monitor has a `MemberHealth`: when it is next
due (probes go every `delay` seconds, at a fixed rate, so that `max_retries` failures
in a row fit in `delay x max_retries` seconds whatever each probe took), how many
probes failed in a row, and the status last written. `RouterProbes` holds the members
probed from one router's probe port and turns one round of probe results into the
status changes to write: `max_retries` failures in a row make a member `INACTIVE`, one
success makes it `ACTIVE` again; a change is reported once, not on every probe.

A round whose failures cannot be trusted (the probe path itself does not work: the
router does not answer on the probe port) is *inconclusive*: it is skipped, counting
neither way, so that a probe port just bound, or an agent restarting, never marks
healthy members down.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tessera.model.load_balancers import LbStatus

ACTIVE: LbStatus = "ACTIVE"
INACTIVE: LbStatus = "INACTIVE"


@dataclass(frozen=True)
class Target:
    """One member as the monitor of its pool sees it (read from the NSDB)."""

    member_id: str
    address: str
    port: int
    delay: float
    timeout: float
    max_retries: int
    status: LbStatus  # as stored when read


class MemberHealth:
    """The probing state of one member."""

    def __init__(self, target: Target, now: float) -> None:
        self.target = target
        self.next_due = now
        self.failures = 0
        self.status: LbStatus | None = target.status

    def update(self, target: Target, now: float) -> None:
        """New settings, or the status as stored now (written by a previous leader, or
        a read older than this monitor's last write: then the next result writes it
        again): the count of failures is kept, the next probe comes no later than the
        new delay."""
        self.next_due = min(self.next_due, now + target.delay)
        self.target = target
        self.status = target.status

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def _advance(self, now: float) -> None:
        # Fixed rate; a round that overran (timeouts) does not make probes pile up.
        self.next_due = max(self.next_due + self.target.delay, now)

    def skip(self, now: float) -> None:
        """An inconclusive round: try again at the next slot, counting nothing."""
        self._advance(now)

    def record(self, ok: bool, now: float) -> LbStatus | None:
        """One probe's result; the status to write when it changes, else None."""
        self._advance(now)
        if ok:
            self.failures = 0
            wanted: LbStatus = ACTIVE
        else:
            self.failures += 1
            if self.failures < self.target.max_retries:
                return None
            wanted = INACTIVE
        if wanted == self.status:
            return None
        self.status = wanted
        return wanted


class RouterProbes:
    """The members probed from one router's probe port. The service's reconciler sets
    the targets (`set_targets`, from any thread); the router's probing thread asks what
    is due and hands back each round's results."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: dict[str, MemberHealth] = {}

    def set_targets(self, targets: Iterable[Target], now: float) -> None:
        with self._lock:
            wanted = {t.member_id: t for t in targets}
            for member_id in list(self._members):
                if member_id not in wanted:
                    del self._members[member_id]
            for member_id, target in wanted.items():
                health = self._members.get(member_id)
                if health is None:
                    self._members[member_id] = MemberHealth(target, now)
                else:
                    health.update(target, now)

    def targets(self) -> list[Target]:
        with self._lock:
            return [m.target for m in self._members.values()]

    def due(self, now: float) -> list[Target]:
        with self._lock:
            return [m.target for m in self._members.values() if m.due(now)]

    def next_due(self) -> float | None:
        """When the next probe is due (None: nothing to probe)."""
        with self._lock:
            return min((m.next_due for m in self._members.values()), default=None)

    def record(self, results: Mapping[str, bool], now: float) -> dict[str, LbStatus]:
        """One round's results (member id → connected); the status changes to write.
        Members that left meanwhile are ignored."""
        changes: dict[str, LbStatus] = {}
        with self._lock:
            for member_id, ok in results.items():
                health = self._members.get(member_id)
                if health is None:
                    continue
                change = health.record(ok, now)
                if change is not None:
                    changes[member_id] = change
        return changes

    def skip(self, member_ids: Iterable[str], now: float) -> None:
        with self._lock:
            for member_id in member_ids:
                health = self._members.get(member_id)
                if health is not None:
                    health.skip(now)

    def write_failed(self, member_id: str, status: LbStatus) -> None:
        """A write failed: forget the status so that the next result writes again."""
        with self._lock:
            health = self._members.get(member_id)
            if health is not None and health.status == status:
                health.status = None
