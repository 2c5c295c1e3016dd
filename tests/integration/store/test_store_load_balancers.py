"""Load balancer rules between racing writers, on both backends: the write that commits
second is redone from fresh reads, then refused or merged (issue 15)."""

from __future__ import annotations

from typing import Any

import pytest
from store_helpers import BeforeCommit

from tessera.model import LoadBalancer, Pool, PoolMember, Router, Vip
from tessera.nsdb.errors import AlreadyExists, IntegrityError
from tessera.nsdb.store import TopologyStore


def _pool(store: TopologyStore) -> Pool:
    lb = store.create(LoadBalancer(router_id=store.create(Router()).id))
    return store.create(Pool(load_balancer_id=lb.id))


def _member(store: TopologyStore, pool: Pool, address: str) -> PoolMember:
    return store.create(PoolMember(pool_id=pool.id, address=address, protocol_port=80))


def _racing(nsdb_factory: Any, hook: Any) -> TopologyStore:
    """A second writer whose first commit waits for `hook` (the other writer) to run."""
    return TopologyStore(BeforeCommit(nsdb_factory(), hook))  # type: ignore[arg-type]


def test_racing_load_balancers_of_one_router_one_wins(nsdb_factory: Any) -> None:
    first = TopologyStore(nsdb_factory())
    router = first.create(Router())
    winner: list[LoadBalancer] = []
    second = _racing(
        nsdb_factory, lambda: winner.append(first.create(LoadBalancer(router_id=router.id)))
    )
    with pytest.raises(AlreadyExists, match="already has load balancer") as exc:
        second.create(LoadBalancer(router_id=router.id))
    assert winner[0].id in str(exc.value)
    assert [lb.id for lb in first.list(LoadBalancer)] == [winner[0].id]


def test_racing_members_at_one_address_one_wins(nsdb_factory: Any) -> None:
    first = TopologyStore(nsdb_factory())
    pool = _pool(first)
    second = _racing(nsdb_factory, lambda: _member(first, pool, "10.0.0.1"))
    with pytest.raises(AlreadyExists, match=r"at 10\.0\.0\.1:80"):
        _member(second, pool, "10.0.0.1")
    assert [m.address for m in first.list(PoolMember)] == ["10.0.0.1"]


def test_racing_updates_to_one_member_address_one_wins(nsdb_factory: Any) -> None:
    """Updates serialise on the pool too, not only creates."""
    first = TopologyStore(nsdb_factory())
    pool = _pool(first)
    a, b = _member(first, pool, "10.0.0.1"), _member(first, pool, "10.0.0.2")
    fields = {"pool_id": pool.id, "protocol_port": 80, "address": "10.0.0.3"}
    second = _racing(nsdb_factory, lambda: first.update(PoolMember, a.id, fields))
    with pytest.raises(AlreadyExists, match=r"at 10\.0\.0\.3:80"):
        second.update(PoolMember, b.id, fields)
    assert sorted(m.address for m in first.list(PoolMember)) == ["10.0.0.2", "10.0.0.3"]


def test_a_vip_racing_the_delete_of_its_pool_is_not_left_behind(nsdb_factory: Any) -> None:
    first = TopologyStore(nsdb_factory())
    pool = _pool(first)
    second = _racing(nsdb_factory, lambda: first.delete(Pool, pool.id))
    vip = Vip(load_balancer_id=pool.load_balancer_id, pool_id=pool.id, address="203.0.113.1",
              protocol_port=80)  # fmt: skip
    with pytest.raises(IntegrityError, match="pool_id: no pool"):
        second.create(vip)
    assert first.list(Vip) == [] and first.list(Pool) == []


def test_status_written_during_a_client_update_is_kept(nsdb_factory: Any) -> None:
    """The health-monitor service marks a member down while a client changes its
    weight: both changes survive, whichever commits first."""
    first = TopologyStore(nsdb_factory())
    pool = _pool(first)
    member = _member(first, pool, "10.0.0.1")
    second = _racing(nsdb_factory, lambda: first.set_status(PoolMember, member.id, "INACTIVE"))
    fields = {**member.model_dump(), "weight": 4, "status": "ACTIVE"}
    second.update(PoolMember, member.id, fields)
    stored = first.get(PoolMember, member.id)
    assert (stored.weight, stored.status) == (4, "INACTIVE")
    # And the other way round: the status write re-runs on the client's update.
    third = _racing(
        nsdb_factory, lambda: first.update(PoolMember, member.id, {**fields, "weight": 7})
    )
    assert third.set_status(PoolMember, member.id, "ACTIVE") is True
    stored = first.get(PoolMember, member.id)
    assert (stored.weight, stored.status) == (7, "ACTIVE")
