from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette would rather have httpx2: not our concern
    from fastapi.testclient import TestClient

from neutron_helpers import Neutron

from tessera.neutron.app import create_neutron_app
from tessera.nsdb.memory import MemoryNsdb


@pytest.fixture
def neutron() -> Iterator[Neutron]:
    """The Neutron API over a private in-memory NSDB."""
    nsdb = MemoryNsdb()
    with TestClient(create_neutron_app(nsdb), raise_server_exceptions=False) as client:
        yield Neutron(client, nsdb)
    nsdb.close()


@pytest.fixture
def any_neutron(nsdb_factory: Any) -> Iterator[Neutron]:
    """The Neutron API over each NSDB backend (ZooKeeper's transactions are real)."""
    nsdb = nsdb_factory()
    with TestClient(create_neutron_app(nsdb), raise_server_exceptions=False) as client:
        yield Neutron(client, nsdb)
