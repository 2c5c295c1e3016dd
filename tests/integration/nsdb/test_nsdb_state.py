"""State tables on both backends: entries, ephemeral ownership, and what watchers see
when the owner's session closes or expires."""

from __future__ import annotations

from typing import Any

import pytest
from nsdb_helpers import EventLog

from support.wait import wait_until
from tessera.nsdb.base import Nsdb, StateEvent

ODD_NAMES = ["", ".", "..", "a/b", "%", "%2F", "x y", "naïve", "10.0.0.1", "aa:bb:cc:dd:ee:ff", "/"]


def _changes(events: list[StateEvent]) -> list[tuple[str, str, str | None]]:
    return [(e.change, e.key, e.value) for e in events]


def test_set_get_overwrite_delete(nsdb: Nsdb) -> None:
    table = "mac_table/6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b"
    assert nsdb.state_get(table) == {}
    nsdb.state_set(table, "0/02:00:00:00:00:01", "port-a")
    nsdb.state_set(table, "0/02:00:00:00:00:02", "port-b", ephemeral=False)
    nsdb.state_set(table, "0/02:00:00:00:00:01", "port-c")
    assert nsdb.state_get(table) == {
        "0/02:00:00:00:00:01": "port-c",
        "0/02:00:00:00:00:02": "port-b",
    }
    nsdb.state_delete(table, "0/02:00:00:00:00:01")
    nsdb.state_delete(table, "never-there")  # absent entries are ignored
    assert nsdb.state_get(table) == {"0/02:00:00:00:00:02": "port-b"}


def test_tables_are_separate_even_when_names_nest(nsdb: Nsdb) -> None:
    """Table `a` key `b` and table `a/b` must not collide."""
    nsdb.state_set("a", "b", "in a")
    nsdb.state_set("a/b", "c", "in a/b")
    assert nsdb.state_get("a") == {"b": "in a"}
    assert nsdb.state_get("a/b") == {"c": "in a/b"}


@pytest.mark.parametrize("name", ODD_NAMES)
def test_any_string_is_a_valid_table_name_and_key(nsdb: Nsdb, name: str) -> None:
    nsdb.state_set(name, name, "value-" + name)
    assert nsdb.state_get(name) == {name: "value-" + name}


def test_ephemeral_entries_vanish_when_the_owner_closes(nsdb_factory: Any) -> None:
    owner, other = nsdb_factory(), nsdb_factory()
    owner.state_set("hosts", "h1", "alive")
    owner.state_set("hosts", "h1-config", "kept", ephemeral=False)
    log = EventLog()
    other.watch_state("hosts", log)
    log.wait_count(2)
    owner.close()
    events = log.wait_count(3)
    assert _changes(events)[2] == ("deleted", "h1", None)
    assert other.state_get("hosts") == {"h1-config": "kept"}


def test_overwriting_takes_ownership(nsdb_factory: Any) -> None:
    first, second, reader = nsdb_factory(), nsdb_factory(), nsdb_factory()
    first.state_set("t", "ephemeral-taken", "first")
    second.state_set("t", "ephemeral-taken", "second")
    first.state_set("t", "made-persistent", "first")
    second.state_set("t", "made-persistent", "second", ephemeral=False)
    second.state_set("t", "made-ephemeral", "second", ephemeral=False)
    first.state_set("t", "made-ephemeral", "first", ephemeral=True)
    first.close()
    assert reader.state_get("t") == {"ephemeral-taken": "second", "made-persistent": "second"}
    second.close()
    assert reader.state_get("t") == {"made-persistent": "second"}


def test_watch_state_snapshot_then_changes(nsdb_factory: Any) -> None:
    watcher, writer = nsdb_factory(), nsdb_factory()
    writer.state_set("arp_table/r1", "10.0.0.1", "02:00:00:00:00:01")
    log = EventLog()
    watcher.watch_state("arp_table/r1", log)
    log.wait_count(1)
    writer.state_set("arp_table/r1", "10.0.0.2", "02:00:00:00:00:02")
    log.wait_count(2)
    writer.state_set("arp_table/r1", "10.0.0.1", "02:00:00:00:00:03")
    log.wait_count(3)
    writer.state_delete("arp_table/r1", "10.0.0.2")
    writer.state_set("arp_table/other", "10.0.0.9", "x")  # another table: not reported
    events = log.wait_count(4)
    assert _changes(events) == [
        ("added", "10.0.0.1", "02:00:00:00:00:01"),
        ("added", "10.0.0.2", "02:00:00:00:00:02"),
        ("changed", "10.0.0.1", "02:00:00:00:00:03"),
        ("deleted", "10.0.0.2", None),
    ]
    assert all(e.table == "arp_table/r1" for e in events)


