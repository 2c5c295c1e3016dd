"""Warnings about a recurring problem, logged once per interval per key, never lost.

A problem on the miss path repeats with every packet of a flood: a log line each would
bury everything else (and cost the upcall thread more than the packet did). So each key
(a port and what went wrong) is logged at most once per `interval`; what was held back
meanwhile is counted and said on the next line for that key. Counters (Prometheus)
count every occurrence; this only decides what reaches the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

LOG_INTERVAL = 60.0
"""Seconds between two log lines for one key."""
MAX_KEYS = 1024
"""Keys remembered at once. Past it (a problem on more ports than that within an
interval), keys whose interval is over are forgotten first, then every new key shares
one entry, so memory stays bounded and something is still logged each interval."""

_OVERFLOW = ("<many keys>",)


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        interval: float = LOG_INTERVAL,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.logger = logger
        self.clock = clock
        self.interval = interval
        self.max_keys = max_keys
        # key -> [time the next line may be logged, occurrences held back since the last]
        self._keys: dict[Hashable, list[float]] = {}

    def warning(
        self,
        key: Hashable,
        message: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Log `message % args` as a warning unless `key` was logged less than an
        interval ago; returns whether it was logged."""
        now = self.clock()
        state = self._keys.get(key)
        if state is None:
            if len(self._keys) >= self.max_keys:
                self._forget(now)
            if len(self._keys) >= self.max_keys:
                key = _OVERFLOW
                state = self._keys.get(key)
        if state is not None and now < state[0]:
            state[1] += 1
            return False
        held = int(state[1]) if state is not None else 0
        self._keys[key] = [now + self.interval, 0]
        if held:
            message += " (and %d more like it since the last warning)"
            args = (*args, held)
        self.logger.warning(message, *args, exc_info=exc_info)
        return True

    def _forget(self, now: float) -> None:
        """Drop the keys whose interval is over and that held nothing back."""
        for key in [k for k, (until, held) in self._keys.items() if now >= until and not held]:
            del self._keys[key]
