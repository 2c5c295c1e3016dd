"""Fixtures of the datapath tests: namespaces that are always removed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dp_netns import PREFIX

from tessera.lab.sandbox import SandboxFactory, unavailable


@pytest.fixture
def netns() -> Iterator[SandboxFactory]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    factory = SandboxFactory(PREFIX)
    try:
        yield factory
    finally:
        factory.cleanup()
