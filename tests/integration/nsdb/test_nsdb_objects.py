"""Object CRUD, versions, compare-and-set and multi-op atomicity, on both backends."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from nsdb_helpers import bridge

from tessera.model import Bridge, Chain, Rule
from tessera.nsdb.base import Check, Create, Delete, Nsdb, Update
from tessera.nsdb.errors import AlreadyExists, Conflict, NotFound


def test_create_then_get_returns_the_object_at_version_1(nsdb: Nsdb) -> None:
    b = bridge("blue")
    assert nsdb.create(b) == 1
    stored = nsdb.get("bridges", b.id)
    assert stored.value == b
    assert stored.version == 1


def test_every_write_bumps_the_version(nsdb: Nsdb) -> None:
    b = bridge()
    nsdb.create(b)
    assert nsdb.update(b.model_copy(update={"name": "two"})) == 2
    assert nsdb.update(b.model_copy(update={"name": "three"}), version=2) == 3
    stored = nsdb.get("bridges", b.id)
    assert (stored.value.name, stored.version) == ("three", 3)  # type: ignore[attr-defined]


def test_get_many_reads_each_and_none_for_the_absent(nsdb: Nsdb) -> None:
    a, b, gone = bridge("a"), bridge("b"), bridge("gone")
    nsdb.create(a)
    nsdb.create(b)
    nsdb.update(b.model_copy(update={"name": "b2"}))
    got = nsdb.get_many("bridges", [b.id, gone.id, a.id])
    assert [(s.value.name, s.version) if s else None for s in got] == [  # type: ignore[attr-defined]
        ("b2", 2),
        None,
        ("a", 1),
    ]
    assert nsdb.get_many("bridges", []) == []


def test_missing_objects_raise_not_found(nsdb: Nsdb) -> None:
    b = bridge()
    with pytest.raises(NotFound, match=b.id):
        nsdb.get("bridges", b.id)
    with pytest.raises(NotFound):
        nsdb.update(b)
    with pytest.raises(NotFound):
        nsdb.delete("bridges", b.id)
    with pytest.raises(NotFound):
        nsdb.commit([Check("bridges", b.id)])


@pytest.mark.parametrize("odd_id", ["../x", "a/b", "", ".", "..", "%", "bridges"])
def test_ids_that_are_not_path_components_are_just_absent(nsdb: Nsdb, odd_id: str) -> None:
    with pytest.raises(NotFound):
        nsdb.get("bridges", odd_id)


def test_unknown_kind_is_a_value_error(nsdb: Nsdb) -> None:
    with pytest.raises(ValueError, match="unknown object kind"):
        nsdb.get("nonsense", "x")
    with pytest.raises(ValueError):
        nsdb.list("nonsense")


def test_create_of_an_existing_id_raises_already_exists(nsdb: Nsdb) -> None:
    b = bridge("first")
    nsdb.create(b)
    with pytest.raises(AlreadyExists, match=b.id):
        nsdb.create(b.model_copy(update={"name": "second"}))
    assert nsdb.get("bridges", b.id).value.name == "first"  # type: ignore[attr-defined]


def test_update_with_a_stale_version_conflicts_and_changes_nothing(nsdb: Nsdb) -> None:
    b = bridge("v1")
    nsdb.create(b)
    nsdb.update(b.model_copy(update={"name": "v2"}), version=1)
    with pytest.raises(Conflict, match=b.id):
        nsdb.update(b.model_copy(update={"name": "lost"}), version=1)
    stored = nsdb.get("bridges", b.id)
    assert (stored.value.name, stored.version) == ("v2", 2)  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", [0, -1, -2])
def test_versions_below_1_never_match(nsdb: Nsdb, version: int) -> None:
    """ZooKeeper's -1 means "any version": it must not leak through as a wildcard."""
    b = bridge()
    nsdb.create(b)
    with pytest.raises(Conflict):
        nsdb.update(b, version=version)
    with pytest.raises(Conflict):
        nsdb.commit([Check("bridges", b.id, version)])
    with pytest.raises(Conflict):
        nsdb.commit([Check("bridges", b.id, version), Check("bridges", b.id, 1)])


def test_delete_checks_the_version_and_a_recreated_object_starts_again(nsdb: Nsdb) -> None:
    b = bridge()
    nsdb.create(b)
    nsdb.update(b)
    with pytest.raises(Conflict):
        nsdb.delete("bridges", b.id, version=1)
    nsdb.delete("bridges", b.id, version=2)
    with pytest.raises(NotFound):
        nsdb.get("bridges", b.id)
    assert nsdb.create(b) == 1


