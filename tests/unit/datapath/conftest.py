"""Fixtures of the datapath tests: namespaces that are always removed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dp_netns import NetnsFactory, namespaces_missing


@pytest.fixture
def netns() -> Iterator[NetnsFactory]:
    reason = namespaces_missing()
    if reason:
        pytest.skip(reason)
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()
