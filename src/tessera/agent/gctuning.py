"""Keep Python's cyclic garbage collector off the miss path.

A miss allocates a few hundred objects, so with Python's default threshold a young
collection runs every few misses, and an older one now and then walks the whole heap
(kazoo, pydantic, the topology cache): measured, that is a large share of a first
packet's extra latency, and in a big process a full collection stalls every thread for
hundreds of milliseconds. What exists once the agent has started lives as long as the
agent: it is frozen out of every later collection, and young collections run rarely.
Cycles are still collected, only later.
"""

from __future__ import annotations

import gc

THRESHOLD = 20_000  # allocations between young-generation collections (default 700)


def tune() -> tuple[int, int, int]:
    """Freeze what exists now and raise the young threshold; returns the thresholds
    before, for `restore`."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(THRESHOLD, 10, 10)
    return before


def restore(thresholds: tuple[int, int, int]) -> None:
    """Undo `tune` (tests that run an agent inside a longer-lived process)."""
    gc.unfreeze()
    gc.set_threshold(*thresholds)
