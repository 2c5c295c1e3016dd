"""Indexes on both backends: written in the same commit as the objects they list,
watchable per key, and rebuilt for data stored before they existed."""

from __future__ import annotations

from typing import Any

import pytest
from nsdb_helpers import EventLog

from support.wait import wait_until
from tessera.model import Bridge, Port, PortGroup, Route, Router, new_id
from tessera.nsdb.base import Create, Delete, IndexEvent, Nsdb, Update
from tessera.nsdb.errors import Conflict
from tessera.nsdb.memory import MemoryNsdb

HOST_A, HOST_B = new_id(), new_id()


def _port(device: str, host: str | None = None, **kw: Any) -> Port:
    bound = {"host_id": host, "interface_name": "tap0"} if host else {}
    return Port(device_id=device, type="Bridge", **bound, **kw)


def _ids(nsdb: Nsdb, index: str, key: str) -> set[str]:
    return set(nsdb.index_list(index, key))


def test_a_commit_indexes_bindings_and_children_with_the_objects(nsdb: Nsdb) -> None:
    br, rt = Bridge(name="br"), Router(name="rt")
    p1, p2 = _port(br.id, HOST_A), _port(br.id)
    route = Route(
        router_id=rt.id, dst_network_addr="10.0.0.0", dst_network_length=8, type="BlackHole"
    )
    nsdb.commit([Create(br), Create(rt), Create(p1), Create(p2), Create(route)])
    assert _ids(nsdb, "host_ports", HOST_A) == {p1.id}
    assert _ids(nsdb, "device_ports", br.id) == {p1.id, p2.id}
    assert _ids(nsdb, "router_routes", rt.id) == {route.id}
    assert _ids(nsdb, "host_ports", HOST_B) == set()


def test_an_update_moves_an_object_between_keys_and_a_delete_drops_it(nsdb: Nsdb) -> None:
    br = Bridge(name="br")
    port = _port(br.id, HOST_A)
    nsdb.commit([Create(br), Create(port)])
    nsdb.update(port.model_copy(update={"host_id": HOST_B}))
    assert _ids(nsdb, "host_ports", HOST_A) == set()
    assert _ids(nsdb, "host_ports", HOST_B) == {port.id}
    nsdb.update(port.model_copy(update={"host_id": None, "interface_name": None}), 2)
    assert _ids(nsdb, "host_ports", HOST_B) == set()
    nsdb.delete("ports", port.id)
    assert _ids(nsdb, "device_ports", br.id) == set()


def test_a_list_field_indexes_each_element(nsdb: Nsdb) -> None:
    a, b, c = new_id(), new_id(), new_id()
    group = PortGroup(name="g", port_ids=[a, b])
    nsdb.create(group)
    assert _ids(nsdb, "port_groups_of", a) == {group.id}
    nsdb.update(group.model_copy(update={"port_ids": [b, c]}))
    assert _ids(nsdb, "port_groups_of", a) == set()
    assert _ids(nsdb, "port_groups_of", b) == {group.id}
    assert _ids(nsdb, "port_groups_of", c) == {group.id}


def test_a_failed_commit_leaves_the_indexes_alone(nsdb: Nsdb) -> None:
    br = Bridge(name="br")
    port = _port(br.id, HOST_A)
    nsdb.commit([Create(br), Create(port)])
    with pytest.raises(Conflict):
        nsdb.commit([Update(port.model_copy(update={"host_id": HOST_B})), Update(br, version=7)])
    with pytest.raises(Conflict):
        nsdb.commit([Create(_port(br.id, HOST_B)), Delete("bridges", br.id, version=9)])
    assert _ids(nsdb, "host_ports", HOST_A) == {port.id}
    assert _ids(nsdb, "host_ports", HOST_B) == set()
    assert _ids(nsdb, "device_ports", br.id) == {port.id}