def test_session_expiry_drops_then_restores_the_owners_entries(nsdb_factory: Any) -> None:
    """Expiry is a real loss (others see "deleted"); the client then carries on under a
    new session and re-creates what it owned, so others see it "added" again."""
    owner, other = nsdb_factory(), nsdb_factory()
    owner.state_set("hosts", "h1", "alive")
    owner.state_set("hosts", "gone-before", "x")
    owner.state_delete("hosts", "gone-before")
    log, own_log = EventLog(), EventLog()
    other.watch_state("hosts", log)
    owner.watch_state("hosts", own_log)
    log.wait_count(1)
    own_log.wait_count(1)
    owner.expire_session()
    events = log.wait_count(3)
    assert _changes(events) == [
        ("added", "h1", "alive"),
        ("deleted", "h1", None),
        ("added", "h1", "alive"),
    ]
    assert other.state_get("hosts") == {"h1": "alive"}
    # The owner's own watch keeps working under the new session, and it owns the entry:
    owner.state_set("hosts", "h2", "alive")
    own_log.wait_for(lambda evs: ("added", "h2", "alive") in _changes(evs))
    owner.close()
    wait_until(lambda: other.state_get("hosts") == {})


def test_taking_an_entry_back_makes_it_ours_again(nsdb_factory: Any) -> None:
    """An owner overwriting its own entry (the one-round-trip path) after another
    session took it over must take it back, not write into the other's znode."""
    first, second, reader = nsdb_factory(), nsdb_factory(), nsdb_factory()
    first.state_set("t", "k", "first")
    first.state_set("t", "k", "first again")  # ours: overwritten in place
    second.state_set("t", "k", "second")
    first.state_set("t", "k", "first, back")
    second.close()
    assert reader.state_get("t") == {"k": "first, back"}
    first.close()
    assert reader.state_get("t") == {}


def test_many_entries_set_and_deleted_together(nsdb_factory: Any) -> None:
    owner, reader = nsdb_factory(), nsdb_factory()
    owner.state_set("a", "old", "before")
    owner.state_set_many([("a", "new", "1"), ("a", "old", "2"), ("b/c", "x", "3")])
    owner.state_set_many([("p", "kept", "4")], ephemeral=False)
    assert reader.state_get("a") == {"new": "1", "old": "2"}
    assert reader.state_get("b/c") == {"x": "3"}
    owner.state_delete_many([("a", "new"), ("a", "never-there"), ("b/c", "x")])
    assert reader.state_get("a") == {"old": "2"}
    assert reader.state_get("b/c") == {}
    owner.state_set_many([])
    owner.state_delete_many([])
    owner.close()
    assert reader.state_get("a") == {}
    assert reader.state_get("p") == {"kept": "4"}


def test_watch_state_keys_reports_which_keys_come_and_go(nsdb_factory: Any) -> None:
    """A keys watch (the agent's request table) sees every key present first, then each
    key added or deleted; a backend may leave the values out. Beside a full watch of
    the same table on the same client, each gets its own kind of events."""
    watcher, writer = nsdb_factory(), nsdb_factory()
    writer.state_set("realize_request/h", "1", "")
    keys, full = EventLog(), EventLog()
    watcher.watch_state_keys("realize_request/h", keys)
    watcher.watch_state("realize_request/h", full)
    keys.wait_count(1)
    full.wait_count(1)
    writer.state_set("realize_request/h", "2", "x")
    keys.wait_count(2)
    full.wait_count(2)  # both seen "2" before "1" goes: keys apart, order is per key
    writer.state_delete("realize_request/h", "1")
    writer.state_set("realize_request/other", "9", "")  # another table: not reported
    events = keys.wait_count(3)
    assert [(e.change, e.key) for e in events] == [("added", "1"), ("added", "2"), ("deleted", "1")]
    assert all(e.value in (None, "", "x") for e in events)
    assert _changes(full.wait_count(3)) == [
        ("added", "1", ""),
        ("added", "2", "x"),
        ("deleted", "1", None),
    ]
