"""Waiting for something that happens asynchronously, with a deadline.

The one polling loop of the suite: watch events, elections, processes, agents and labs
all settle at their own pace, and a test must neither sleep a fixed time (slow and
flaky) nor hang when the thing never happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Long enough for a loaded, shared CI machine; a passing test waits far less.
WAIT = 20.0


def wait_until(
    predicate: Callable[[], T],
    timeout: float = WAIT,
    interval: float = 0.05,
    *,
    what: str = "the condition",
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    Past `timeout` seconds the test fails naming `what` and the predicate's last value
    (which often says why, e.g. the state a process was stuck in).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} (last value {value!r})"
            )
        time.sleep(interval)