def test_list_returns_every_object_of_the_kind_only(nsdb: Nsdb) -> None:
    bridges = [bridge(f"b{i}") for i in range(5)]
    for b in bridges:
        nsdb.create(b)
    nsdb.create(Chain(name="c"))
    nsdb.update(bridges[0])
    listed = {s.value.id: s for s in nsdb.list("bridges")}
    assert set(listed) == {b.id for b in bridges}
    assert listed[bridges[0].id].version == 2
    assert nsdb.list("routers") == []


def test_commit_returns_each_ops_version(nsdb: Nsdb) -> None:
    a, b, c = bridge("a"), bridge("b"), bridge("c")
    nsdb.create(b)
    nsdb.create(c)
    result = nsdb.commit(
        [Create(a), Update(b, 1), Delete("bridges", c.id, 1), Check("bridges", a.id, 1)]
    )
    assert result == [1, 2, -1, 1]
    assert nsdb.commit([Check("bridges", b.id)]) == [-1]


@pytest.mark.parametrize(
    ("failing", "error"),
    [
        ("stale-update", Conflict),
        ("existing-create", AlreadyExists),
        ("missing-delete", NotFound),
        ("stale-check", Conflict),
    ],
)
def test_a_failed_commit_writes_nothing_and_names_the_failing_object(
    nsdb: Nsdb, failing: str, error: type[Exception]
) -> None:
    existing = bridge("existing")
    nsdb.create(existing)
    nsdb.update(existing)  # now at version 2
    new1, new2, victim = bridge("new1"), bridge("new2"), bridge("victim")
    nsdb.create(victim)
    bad = {
        "stale-update": Update(existing.model_copy(update={"name": "x"}), 1),
        "existing-create": Create(existing),
        "missing-delete": Delete("bridges", new2.id),
        "stale-check": Check("bridges", existing.id, 1),
    }[failing]
    bad_id = new2.id if failing == "missing-delete" else existing.id
    ops = [Create(new1), Update(victim.model_copy(update={"name": "changed"}), 1), bad]
    with pytest.raises(error, match=bad_id):
        nsdb.commit(ops)
    with pytest.raises(NotFound):
        nsdb.get("bridges", new1.id)
    assert nsdb.get("bridges", victim.id).version == 1
    assert nsdb.get("bridges", existing.id).version == 2


def test_ops_in_one_commit_see_the_earlier_ops(nsdb: Nsdb) -> None:
    b = bridge("x")
    assert nsdb.commit([Create(b), Update(b.model_copy(update={"name": "y"}), 1)]) == [1, 2]
    assert nsdb.get("bridges", b.id).value.name == "y"  # type: ignore[attr-defined]


def test_reads_are_private_copies(nsdb: Nsdb) -> None:
    """Mutating what a read returned must not change the store or another read."""
    chain = Chain(name="c")
    nsdb.create(chain)
    rule = Rule(chain_id=chain.id, type="accept", position=1, in_ports=[])
    nsdb.create(rule)
    first = nsdb.get("rules", rule.id).value
    first.in_ports.append("6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b")  # type: ignore[attr-defined]
    assert nsdb.get("rules", rule.id).value.in_ports == []  # type: ignore[attr-defined]


def test_clients_share_one_namespace(nsdb_factory: Any) -> None:
    one, two = nsdb_factory(), nsdb_factory()
    b = bridge()
    one.create(b)
    assert two.get("bridges", b.id).value == b
    two.delete("bridges", b.id)
    with pytest.raises(NotFound):
        one.get("bridges", b.id)


def _increment(client: Nsdb, id: str, times: int, retries: list[int]) -> None:
    for _ in range(times):
        while True:
            stored = client.get("bridges", id)
            value = stored.value
            assert isinstance(value, Bridge)
            try:
                client.update(
                    value.model_copy(update={"name": str(int(value.name) + 1)}), stored.version
                )
                break
            except Conflict:
                retries.append(1)


def test_concurrent_cas_increments_are_never_lost(nsdb_factory: Any) -> None:
    """N threads (over several clients) increment one counter object with CAS retries."""
    clients = [nsdb_factory() for _ in range(3)]
    counter = Bridge(name="0")
    clients[0].create(counter)
    threads_per_client, increments = 3, 10
    retries: list[int] = []
    threads = [
        threading.Thread(target=_increment, args=(client, counter.id, increments, retries))
        for client in clients
        for _ in range(threads_per_client)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    expected = len(threads) * increments
    stored = clients[1].get("bridges", counter.id)
    assert stored.value.name == str(expected)  # type: ignore[attr-defined]
    assert stored.version == expected + 1
