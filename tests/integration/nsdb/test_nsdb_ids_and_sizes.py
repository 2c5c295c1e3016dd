"""The NSDB's id registry (ids unique across kinds) and its size limits, on both
backends (issue 13, items 2 and 3)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from support.wait import wait_until
from tessera.model import Bridge, Conditions, IpAddrGroup, Mirror, Router, new_id
from tessera.nsdb import codec
from tessera.nsdb.base import Create, Delete, Nsdb
from tessera.nsdb.errors import AlreadyExists, ObjectTooLarge
from tessera.nsdb.zookeeper import ZookeeperNsdb

# The ZooKeeper half of `nsdb_factory` only (what the memory backend has no analogue of).
ZK_ONLY = pytest.mark.parametrize(
    "nsdb_factory", [pytest.param("zookeeper", marks=pytest.mark.zookeeper)], indirect=True
)


def huge_mirror(target_bytes: int) -> Mirror:
    """A mirror whose stored form exceeds `target_bytes`, built without validation so
    that the model's own list limits cannot stop it first: this tests the NSDB's net."""
    condition = Conditions(in_ports=[new_id() for _ in range(20)], nw_proto=6)
    per = len(condition.model_dump_json(exclude_defaults=True))
    count = target_bytes // per + 1
    return Mirror.model_construct(
        id=new_id(), name="", tenant_id=None, to_port_id=new_id(), conditions=[condition] * count
    )


def big_group(target_bytes: int) -> IpAddrGroup:
    addrs = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(target_bytes // 14)]
    return IpAddrGroup.model_construct(id=new_id(), name="", addrs=addrs)


def test_an_id_is_unique_across_kinds_and_clients(nsdb_factory: Any) -> None:
    a, b = nsdb_factory(), nsdb_factory()
    x = new_id()
    a.create(Bridge(id=x))
    with pytest.raises(AlreadyExists, match=f"already used by bridge {x}"):
        b.create(Router(id=x))
    with pytest.raises(AlreadyExists, match=f"bridge {x} already exists"):
        b.create(Bridge(id=x))
    # Freed by the delete within the same transaction that takes it for another kind.
    a.commit([Delete("bridges", x), Create(Router(id=x))])
    assert b.get("routers", x).value == Router(id=x)
    b.delete("routers", x)
    a.create(Bridge(id=x))


@ZK_ONLY
def test_zookeeper_of_two_racing_creators_of_one_id_exactly_one_wins(
    nsdb_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The router's creator has checked that no other kind holds the id, then the
    bridge's creator commits: the registry entry in the router's multi-op must fail."""
    a, b = nsdb_factory(), nsdb_factory()
    assert isinstance(a, ZookeeperNsdb)
    x = new_id()
    checked = a._registry_ops

    def then_b_creates(planned: Any) -> Any:
        ops = checked(planned)
        b.create(Bridge(id=x))
        return ops

    monkeypatch.setattr(a, "_registry_ops", then_b_creates)
    with pytest.raises(AlreadyExists, match=f"already used by bridge {x}"):
        a.create(Router(id=x))
    assert [s.value.id for s in a.list("routers")] == []
    assert a.get("bridges", x).value == Bridge(id=x)


@ZK_ONLY
def test_zookeeper_a_registry_entry_no_object_holds_is_reclaimed(nsdb_factory: Any) -> None:
    nsdb = nsdb_factory()
    assert isinstance(nsdb, ZookeeperNsdb)
    x = new_id()
    nsdb._zk.create(nsdb._id_path(x), b"routers")  # left behind; no router x exists
    assert nsdb.create(Bridge(id=x)) == 1
    assert nsdb._zk.get(nsdb._id_path(x))[0] == b"bridges"


def test_an_object_above_the_limit_is_refused_and_nothing_is_written(nsdb: Nsdb) -> None:
    mirror = huge_mirror(codec.MAX_OBJECT_BYTES)
    with pytest.raises(ObjectTooLarge, match=r"mirror .* bytes .* limit of 524288 bytes"):
        nsdb.create(mirror)
    assert nsdb.connected
    assert nsdb.list("mirrors") == []
    nsdb.create(Bridge())  # the client carries on


def test_a_transaction_above_the_limit_is_refused(nsdb: Nsdb) -> None:
    groups = [big_group(300 * 1024) for _ in range(4)]  # each fits, together they do not
    for group in groups:
        assert len(codec.encode_object(group)) < codec.MAX_OBJECT_BYTES
    with pytest.raises(ObjectTooLarge, match=r"4 objects .* in one transaction"):
        nsdb.commit([Create(g) for g in groups])
    assert nsdb.connected
    assert nsdb.list("ip_addr_groups") == []
    nsdb.commit([Create(g) for g in groups[:2]])
    assert len(nsdb.list("ip_addr_groups")) == 2


@ZK_ONLY
def test_zookeeper_keeps_its_session_and_leadership_after_a_write_too_large_for_it(
    nsdb_factory: Any,
) -> None:
    """Before the limits, ZooKeeper closed the connection on a request above its
    jute.maxbuffer (1 MiB): the write answered 503, the session's watches were lost and
    its leader stepped down. Now the write is refused before it is sent."""
    nsdb = nsdb_factory()
    assert isinstance(nsdb, ZookeeperNsdb)
    steps_down = threading.Event()

    def lead(stop: object) -> None:
        assert isinstance(stop, threading.Event)
        stop.wait()
        steps_down.set()

    election = nsdb.leader_election("size-test", "me")
    election.start(lead)
    wait_until(lambda: election.is_leader)
    session = nsdb._session_id
    for ops in (
        [Create(huge_mirror(2 * 1024 * 1024))],
        [Create(big_group(400 * 1024)) for _ in range(3)],
    ):
        with pytest.raises(ObjectTooLarge):
            nsdb.commit(ops)
        assert nsdb.connected and election.is_leader
    assert nsdb.create(Bridge()) == 1
    assert nsdb._session_id == session and not steps_down.is_set() and election.is_leader
    election.stop()
