from __future__ import annotations

from typing import Any

import pytest

from tessera.nsdb.store import TopologyStore


@pytest.fixture
def store(nsdb_factory: Any) -> TopologyStore:
    return TopologyStore(nsdb_factory())