def test_an_update_racing_another_client_is_indexed_by_its_final_state(
    nsdb_factory: Any,
) -> None:
    one, two = nsdb_factory(), nsdb_factory()
    br = Bridge(name="br")
    port = _port(br.id, HOST_A)
    one.commit([Create(br), Create(port)])
    for i in range(6):  # unconditional writes from two clients, alternating hosts
        (one if i % 2 else two).update(
            port.model_copy(update={"host_id": HOST_B if i % 2 else HOST_A})
        )
    assert _ids(one, "host_ports", HOST_B) == {port.id}
    assert _ids(two, "host_ports", HOST_A) == set()


def test_watch_index_lists_then_follows_one_key(nsdb_factory: Any) -> None:
    watcher, writer = nsdb_factory(), nsdb_factory()
    br = Bridge(name="br")
    first = _port(br.id, HOST_A)
    writer.commit([Create(br), Create(first), Create(_port(br.id, HOST_B))])
    log = EventLog()
    watcher.watch_index("host_ports", HOST_A, log)
    events = log.wait_count(2)
    assert events == [
        IndexEvent("host_ports", HOST_A, "added", first.id),
        IndexEvent("host_ports", HOST_A, "listed", ""),
    ]
    second = _port(br.id, HOST_A)
    writer.create(second)
    writer.create(_port(br.id, HOST_B))  # another key: not reported
    writer.update(first.model_copy(update={"host_id": HOST_B}))
    events = log.wait_count(4)
    assert events[2:] == [
        IndexEvent("host_ports", HOST_A, "added", second.id),
        IndexEvent("host_ports", HOST_A, "deleted", first.id),
    ]


def test_watch_index_of_an_empty_key_says_listed(nsdb: Nsdb) -> None:
    log = EventLog()
    sub = nsdb.watch_index("router_routes", new_id(), log)
    assert log.wait_count(1)[0].change == "listed"
    sub.cancel()


def test_an_unknown_index_is_refused(nsdb: Nsdb) -> None:
    with pytest.raises(KeyError, match="no NSDB index"):
        nsdb.index_list("ports_by_colour", "red")


def _forget_indexes(nsdb_factory: Any, nsdb: Nsdb) -> None:
    """Make the namespace look as one written before the indexes existed."""
    if isinstance(nsdb, MemoryNsdb):
        nsdb.drop_indexes()
        return
    from kazoo.client import KazooClient

    zk = KazooClient(hosts=nsdb.hosts)  # type: ignore[attr-defined]
    zk.start(timeout=10)
    try:
        index_root = f"{nsdb.root}/v1/index"  # type: ignore[attr-defined]
        zk.delete(index_root, recursive=True)
        zk.ensure_path(index_root)
    finally:
        zk.stop()
        zk.close()


def test_data_stored_before_the_indexes_is_indexed(nsdb_factory: Any) -> None:
    writer = nsdb_factory()
    br = Bridge(name="br")
    bound, other = _port(br.id, HOST_A), _port(br.id)
    writer.commit([Create(br), Create(bound), Create(other)])
    _forget_indexes(nsdb_factory, writer)
    assert _ids(writer, "device_ports", br.id) == set()
    if nsdb_factory.backend == "zookeeper":
        # Writes keep working on unindexed objects (a missing entry is not an error).
        writer.update(other.model_copy(update={"admin_state_up": False}))
        writer.update(bound.model_copy(update={"host_id": HOST_B}))
        writer.update(bound.model_copy(update={"host_id": HOST_A}))
        # A new client finds the index root unmarked and builds it.
        fresh = nsdb_factory()
        wait_until(lambda: _ids(fresh, "host_ports", HOST_A) == {bound.id}, timeout=10)
    else:
        assert writer.repair_indexes() == 3  # host_ports + 2 device_ports
        fresh = writer
    assert _ids(fresh, "device_ports", br.id) == {bound.id, other.id}
    assert fresh.repair_indexes() == 0


def test_repair_drops_entries_no_object_holds(nsdb: Nsdb) -> None:
    br = Bridge(name="br")
    port = _port(br.id, HOST_A)
    nsdb.commit([Create(br), Create(port)])
    assert nsdb.repair_indexes() == 0
    nsdb.delete("ports", port.id)
    assert _ids(nsdb, "host_ports", HOST_A) == set()
    assert nsdb.repair_indexes() == 0
