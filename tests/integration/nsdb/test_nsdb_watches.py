"""Watches on kinds and objects, on both backends: snapshot first, then every change in
order with increasing versions, until cancelled."""

from __future__ import annotations

import threading
from typing import Any

from nsdb_helpers import EventLog, bridge

from support.wait import wait_until
from tessera.model import Bridge, Router
from tessera.nsdb.base import Create, Nsdb, Update, WatchEvent


def _changes(events: list[WatchEvent]) -> list[tuple[str, str, int]]:
    return [(e.change, e.id, e.version) for e in events]


def test_watch_kind_starts_with_the_current_objects(nsdb: Nsdb) -> None:
    a, b = bridge("a"), bridge("b")
    nsdb.create(a)
    nsdb.create(b)
    nsdb.update(b)
    nsdb.create(Router(name="not a bridge"))
    log = EventLog()
    nsdb.watch_kind("bridges", log)
    events = log.wait_count(2)
    assert sorted(_changes(events)) == sorted([("added", a.id, 1), ("added", b.id, 2)])
    assert {e.value for e in events} == {a, b}


def test_watch_kind_reports_changes_of_another_client_in_order(nsdb_factory: Any) -> None:
    watcher, writer = nsdb_factory(), nsdb_factory()
    log = EventLog()
    watcher.watch_kind("bridges", log)
    b = bridge("one")
    writer.create(b)
    log.wait_count(1)
    writer.update(b.model_copy(update={"name": "two"}), 1)
    log.wait_count(2)
    writer.delete("bridges", b.id, 2)
    events = log.wait_count(3)
    assert _changes(events) == [("added", b.id, 1), ("changed", b.id, 2), ("deleted", b.id, 2)]
    assert events[1].value.name == "two"  # type: ignore[union-attr]
    assert events[2].value is None


def test_a_multi_op_commit_is_reported_for_every_object(nsdb_factory: Any) -> None:
    watcher, writer = nsdb_factory(), nsdb_factory()
    log = EventLog()
    watcher.watch_kind("bridges", log)
    created = [bridge(f"b{i}") for i in range(4)]
    writer.commit([Create(b) for b in created])
    events = log.wait_count(4)
    assert sorted(_changes(events)) == sorted(("added", b.id, 1) for b in created)


def test_watch_object_snapshot_changes_and_recreation(nsdb_factory: Any) -> None:
    watcher, writer = nsdb_factory(), nsdb_factory()
    b, other = bridge("x"), bridge("other")
    writer.create(b)
    log = EventLog()
    watcher.watch_object("bridges", b.id, log)
    log.wait_count(1)
    writer.create(other)  # another object: not reported
    writer.update(b, 1)
    log.wait_count(2)
    writer.delete("bridges", b.id)
    log.wait_count(3)
    writer.create(b)
    events = log.wait_count(4)
    assert _changes(events) == [
        ("added", b.id, 1),
        ("changed", b.id, 2),
        ("deleted", b.id, 2),
        ("added", b.id, 1),
    ]


def test_watch_object_that_does_not_exist_yet(nsdb_factory: Any) -> None:
    watcher, writer = nsdb_factory(), nsdb_factory()
    b = bridge("later")
    log = EventLog()
    watcher.watch_object("bridges", b.id, log)
    writer.create(b)
    events = log.wait_count(1)
    assert _changes(events) == [("added", b.id, 1)]
    assert events[0].value == b


def test_watch_objects_loads_many_at_once_each_with_its_own_events(nsdb_factory: Any) -> None:
    """Existing, missing and repeated objects in one call (one round trip on ZooKeeper):
    each subscription gets what `watch_object` would, and cancels alone."""
    watcher, writer = nsdb_factory(), nsdb_factory()
    present = [bridge(f"p{i}") for i in range(5)]
    writer.commit([Create(b) for b in present])
    later = bridge("later")
    logs = [EventLog() for _ in range(len(present) + 2)]
    requests = [("bridges", b.id, log) for b, log in zip(present, logs, strict=False)]
    requests.append(("bridges", later.id, logs[-2]))
    requests.append(("bridges", present[0].id, logs[-1]))  # the same object twice
    subs = watcher.watch_objects(requests)
    assert len(subs) == len(requests)
    for b, log in zip(present, logs, strict=False):
        assert _changes(log.wait_count(1)) == [("added", b.id, 1)]
    assert _changes(logs[-1].wait_count(1)) == [("added", present[0].id, 1)]
    writer.create(later)
    assert _changes(logs[-2].wait_count(1)) == [("added", later.id, 1)]
    subs[0].cancel()
    writer.update(present[0], 1)
    assert _changes(logs[-1].wait_count(2))[1] == ("changed", present[0].id, 2)
    assert len(logs[0].snapshot()) == 1  # cancelled: the shared object's change not sent
    assert watcher.watch_objects([]) == []


