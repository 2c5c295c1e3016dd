"""The agent's desired flows and the index that invalidates exactly the right ones.

Every flow carries the tags of what its simulation depended on (devices, ports, chains,
rules, routes, bindings, learned MACs/ARPs). `invalidate(tags)` removes precisely the
flows that carry one of them — never a global flush — and returns them so the caller
deletes them from the datapath. Pure state: no I/O, time passed in.

Lookups use the same tuple-space table as the datapaths, so the upcall loop can tell that
a missed packet is already covered by a flow installed a moment ago (a miss that raced
the install) and just reinject it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from tessera.datapath.base import Flow, Match, PacketKey
from tessera.datapath.table import MegaflowTable
from tessera.simulation.result import ExpiryClass

# Idle timeouts per expiry class, as MidoNet learned them (docs/architecture.md). UNCACHED has
# none: such a result is never installed (`SimulationResult.cacheable`).
IDLE_TIMEOUTS: Mapping[ExpiryClass, float] = MappingProxyType(
    {
        ExpiryClass.ERROR: 5.0,
        ExpiryClass.NORMAL: 60.0,
        ExpiryClass.STATEFUL: 30.0,
        ExpiryClass.TUNNEL: 300.0,
    }
)


@dataclass(frozen=True, slots=True)
class DesiredFlow:
    flow: Flow
    tags: frozenset[str]
    expiry: ExpiryClass = ExpiryClass.NORMAL
    created: float = 0.0  # time.monotonic() when simulated

    @property
    def match(self) -> Match:
        return self.flow.match

    @property
    def idle_timeout(self) -> float:
        return IDLE_TIMEOUTS[self.expiry]


class FlowTable:
    """Desired flows by match, and by tag. Written by the upcall thread only; the lock
    lets other threads (the flows socket) read a consistent copy."""

    def __init__(self) -> None:
        self._flows: dict[Match, DesiredFlow] = {}
        self._by_tag: dict[str, set[Match]] = {}
        self._lookup = MegaflowTable()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[DesiredFlow]:
        return iter(self.snapshot())

    def __contains__(self, match: object) -> bool:
        return match in self._flows

    def get(self, match: Match) -> DesiredFlow | None:
        return self._flows.get(match)

    def snapshot(self) -> list[DesiredFlow]:
        with self._lock:
            return list(self._flows.values())

    def tags(self) -> dict[str, set[Match]]:
        """A copy of the tag index (tests compare it with the flows)."""
        with self._lock:
            return {t: set(ms) for t, ms in self._by_tag.items()}

    def lookup(self, key: PacketKey) -> DesiredFlow | None:
        """The desired flow a packet with full key `key` hits, if any."""
        entry = self._lookup.lookup(key)
        return None if entry is None else self._flows.get(entry.flow.match)

    def add(self, desired: DesiredFlow) -> DesiredFlow | None:
        """Add or replace; returns the flow it replaced."""
        match = desired.match
        with self._lock:
            old = self._remove_locked(match) if match in self._flows else None
            self._flows[match] = desired
            by_tag = self._by_tag
            for tag in desired.tags:
                matches = by_tag.get(tag)
                if matches is None:
                    by_tag[tag] = {match}
                else:
                    matches.add(match)
            self._lookup.install(desired.flow)
            return old

    def remove(self, match: Match) -> DesiredFlow | None:
        with self._lock:
            return self._remove_locked(match)

    def _remove_locked(self, match: Match) -> DesiredFlow | None:
        old = self._flows.pop(match, None)
        if old is None:
            return None
        for tag in old.tags:
            matches = self._by_tag.get(tag)
            if matches is not None:
                matches.discard(match)
                if not matches:
                    del self._by_tag[tag]
        self._lookup.delete(match)
        return old

    def tagged(self, tags: Iterable[str]) -> set[Match]:
        with self._lock:
            out: set[Match] = set()
            for tag in tags:
                out |= self._by_tag.get(tag, set())
            return out

    def invalidate(self, tags: Iterable[str]) -> list[DesiredFlow]:
        """Remove every flow carrying one of `tags`; returns them."""
        removed: list[DesiredFlow] = []
        with self._lock:
            matches: set[Match] = set()
            for tag in tags:
                matches |= self._by_tag.get(tag, set())
            for match in matches:
                old = self._remove_locked(match)
                if old is not None:
                    removed.append(old)
        return removed

    def clear(self) -> list[DesiredFlow]:
        with self._lock:
            flows = list(self._flows.values())
            for d in flows:
                self._remove_locked(d.match)
            return flows
