"""RateLimitedLog: one line per key per interval, what it held back said next time,
and bounded memory however many keys come."""

from __future__ import annotations

import logging

import pytest
from agent_harness import Clock

from tessera.agent.lograte import RateLimitedLog

LOGGER = "tessera.test.lograte"


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_one_line_per_key_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    clock = Clock(0.0)
    log = RateLimitedLog(logging.getLogger(LOGGER), clock, interval=60)
    assert log.warning("a", "problem %s", 1)
    assert not log.warning("a", "problem %s", 2)
    assert log.warning("b", "other")
    clock.advance(59)
    assert not log.warning("a", "problem %s", 3)
    clock.advance(1)
    assert log.warning("a", "problem %s", 4)
    assert lines(caplog) == [
        "problem 1",
        "other",
        "problem 4 (and 2 more like it since the last warning)",
    ]


def test_keys_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    clock = Clock(0.0)
    log = RateLimitedLog(logging.getLogger(LOGGER), clock, interval=60, max_keys=4)
    for key in range(100):
        log.warning(key, "port %s", key)
    # Four keys of their own, then one shared line for the rest of the interval.
    assert lines(caplog) == ["port 0", "port 1", "port 2", "port 3", "port 4"]
    assert len(log._keys) <= 5
    clock.advance(60)  # intervals over: old keys are forgotten, new ones get lines again
    caplog.clear()
    log.warning("new", "port %s", "new")
    assert lines(caplog) == ["port new"]
    assert len(log._keys) <= 5
