from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette would rather have httpx2: not our concern
    from fastapi.testclient import TestClient

from api_helpers import Api

from tessera.api.app import create_app
from tessera.nsdb.memory import MemoryNsdb


@pytest.fixture
def api() -> Iterator[Api]:
    """The API over a private in-memory NSDB (most API behaviour is backend-neutral)."""
    nsdb = MemoryNsdb()
    with TestClient(create_app(nsdb)) as client:
        yield Api(client, nsdb)
    nsdb.close()


@pytest.fixture
def any_api(nsdb_factory: Any) -> Iterator[Api]:
    """The API over each NSDB backend, for what depends on the backend's transactions."""
    nsdb = nsdb_factory()
    with TestClient(create_app(nsdb)) as client:
        yield Api(client, nsdb)
