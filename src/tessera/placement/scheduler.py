"""The scheduler: asks Cassandra for the providers that fit a request, weighs them,
and claims the best with a lightweight transaction; a claim another scheduler won
moves on to the next candidate. It keeps nothing between requests: every decision is
made on rows read for it, so any number of schedulers can run side by side.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from tessera.placement.errors import Invalid, NoValidHost
from tessera.placement.model import check_amounts, fits
from tessera.placement.store import PlacementStore, Provider

WEIGHERS = ("spread", "pack")
#: Rounds of (read candidates, try each) before a request fails for contention alone.
MAX_ROUNDS = 20
#: How many of the best candidates a scheduler picks among at random.
SUBSET = 3


@dataclass(frozen=True)
class Candidate:
    provider: Provider
    taken: dict[str, int]
    weight: float


@dataclass
class Placement:
    consumer: str
    provider: str
    allocation: dict[str, int]
    attempts: int
    retries: int
    seconds: float


@dataclass
class SchedulerStats:
    placed: int = 0
    failed: int = 0
    retries: int = 0
    latencies: list[float] = field(default_factory=list)


def candidates(
    store: PlacementStore,
    wanted: dict[str, int],
    required: Iterable[str] = (),
    member_of: Iterable[str] = (),
    weigher: str = "spread",
) -> list[Candidate]:
    """Providers that have every required trait, belong to one of `member_of` (if
    given) and have room for `wanted`, best first, read from Cassandra now."""
    if weigher not in WEIGHERS:
        raise Invalid(f"weigher must be one of {', '.join(WEIGHERS)}")
    check_amounts(wanted)
    needed = frozenset(required)
    groups = frozenset(member_of)
    out: list[Candidate] = []
    for provider in store.providers():
        if not needed <= provider.traits:
            continue
        if groups and not groups & provider.aggregates:
            continue
        taken = fits(provider.inventories, provider.usages, wanted)
        if taken is None:
            continue
        out.append(Candidate(provider, taken, _free_share(provider, taken)))
    random.shuffle(out)  # ties go to anyone, not always to the same provider
    out.sort(key=lambda c: c.weight, reverse=weigher == "spread")
    return out


def spread_subset(found: list[Candidate], subset: int) -> list[Candidate]:
    """The best `subset` candidates in random order, then the rest: schedulers that
    read the same rows at once then rarely race for the same provider (Nova's
    host_subset_size), at the price of a slightly less exact weighing."""
    head = found[:subset]
    random.shuffle(head)
    return head + found[subset:]


def _free_share(provider: Provider, taken: dict[str, int]) -> float:
    """The smallest share of a requested class left free after the claim: spread
    takes the provider where it is largest, pack where it is smallest."""
    shares = []
    for name, amount in taken.items():
        inv = provider.inventories[name]
        free = inv.capacity - provider.usages.get(name, 0) - amount
        shares.append(free / inv.capacity if inv.capacity else 0.0)
    return min(shares, default=0.0)


class Scheduler:
    def __init__(
        self,
        store: PlacementStore,
        weigher: str = "spread",
        max_rounds: int = MAX_ROUNDS,
        subset: int = SUBSET,
    ) -> None:
        if weigher not in WEIGHERS:
            raise Invalid(f"weigher must be one of {', '.join(WEIGHERS)}")
        self.store = store
        self.weigher = weigher
        self.max_rounds = max_rounds
        self.subset = max(1, subset)
        self.stats = SchedulerStats()

    def schedule(
        self,
        wanted: dict[str, int],
        required: Iterable[str] = (),
        member_of: Iterable[str] = (),
        consumer: str | None = None,
    ) -> Placement:
        """Place one consumer (a VM): the request is recorded first (state pending),
        then placed or failed, with its attempt and retry counts."""
        check_amounts(wanted)
        cid = consumer or str(uuid.uuid4())
        traits = list(required)
        groups = list(member_of)
        start = time.monotonic()
        self.store.record_request(cid, wanted, traits)
        attempts = retries = 0
        for _ in range(self.max_rounds):
            found = candidates(self.store, wanted, traits, groups, self.weigher)
            if not found:
                break
            for candidate in spread_subset(found, self.subset):
                attempts += 1
                self.store.note_provider(cid, candidate.provider.uuid)
                if self.store.claim(candidate.provider, cid, candidate.taken):
                    self.store.update_request(
                        cid, "placed", [candidate.provider.uuid], attempts, retries
                    )
                    seconds = time.monotonic() - start
                    self.stats.placed += 1
                    self.stats.retries += retries
                    self.stats.latencies.append(seconds)
                    return Placement(
                        cid, candidate.provider.uuid, candidate.taken, attempts, retries, seconds
                    )
                retries += 1
        self.store.update_request(cid, "failed", [], attempts, retries)
        self.stats.failed += 1
        self.stats.retries += retries
        asked = ", ".join(f"{k}:{v}" for k, v in sorted(wanted.items()))
        raise NoValidHost(
            f"no resource provider can take {asked}"
            + (f" with {', '.join(traits)}" if traits else "")
            + (f" (after {retries} lost races)" if retries else "")
        )
