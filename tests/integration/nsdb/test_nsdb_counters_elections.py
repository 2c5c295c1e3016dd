"""Cluster-wide counters and leader election, on both backends."""

from __future__ import annotations

import threading
from typing import Any

from support.wait import wait_until
from tessera.nsdb.base import LeaderElection, Nsdb


def test_counters_count_from_1_per_name(nsdb: Nsdb) -> None:
    assert [nsdb.next_id("tunnel_keys") for _ in range(3)] == [1, 2, 3]
    assert nsdb.next_id("other") == 1
    assert nsdb.next_id("a/b") == 1  # any string names a counter


def test_counters_are_unique_under_concurrency(nsdb_factory: Any) -> None:
    clients = [nsdb_factory() for _ in range(3)]
    got: list[int] = []
    lock = threading.Lock()

    def take(client: Nsdb) -> None:
        for _ in range(25):
            value = client.next_id("keys")
            with lock:
                got.append(value)

    threads = [threading.Thread(target=take, args=(c,)) for c in clients for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == list(range(1, len(threads) * 25 + 1))


class Participant:
    """Records when it leads; leads until told to step down (or `resign` is set)."""

    def __init__(self, client: Nsdb, name: str, identifier: str) -> None:
        self.identifier = identifier
        self.election: LeaderElection = client.leader_election(name, identifier)
        self.terms = 0
        self.resign = threading.Event()

    def on_elected(self, step_down: object) -> None:
        assert isinstance(step_down, threading.Event)
        self.terms += 1
        while not step_down.is_set() and not self.resign.is_set():
            step_down.wait(0.01)

    def start(self) -> Participant:
        self.election.start(self.on_elected)
        return self


def _leaders(participants: list[Participant]) -> list[str]:
    return [p.identifier for p in participants if p.election.is_leader]


def _one_leader(participants: list[Participant]) -> str:
    wait_until(lambda: len(_leaders(participants)) == 1)
    return _leaders(participants)[0]


def test_one_leader_and_failover_on_stop(nsdb_factory: Any) -> None:
    clients = [nsdb_factory() for _ in range(3)]
    ps = [Participant(c, "api", f"p{i}").start() for i, c in enumerate(clients)]
    first = _one_leader(ps)
    assert first == "p0"  # the first to join leads
    assert all(p.election.leader() == "p0" for p in ps)
    ps[0].election.stop()
    assert not ps[0].election.is_leader
    second = _one_leader(ps)
    assert second != first
    wait_until(lambda: ps[1].election.leader() == second)


def test_failover_when_the_leaders_session_closes(nsdb_factory: Any) -> None:
    clients = [nsdb_factory() for _ in range(2)]
    ps = [Participant(c, "svc", f"p{i}").start() for i, c in enumerate(clients)]
    assert _one_leader(ps) == "p0"
    clients[0].close()
    wait_until(lambda: _leaders(ps) == ["p1"])
    assert ps[1].election.leader() == "p1"


def test_failover_when_the_leaders_session_expires(nsdb_factory: Any) -> None:
    clients = [nsdb_factory() for _ in range(2)]
    ps = [Participant(c, "svc", f"p{i}").start() for i, c in enumerate(clients)]
    assert _one_leader(ps) == "p0"
    clients[0].expire_session()
    wait_until(lambda: _leaders(ps) == ["p1"])
    # The expired participant re-joined under its new session, behind p1.
    ps[1].election.stop()
    wait_until(lambda: _leaders(ps) == ["p0"])
    wait_until(lambda: ps[0].terms == 2)


def test_a_leader_that_returns_resigns(nsdb_factory: Any) -> None:
    clients = [nsdb_factory() for _ in range(2)]
    ps = [Participant(c, "svc", f"p{i}").start() for i, c in enumerate(clients)]
    assert _one_leader(ps) == "p0"
    ps[0].resign.set()
    wait_until(lambda: _leaders(ps) == ["p1"])
    ps[0].resign.clear()
    ps[1].resign.set()
    wait_until(lambda: _leaders(ps) == ["p0"])


def test_no_leader_without_participants(nsdb: Nsdb) -> None:
    election = nsdb.leader_election("empty", "observer")
    assert election.leader() is None
    assert not election.is_leader
