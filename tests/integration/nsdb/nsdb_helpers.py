"""Helpers for the NSDB contract suite (imported by the test modules beside it)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tessera.model import Bridge

WAIT = 10.0  # generous upper bound for an asynchronous event; tests pass much faster


class EventLog:
    """Collects watch events delivered on a client's notification thread."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, event: Any) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def snapshot(self) -> list[Any]:
        with self._cond:
            return list(self.events)

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = WAIT) -> list[Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.events), timeout):
                raise AssertionError(f"condition not met within {timeout}s; events: {self.events}")
            return list(self.events)

    def wait_count(self, n: int, timeout: float = WAIT) -> list[Any]:
        return self.wait_for(lambda evs: len(evs) >= n, timeout)


def bridge(name: str = "br") -> Bridge:
    return Bridge(name=name)
