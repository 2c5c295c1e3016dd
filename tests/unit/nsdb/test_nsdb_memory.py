"""What only the memory backend has: named stores, the outage switch, session handling.
(The shared behaviour is in tests/integration/nsdb, run against both backends.)"""

from __future__ import annotations

import threading
import time

import pytest

from tessera.model import Bridge
from tessera.nsdb.connect import open_nsdb
from tessera.nsdb.errors import Unavailable
from tessera.nsdb.memory import MemoryNsdb, MemoryStore
from tessera.nsdb.notify import LeaderRunner, Notifier


def test_named_stores_are_shared_and_plain_memory_is_private() -> None:
    try:
        assert MemoryStore.named("memory:unit-a") is MemoryStore.named("memory:unit-a")
        assert MemoryStore.named("memory:unit-a") is not MemoryStore.named("memory:unit-b")
        assert MemoryStore.named("memory") is not MemoryStore.named("memory")
        one, two = open_nsdb("memory:unit-a"), open_nsdb("memory:unit-a")
        b = Bridge(name="shared")
        one.create(b)
        assert two.get("bridges", b.id).value == b
        private = open_nsdb("memory")
        assert private.list("bridges") == []
        for client in (one, two, private):
            client.close()
    finally:
        MemoryStore.drop_named("memory:unit-a")
        MemoryStore.drop_named("memory:unit-b")


@pytest.mark.parametrize("url", ["memory:", "memoryx", "mem:x"])
def test_bad_memory_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        MemoryStore.named(url)


def test_simulated_outage_makes_every_operation_unavailable() -> None:
    store = MemoryStore()
    client = MemoryNsdb(store)
    store.set_available(False)
    assert not client.connected
    with pytest.raises(Unavailable):
        client.create(Bridge())
    with pytest.raises(Unavailable):
        client.state_get("t")
    store.set_available(True)
    assert client.connected
    client.create(Bridge())
    client.close()


def test_a_closed_client_refuses_work_and_close_is_idempotent() -> None:
    client = MemoryNsdb()
    client.close()
    client.close()
    assert not client.connected
    with pytest.raises(Unavailable, match="closed"):
        client.list("bridges")


def test_sessions_are_distinct_and_expiry_changes_the_session() -> None:
    store = MemoryStore()
    one, two = MemoryNsdb(store), MemoryNsdb(store)
    assert one.session != two.session
    before = one.session
    one.expire_session()
    assert one.session not in (before, two.session)
    one.close()
    two.close()


def test_notifier_runs_tasks_in_order_and_survives_failures() -> None:
    notifier = Notifier("test")
    seen: list[int] = []

    def boom() -> None:
        raise RuntimeError("task failure is logged, not fatal")

    notifier.submit(lambda: seen.append(1))
    notifier.submit(boom)
    notifier.submit(lambda: seen.append(2))
    assert notifier.run_sync(lambda: seen.append(3), timeout=5)
    assert seen == [1, 2, 3]
    with pytest.raises(RuntimeError):
        notifier.run_sync(boom, timeout=5)
    notifier.stop()


def test_leader_runner_terms_never_overlap() -> None:
    ended: list[bool] = []
    runner = LeaderRunner("test", ended.append)
    inside = threading.Event()

    def lead(step_down: object) -> None:
        assert isinstance(step_down, threading.Event)
        inside.set()
        step_down.wait(5)

    runner.elect(lead)
    assert inside.wait(5)
    assert runner.leading
    runner.elect(lead)  # already in a term: no second one
    runner.step_down(wait=5)
    assert not runner.leading and not runner.running
    assert ended == [False]  # asked to end: not a voluntary resignation
    runner.elect(lambda step_down: None)  # returns by itself: resigns
    deadline = time.monotonic() + 5
    while len(ended) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ended == [False, True]
