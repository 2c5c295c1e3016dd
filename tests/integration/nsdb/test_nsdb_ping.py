"""`Nsdb.ping`: a round trip the backend must answer within the timeout (what the
health check asks), on both backends; never an exception."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tessera.nsdb.memory import MemoryNsdb
from tessera.nsdb.zkserver import ZookeeperServer
from tessera.nsdb.zookeeper import ZookeeperNsdb


def test_a_live_backend_answers_a_closed_client_does_not(nsdb_factory: Any) -> None:
    nsdb = nsdb_factory()
    assert nsdb.ping(0.8) is True
    nsdb.close()
    start = time.monotonic()
    assert nsdb.ping(0.8) is False
    assert time.monotonic() - start < 0.9


def test_an_unavailable_memory_store_does_not_answer() -> None:
    nsdb = MemoryNsdb()
    nsdb.store.set_available(False)
    try:
        assert nsdb.ping(0.1) is False
    finally:
        nsdb.store.set_available(True)
    assert nsdb.ping(0.1) is True
    nsdb.close()


@pytest.mark.zookeeper
def test_a_stopped_zookeeper_does_not_answer(private_zk: ZookeeperServer) -> None:
    nsdb = ZookeeperNsdb(private_zk.address, "/ping")
    try:
        assert nsdb.ping(0.8)
        private_zk.stop()
        start = time.monotonic()
        assert nsdb.ping(0.8) is False
        assert time.monotonic() - start < 0.9
    finally:
        nsdb.close()
