"""An NSDB client that times every call it forwards, for Prometheus."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from prometheus_client import Counter, Histogram

from tessera.model import StoredObject
from tessera.nsdb.base import (
    IndexEvent,
    LeaderElection,
    Nsdb,
    Op,
    StateEvent,
    Stored,
    Subscription,
    WatchEvent,
)
from tessera.nsdb.errors import NsdbError

R = TypeVar("R")


class InstrumentedNsdb(Nsdb):
    def __init__(self, inner: Nsdb, latency: Histogram, errors: Counter) -> None:
        self.inner = inner
        self._latency = latency
        self._errors = errors

    def _timed(self, operation: str, call: Callable[[], R]) -> R:
        start = time.perf_counter()
        try:
            return call()
        except NsdbError as exc:
            self._errors.labels(operation, type(exc).__name__).inc()
            raise
        finally:
            self._latency.labels(operation).observe(time.perf_counter() - start)

    def get(self, kind: str, id: str) -> Stored[StoredObject]:
        return self._timed("get", lambda: self.inner.get(kind, id))

    def get_many(self, kind: str, ids: Sequence[str]) -> builtins.list[Stored[StoredObject] | None]:
        return self._timed("get", lambda: self.inner.get_many(kind, ids))

    def list(self, kind: str) -> builtins.list[Stored[StoredObject]]:
        return self._timed("list", lambda: self.inner.list(kind))

    def commit(self, ops: Sequence[Op]) -> builtins.list[int]:
        return self._timed("commit", lambda: self.inner.commit(ops))

    def watch_kind(self, kind: str, callback: Callable[[WatchEvent], None]) -> Subscription:
        return self._timed("watch", lambda: self.inner.watch_kind(kind, callback))

    def watch_object(
        self, kind: str, id: str, callback: Callable[[WatchEvent], None]
    ) -> Subscription:
        return self._timed("watch", lambda: self.inner.watch_object(kind, id, callback))

    def watch_objects(
        self, requests: Sequence[tuple[str, str, Callable[[WatchEvent], None]]]
    ) -> builtins.list[Subscription]:
        return self._timed("watch", lambda: self.inner.watch_objects(requests))

    def index_list(self, index: str, key: str) -> builtins.list[str]:
        return self._timed("index_list", lambda: self.inner.index_list(index, key))

    def watch_index(
        self, index: str, key: str, callback: Callable[[IndexEvent], None]
    ) -> Subscription:
        return self._timed("watch", lambda: self.inner.watch_index(index, key, callback))

    def repair_indexes(self) -> int:
        return self._timed("repair_indexes", self.inner.repair_indexes)

    def state_set(self, table: str, key: str, value: str, ephemeral: bool = True) -> None:
        self._timed("state_set", lambda: self.inner.state_set(table, key, value, ephemeral))

    def state_create(self, table: str, key: str, value: str, ephemeral: bool = True) -> None:
        self._timed("state_create", lambda: self.inner.state_create(table, key, value, ephemeral))

    def state_delete(self, table: str, key: str) -> None:
        self._timed("state_delete", lambda: self.inner.state_delete(table, key))

    def state_set_many(
        self, entries: Sequence[tuple[str, str, str]], ephemeral: bool = True
    ) -> None:
        self._timed("state_set", lambda: self.inner.state_set_many(entries, ephemeral))

    def state_delete_many(self, entries: Sequence[tuple[str, str]]) -> None:
        self._timed("state_delete", lambda: self.inner.state_delete_many(entries))

    def state_get(self, table: str) -> dict[str, str]:
        return self._timed("state_get", lambda: self.inner.state_get(table))

    def watch_state(self, table: str, callback: Callable[[StateEvent], None]) -> Subscription:
        return self._timed("watch", lambda: self.inner.watch_state(table, callback))

    def next_id(self, counter: str) -> int:
        return self._timed("next_id", lambda: self.inner.next_id(counter))

    @property
    def connected(self) -> bool:
        return self.inner.connected

    def leader_election(self, name: str, identifier: str) -> LeaderElection:
        return self.inner.leader_election(name, identifier)

    def close(self) -> None:
        self.inner.close()

    def ping(self, timeout: float) -> bool:
        start = time.perf_counter()
        try:
            return self.inner.ping(timeout)
        finally:
            self._latency.labels("ping").observe(time.perf_counter() - start)