def test_cancel_stops_delivery(nsdb_factory: Any) -> None:
    watcher, writer = nsdb_factory(), nsdb_factory()
    b = bridge()
    writer.create(b)
    cancelled, kept = EventLog(), EventLog()
    sub = watcher.watch_kind("bridges", cancelled)
    watcher.watch_kind("bridges", kept)
    cancelled.wait_count(1)
    kept.wait_count(1)
    sub.cancel()
    sub.cancel()  # idempotent
    assert sub.cancelled
    writer.update(b)
    # `kept` shares the notification thread: once it has the change, `cancelled` would too.
    kept.wait_count(2)
    assert len(cancelled.snapshot()) == 1


def test_a_later_watch_on_a_watched_kind_gets_its_own_snapshot(nsdb: Nsdb) -> None:
    first, second = EventLog(), EventLog()
    b = bridge()
    nsdb.create(b)
    nsdb.watch_kind("bridges", first)
    first.wait_count(1)
    nsdb.update(b)
    first.wait_count(2)
    nsdb.watch_kind("bridges", second)
    assert _changes(second.wait_count(1)) == [("added", b.id, 2)]


def test_rapid_writes_miss_no_update(nsdb_factory: Any) -> None:
    """Every watcher ends at the last version, never going backwards. The memory
    backend reports each version; ZooKeeper may coalesce intermediate ones."""
    watcher, writer = nsdb_factory(), nsdb_factory()
    objects = [Bridge(name="0") for _ in range(5)]
    for b in objects:
        writer.create(b)
    kind_log, object_log = EventLog(), EventLog()
    watcher.watch_kind("bridges", kind_log)
    watcher.watch_object("bridges", objects[0].id, object_log)
    kind_log.wait_count(len(objects))
    rounds = 40
    for i in range(1, rounds + 1):
        writer.commit([Update(b.model_copy(update={"name": str(i)})) for b in objects])
    final = rounds + 1

    def settled(events: list[WatchEvent]) -> bool:
        last = {e.id: e.version for e in events}
        return all(last.get(b.id) == final for b in objects)

    kind_log.wait_for(settled)
    object_log.wait_for(lambda evs: bool(evs) and evs[-1].version == final)
    for log in (kind_log, object_log):
        by_id: dict[str, list[WatchEvent]] = {}
        for e in log.snapshot():
            by_id.setdefault(e.id, []).append(e)
        for events in by_id.values():
            versions = [e.version for e in events]
            assert versions == sorted(set(versions)), versions
            assert all(e.value.name == str(e.version - 1) for e in events)  # type: ignore[union-attr]
            if nsdb_factory.backend == "memory":
                assert versions == list(range(1, final + 1))


def test_concurrent_writers_are_all_observed(nsdb_factory: Any) -> None:
    watcher = nsdb_factory()
    writers = [nsdb_factory() for _ in range(3)]
    log = EventLog()
    watcher.watch_kind("bridges", log)
    per_writer = 15
    made: list[list[Bridge]] = [[] for _ in writers]

    def write(client: Nsdb, out: list[Bridge]) -> None:
        for i in range(per_writer):
            b = Bridge(name=str(i))
            client.create(b)
            client.update(b.model_copy(update={"name": f"{i}-updated"}), 1)
            out.append(b)

    threads = [
        threading.Thread(target=write, args=(w, m)) for w, m in zip(writers, made, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = {b.id for m in made for b in m}
    assert len(ids) == len(writers) * per_writer

    def settled(events: list[WatchEvent]) -> bool:
        last = {e.id: e for e in events}
        return set(last) == ids and all(e.version == 2 for e in last.values())

    events = log.wait_for(settled)
    assert all(e.value.name.endswith("-updated") for e in events if e.version == 2)  # type: ignore[union-attr]


def test_callbacks_may_use_the_client(nsdb: Nsdb) -> None:
    """A callback runs on the notification thread; reading or watching from there must
    not deadlock."""
    b = bridge()
    nsdb.create(b)
    inner = EventLog()
    seen: list[int] = []

    def callback(event: WatchEvent) -> None:
        seen.append(nsdb.get("bridges", event.id).version)
        if len(seen) == 1:
            nsdb.watch_object("bridges", event.id, inner)

    nsdb.watch_kind("bridges", callback)
    inner.wait_count(1)
    wait_until(lambda: seen == [1])
