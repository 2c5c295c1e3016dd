"""Schedulers racing for the same providers in a real Cassandra: no provider is ever
over-committed (the allocations are summed from the rows), lost races are retried and
counted, and an inventory changed mid-run is obeyed."""

from __future__ import annotations

from typing import Any

import pytest
from placement_helpers import (
    check_no_overcommit,
    make_providers,
    run_schedulers,
    vm_requests,
)

from tessera.placement.model import Inventory
from tessera.placement.schema import ensure_schema
from tessera.placement.store import PlacementStore

pytestmark = pytest.mark.cassandra

# 20 providers of 40 VCPUs and 64 GiB: 1,000 VMs ask for ~2,000 VCPUs and ~1.9 TB of
# memory, more than the 800 VCPUs there are, so the providers fill up and the last
# claims race for the last room.
INVENTORY = {
    "VCPU": Inventory(total=40),
    "MEMORY_MB": Inventory(total=65536, reserved=512, allocation_ratio=1.0),
}


@pytest.fixture
def store(cassandra_session: Any) -> PlacementStore:
    ensure_schema(cassandra_session)
    return PlacementStore(cassandra_session)


def _connector(session: Any) -> Any:
    cluster = session.cluster
    keyspace = session.keyspace

    def connect() -> tuple[Any, Any]:
        from tessera.cassandra.client import connect as cql

        return cql([str(h.endpoint.address) for h in cluster.metadata.all_hosts()], keyspace)

    return connect


@pytest.mark.parametrize("schedulers", [2, 10])
def test_concurrent_schedulers_never_overcommit(
    store: PlacementStore, cassandra_session: Any, schedulers: int
) -> None:
    make_providers(store, 20, INVENTORY)
    run = run_schedulers(_connector(cassandra_session), schedulers, vm_requests(1000))
    assert run.errors == []
    assert len(run.placed) + run.failed == 1000
    sums = check_no_overcommit(store, run)
    # The providers really filled up: the requests outnumber the room.
    assert run.failed > 0
    used = sum(s.get("VCPU", 0) for s in sums.values())
    assert used >= 20 * 40 - 20 * 3, used
    # Every lost race is counted, on the request record too.
    records = [store.request(c) for c in list(run.placed)[:50]]
    assert all(r is not None and r["state"] == "placed" for r in records)
    assert run.retries > 0, "schedulers racing for full providers never lost a race?"


def test_inventory_change_during_scheduling_is_respected(
    store: PlacementStore, cassandra_session: Any
) -> None:
    providers = make_providers(store, 4, INVENTORY, prefix="chg")
    shrunk, grown = providers[0], providers[1]
    changed: dict[str, int] = {}

    def change(placed: int) -> None:
        if placed < 20 or changed:
            return
        # Shrink one provider to what it uses now plus 2 VCPUs, grow another.
        for _ in range(50):
            p = store.provider(shrunk)
            try:
                vcpus = p.usages.get("VCPU", 0) + 2
                new = {**p.inventories, "VCPU": Inventory(total=vcpus)}
                store.set_inventories(shrunk, p.generation, new)
                changed["shrunk"] = vcpus
                break
            except Exception:  # a scheduler's claim moved the generation: read again
                continue
        for _ in range(50):
            p = store.provider(grown)
            try:
                store.set_inventories(
                    grown, p.generation, {**p.inventories, "VCPU": Inventory(total=80)}
                )
                changed["grown"] = 80
                break
            except Exception:
                continue

    requests = [{"VCPU": 1, "MEMORY_MB": 256} for _ in range(250)]
    run = run_schedulers(_connector(cassandra_session), 2, requests, during=change)
    assert run.errors == []
    assert changed.keys() == {"shrunk", "grown"}
    sums = check_no_overcommit(store, run)
    assert sums[shrunk]["VCPU"] <= changed["shrunk"]
    # The grown provider took more than its old capacity: the change was seen.
    assert sums[grown]["VCPU"] > 40
    assert store.provider(grown).inventories["VCPU"].total == 80
