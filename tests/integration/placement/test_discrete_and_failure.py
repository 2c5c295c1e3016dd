"""A discrete resource (a bare-metal node) is taken whole by one consumer and never
split; with three Cassandra nodes, killing one during scheduling loses no claim."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from placement_helpers import check_no_overcommit, make_providers, run_schedulers, vm_requests

from tessera.cassandra.client import connect
from tessera.cassandra.cluster import CassandraCluster
from tessera.placement.model import Inventory
from tessera.placement.schema import ensure_schema
from tessera.placement.store import PlacementStore

pytestmark = pytest.mark.cassandra


def _connector(session: Any) -> Any:
    hosts = [str(h.endpoint.address) for h in session.cluster.metadata.all_hosts()]
    keyspace = session.keyspace
    return lambda: connect(hosts, keyspace)


def test_discrete_resource_is_never_split(cassandra_session: Any) -> None:
    ensure_schema(cassandra_session)
    store = PlacementStore(cassandra_session)
    assert store.create_resource_class("CUSTOM_BAREMETAL_GOLD", discrete=True)
    # Six bare-metal nodes: one of 1 unit, five of 2 units (a node exposing its two
    # halves as one class must still go to one consumer, whole).
    nodes = make_providers(store, 1, {"CUSTOM_BAREMETAL_GOLD": Inventory(total=1)}, prefix="bm1-")
    nodes += make_providers(store, 5, {"CUSTOM_BAREMETAL_GOLD": Inventory(total=2)}, prefix="bm2-")
    requests = [{"CUSTOM_BAREMETAL_GOLD": 1} for _ in range(20)]
    run = run_schedulers(_connector(cassandra_session), 4, requests)
    assert run.errors == []
    assert len(run.placed) == 6 and run.failed == 14
    check_no_overcommit(store, run)
    for pid in nodes:
        provider = store.provider(pid)
        allocations = store.provider_allocations(pid)
        # One consumer, holding the node's whole capacity.
        assert len(allocations) == 1
        [resources] = allocations.values()
        assert resources == {
            "CUSTOM_BAREMETAL_GOLD": provider.inventories["CUSTOM_BAREMETAL_GOLD"].total
        }


@pytest.mark.slow
@pytest.mark.timeout(900)  # three JVMs start first (minutes on a busy machine)
def test_killing_one_of_three_nodes_loses_no_claim(cassandra_cluster3: CassandraCluster) -> None:
    driver, session = cassandra_cluster3.connect("tessera")
    try:
        ensure_schema(session)
        session.execute("TRUNCATE placement_providers")
        session.execute("TRUNCATE placement_consumers")
        store = PlacementStore(session)
        make_providers(
            store, 20, {"VCPU": Inventory(total=40), "MEMORY_MB": Inventory(total=65536)}
        )
        killed = threading.Event()

        def kill_one(placed: int) -> None:
            if placed >= 100 and not killed.is_set():
                killed.set()
                threading.Thread(target=cassandra_cluster3.node(3).kill, daemon=True).start()

        started = time.monotonic()
        hosts = cassandra_cluster3.addresses
        run = run_schedulers(
            lambda: connect(hosts, "tessera"), 2, vm_requests(1000, seed=3), during=kill_one
        )
        assert killed.is_set()
        assert run.errors == []
        assert len(run.placed) + run.failed == 1000
        # Every claim a scheduler saw succeed is in the rows (read at QUORUM from the
        # two nodes left), and nothing is over-committed.
        check_no_overcommit(store, run)
        assert time.monotonic() - started < 600
    finally:
        driver.shutdown()
