"""The NSDB's id registry (ids unique across kinds) and its size limits, on both
backends (issue 13, items 2 and 3)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from support.wait import wait_until
from tessera.model import Bridge, Conditions, IpAddrGroup, Mirror, Router, new_id
from tessera.model.limits import MAX_IP_ADDR_GROUP_MEMBERS
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
    """The bridge's creator commits between the router's creator planning its commit
    and sending it: the registry entry in the router's multi-op must fail it whole."""
    a, b = nsdb_factory(), nsdb_factory()
    assert isinstance(a, ZookeeperNsdb)
    x = new_id()
    checked = a._registry_ops

    def then_b_creates(planned: Any, read_entries: bool) -> Any:
        ops = checked(planned, read_entries)
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
    # Valid groups (they are read back below), each full: together they pass the limit.
    full = [f"10.0.{i >> 8}.{i & 255}" for i in range(MAX_IP_ADDR_GROUP_MEMBERS)]
    one = len(codec.encode_object(IpAddrGroup(addrs=full)))
    count = codec.MAX_COMMIT_BYTES // one + 1
    groups = [IpAddrGroup(addrs=full) for _ in range(count)]
    with pytest.raises(ObjectTooLarge, match=rf"{count} objects .* in one transaction"):
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


@ZK_ONLY
def test_zookeeper_fills_the_registry_from_objects_stored_before_it(nsdb_factory: Any) -> None:
    """Objects written by an earlier version have no registry entry: the first client
    to connect fills it, shared ids included, and deletes work with or without one."""
    writer = nsdb_factory()
    assert isinstance(writer, ZookeeperNsdb)
    writer._zk.set(writer._ids, b"")  # a namespace from before the registry
    shared, alone, late = new_id(), new_id(), new_id()
    for obj in (Bridge(id=shared), Router(id=shared), Bridge(id=alone)):
        writer._zk.create(writer._obj_path(obj.kind, obj.id), codec.encode_object(obj))

    reader = nsdb_factory()  # connects: fills the registry
    assert isinstance(reader, ZookeeperNsdb)
    assert reader._zk.get(reader._ids)[0] == b"filled"
    assert reader._zk.get(reader._id_path(alone))[0] == b"bridges"
    assert reader._zk.get(reader._id_path(shared))[0] == b"bridges,routers"
    with pytest.raises(AlreadyExists, match=f"already used by bridge {alone}"):
        reader.create(Router(id=alone))

    # An object stored after the filling by an earlier version: no entry, still deletable.
    writer._zk.create(writer._obj_path("bridges", late), codec.encode_object(Bridge(id=late)))
    reader.delete("bridges", late)
    reader.create(Router(id=late))

    # A shared id stays taken until its last holder goes.
    reader.delete("bridges", shared)
    assert reader._zk.get(reader._id_path(shared))[0] == b"routers"
    with pytest.raises(AlreadyExists, match=f"already used by router {shared}"):
        reader.create(Bridge(id=shared))
    reader.delete("routers", shared)
    assert reader._zk.exists(reader._id_path(shared)) is None
    reader.create(Bridge(id=shared))
