"""Fixtures of the agent tests: an in-process cloud that is always torn down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from agent_harness import Cloud


@pytest.fixture
def cloud() -> Iterator[Cloud]:
    c = Cloud()
    try:
        yield c
    finally:
        c.close()
