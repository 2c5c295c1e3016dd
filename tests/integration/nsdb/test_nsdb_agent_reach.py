"""Demand-driven loading on ZooKeeper: the agent cache fed by index and object watches
equals a fresh load of its host's reachable part after every random change (a shorter
run of the property the unit suite checks on the memory backend)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from support.cache_reach import check_script, steps
from tessera.model import new_id
from tessera.nsdb.base import Nsdb


@pytest.mark.zookeeper
@settings(max_examples=6, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps)
def test_the_cache_equals_a_fresh_load_on_zookeeper(
    zk_nsdb: Nsdb, script: list[tuple[str, int, int]]
) -> None:
    check_script(zk_nsdb, script, timeout=20.0)


@pytest.fixture(scope="module")
def zk_nsdb(zk_server: Any) -> Iterator[Nsdb]:
    from tessera.nsdb.zookeeper import ZookeeperNsdb

    nsdb = ZookeeperNsdb(zk_server.address, f"/test-reach-{new_id()}")
    yield nsdb
    nsdb.close()
