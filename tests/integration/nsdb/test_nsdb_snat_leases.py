"""SNAT port blocks leased per agent, on both NSDB backends: exclusive creation, two
agents allocating at once never sharing an (address, port), a closed session's blocks
returning, idle blocks given back, exhaustion as a clean, counted None."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from tessera.agent.flowstate.entry import PROTO_TCP
from tessera.agent.flowstate.snat import EXHAUSTED, REUSE_AFTER, SnatAllocator
from tessera.agent.metrics import AgentMetrics
from tessera.nsdb.errors import AlreadyExists
from tessera.nsdb.tables import SNAT_BLOCK_SIZE, decode_snat, snat_table
from tessera.packet.addr import ip_from_str as ip
from tessera.simulation.flowstate import ConnKey

EXT = ip("198.51.100.10")
ZONE = "5a0c1e2f-0000-4000-8000-00000000000a"


def key(i: int, vm: str = "10.0.0.5") -> ConnKey:
    return ConnKey(PROTO_TCP, ip(vm), ip("203.0.113.9"), 20000 + i, 80, ZONE)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def exhausted(metrics: AgentMetrics) -> float:
    return metrics.registry.get_sample_value("tessera_agent_snat_exhausted_total") or 0.0


def test_state_create_is_exclusive_and_frees_with_the_session(nsdb_factory: Any) -> None:
    a, b = nsdb_factory(), nsdb_factory()
    a.state_create("snat_blocks/x", "3", "a")
    with pytest.raises(AlreadyExists):
        b.state_create("snat_blocks/x", "3", "b")
    assert b.state_get("snat_blocks/x") == {"3": "a"}
    a.close()
    b.state_create("snat_blocks/x", "3", "b")
    assert b.state_get("snat_blocks/x") == {"3": "b"}
    racers = [nsdb_factory() for _ in range(6)]
    wins: list[int] = []
    barrier = threading.Barrier(len(racers))

    def race(i: int) -> None:
        barrier.wait()
        try:
            racers[i].state_create("snat_blocks/y", "0", str(i))
            wins.append(i)
        except AlreadyExists:
            pass

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(racers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert b.state_get("snat_blocks/y") == {"0": str(wins[0])}


def test_two_agents_allocating_at_once_never_share_an_address_and_port(
    nsdb_factory: Any,
) -> None:
    ips = (EXT, EXT + 1)
    ports = (1024, 1024 + 4 * SNAT_BLOCK_SIZE - 1)  # 8 blocks over the two addresses
    allocators = [
        SnatAllocator(nsdb_factory(), f"host-{i}", AgentMetrics(), release_after=1e9)
        for i in range(2)
    ]
    per_agent = 3 * SNAT_BLOCK_SIZE + 10  # 4 blocks each: the whole range
    results: list[list[tuple[int, int] | None]] = [[], []]
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        barrier.wait()
        for n in range(per_agent):
            results[i].append(allocators[i].allocate(ips, ports, key(n, f"10.0.{i}.5")))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [r for rs in results for r in rs]
    assert None not in got
    assert len(set(got)) == len(got) == 2 * per_agent
    for addr, port in got:  # type: ignore[misc]
        assert addr in ips and ports[0] <= port <= ports[1]
    blocks = [set(a.leases()) for a in allocators]
    held = [{(addr, block) for addr, block, _used in b} for b in blocks]
    assert not held[0] & held[1] and len(held[0]) == len(held[1]) == 4
    # The NSDB says who holds what, and it matches.
    reader = nsdb_factory()
    for i, allocator in enumerate(allocators):
        for addr, block in held[i]:
            table = reader.state_get(snat_table(f"198.51.100.{addr - EXT + 10}"))
            assert decode_snat(table[str(block)]).token == allocator.token
    # Asking again for a known connection returns its port without a new one.
    first = results[0][0]
    assert allocators[0].allocate(ips, ports, key(0, "10.0.0.5")) == first


def test_a_closed_sessions_blocks_become_available(nsdb_factory: Any) -> None:
    ips = (EXT, EXT)
    ports = (2048, 2048 + 2 * SNAT_BLOCK_SIZE - 1)  # two blocks
    session_a = nsdb_factory()
    a = SnatAllocator(session_a, "host-a", AgentMetrics())
    metrics_b = AgentMetrics()
    b = SnatAllocator(nsdb_factory(), "host-b", metrics_b)
    for n in range(2 * SNAT_BLOCK_SIZE):
        assert a.allocate(ips, ports, key(n)) is not None
    assert a.allocate(ips, ports, key(999)) is None  # a's own blocks are full too
    assert b.allocate(ips, ports, key(0, "10.9.9.9")) is None
    assert b.last_failure == EXHAUSTED and exhausted(metrics_b) == 1
    session_a.close()  # the agent died: its session ends, its leases go
    got = b.allocate(ips, ports, key(0, "10.9.9.9"))
    assert got is not None and ports[0] <= got[1] <= ports[1]


def test_idle_blocks_are_given_back_and_a_released_port_is_not_reused_at_once(
    nsdb_factory: Any,
) -> None:
    clock = Clock()
    nsdb = nsdb_factory()
    allocator = SnatAllocator(nsdb, "host-a", AgentMetrics(), clock=clock, release_after=60.0)
    ips, ports = (EXT, EXT), (4096, 4096 + SNAT_BLOCK_SIZE - 1)
    first = allocator.allocate(ips, ports, key(1))
    second = allocator.allocate(ips, ports, key(2))
    assert first is not None and second is not None and first != second
    assert allocator.release(key(1)) and not allocator.release(key(1))
    third = allocator.allocate(ips, ports, key(3))
    assert third not in (first, second)  # the cursor moves on
    allocator.release(key(2))
    allocator.release(key(3))
    clock.now = 59.0
    assert allocator.maintain() == 0  # idle, but not for long enough
    clock.now = 121.0
    assert allocator.maintain() == 1
    assert allocator.leases() == []
    assert nsdb.state_get(snat_table("198.51.100.10")) == {}


def test_exhaustion_is_counted_and_logged_once_per_interval(
    nsdb_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = AgentMetrics()
    allocator = SnatAllocator(nsdb_factory(), "host-a", metrics)
    ips, ports = (EXT, EXT), (5000, 5001)  # two ports only
    assert allocator.allocate(ips, ports, key(1)) is not None
    assert allocator.allocate(ips, ports, key(2)) is not None
    with caplog.at_level(logging.WARNING, logger="tessera.agent.flowstate.snat"):
        for n in range(3, 8):
            assert allocator.allocate(ips, ports, key(n)) is None
    assert exhausted(metrics) == 5
    lines = [r.getMessage() for r in caplog.records if "SNAT exhausted" in r.getMessage()]
    assert len(lines) == 1 and "198.51.100.10" in lines[0] and "5000-5001" in lines[0]
    allocator.close()
    assert allocator.leases() == []


def test_a_restarted_agent_adopts_its_bindings_once_the_old_session_is_gone(
    nsdb_factory: Any,
) -> None:
    ips, ports = (EXT, EXT), (6000, 6000 + SNAT_BLOCK_SIZE - 1)
    old_session = nsdb_factory()
    old = SnatAllocator(old_session, "host-a", AgentMetrics())
    bound = old.allocate(ips, ports, key(1))
    assert bound is not None
    restarted = SnatAllocator(nsdb_factory(), "host-a", AgentMetrics())
    assert not restarted.adopt(bound[0], bound[1], key(1))  # still the old run's block
    old_session.close()
    assert restarted.adopt(bound[0], bound[1], key(1))
    assert restarted.adopt(bound[0], bound[1], key(1))  # idempotent
    assert not restarted.adopt(bound[0], bound[1], key(2))  # the port is taken
    assert restarted.binding(key(1)) == bound
    other = restarted.allocate(ips, ports, key(3))
    assert other is not None and other != bound  # allocated around the adopted port


def test_a_released_port_rests_before_it_is_handed_out_again(nsdb_factory: Any) -> None:
    """Peers may still hold the old binding's reply flow for a few seconds after our
    removal: within REUSE_AFTER the port is not given out, even when it is the only one
    of the range (the packet is dropped as exhausted instead of being misdelivered)."""
    clock = Clock()
    allocator = SnatAllocator(nsdb_factory(), "host-a", AgentMetrics(), clock=clock)
    ips, ports = (EXT, EXT), (4096, 4096)  # a single port
    assert allocator.allocate(ips, ports, key(1)) == (EXT, 4096)
    assert allocator.release(key(1))
    clock.now = REUSE_AFTER - 0.5
    assert allocator.allocate(ips, ports, key(2)) is None
    clock.now = REUSE_AFTER + 0.5
    assert allocator.allocate(ips, ports, key(2)) == (EXT, 4096)
