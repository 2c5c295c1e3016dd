"""Running many schedulers at once against a real Cassandra, and checking the result
from the rows alone."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tessera.placement.errors import NoValidHost
from tessera.placement.model import Inventory
from tessera.placement.scheduler import Scheduler
from tessera.placement.store import PlacementStore


@dataclass
class Run:
    placed: dict[str, str] = field(default_factory=dict)  # consumer -> provider
    failed: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_providers(
    store: PlacementStore, count: int, inventory: dict[str, Inventory], prefix: str = "cn"
) -> list[str]:
    out = []
    for k in range(count):
        p = store.create_provider(f"{prefix}{k:02d}")
        store.set_inventories(p.uuid, p.generation, inventory)
        out.append(p.uuid)
    return out


def run_schedulers(
    connect: Callable[[], tuple[Any, Any]],
    count: int,
    requests: Sequence[dict[str, int]],
    weigher: str = "spread",
    during: Callable[[int], None] | None = None,
) -> Run:
    """`count` schedulers, each on its own driver connection, taking requests from
    one shared list until it is empty. `during(n)` is called by scheduler 0 after
    each of its placements (to change things mid-run)."""
    run = Run()
    queue = list(enumerate(requests))
    sessions = [connect() for _ in range(count)]

    def work(index: int, session: Any) -> None:
        scheduler = Scheduler(PlacementStore(session), weigher)
        while True:
            with run.lock:
                if not queue:
                    break
                _, wanted = queue.pop()
            consumer = str(uuid.uuid4())
            try:
                placement = scheduler.schedule(wanted, consumer=consumer)
            except NoValidHost:
                with run.lock:
                    run.failed += 1
            except Exception as exc:  # reported, the test fails on it
                with run.lock:
                    run.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                with run.lock:
                    run.placed[consumer] = placement.provider
                if index == 0 and during is not None:
                    during(len(run.placed))
        with run.lock:
            run.retries += scheduler.stats.retries

    threads = [
        threading.Thread(target=work, args=(k, s), daemon=True) for k, (_, s) in enumerate(sessions)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
    finally:
        for driver, _ in sessions:
            driver.shutdown()
    return run


def vm_requests(count: int, seed: int = 19) -> list[dict[str, int]]:
    rng = random.Random(seed)
    return [
        {"VCPU": rng.choice((1, 1, 2, 4)), "MEMORY_MB": rng.choice((512, 1024, 2048, 4096))}
        for _ in range(count)
    ]


def check_no_overcommit(store: PlacementStore, run: Run) -> dict[str, dict[str, int]]:
    """Sum every provider's allocation rows; each sum must fit its capacity and equal
    the usages the claims kept; every placed consumer has exactly its row."""
    sums: dict[str, dict[str, int]] = {}
    consumers: dict[str, str] = {}
    for provider in store.providers():
        total: dict[str, int] = {}
        for consumer, resources in store.provider_allocations(provider.uuid).items():
            assert consumer not in consumers, f"{consumer} allocated twice"
            consumers[consumer] = provider.uuid
            for name, amount in resources.items():
                total[name] = total.get(name, 0) + amount
        for name, amount in total.items():
            capacity = provider.inventories[name].capacity
            assert amount <= capacity, f"{provider.name} {name}: {amount} > {capacity}"
        assert {k: v for k, v in provider.usages.items() if v} == total, provider.name
        sums[provider.uuid] = total
    assert consumers == run.placed
    return sums
