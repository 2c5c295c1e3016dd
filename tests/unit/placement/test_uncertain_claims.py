"""A lightweight transaction whose outcome is unknown (the coordinator timed out, or a
replica died mid-round: CAS_WRITE_UNKNOWN, code 0x1700, which the driver raises as a
bare ErrorMessage) is settled by SERIAL reads, never reported as an error and never
counted twice. A scripted session stands in for Cassandra so each outcome is chosen."""

from __future__ import annotations

import json
import uuid
from collections import namedtuple
from typing import Any

import pytest
from cassandra.protocol import ErrorMessage
from cassandra.query import BatchStatement, SimpleStatement

from tessera.placement.errors import Conflict
from tessera.placement.model import Inventory
from tessera.placement.store import PlacementStore

ProviderRow = namedtuple(
    "ProviderRow", "provider name generation traits aggregates inventories usages"
)
AllocRow = namedtuple("AllocRow", "resources")
CasRow = namedtuple("CasRow", "applied generation")
ClassRow = namedtuple("ClassRow", "name discrete")

CAS_UNKNOWN = ErrorMessage(0x1700, "CAS operation result is unknown", None)


class Result:
    def __init__(self, rows: list[Any], applied: bool = True) -> None:
        self.rows = rows
        self.was_applied = applied

    def one(self) -> Any:
        return self.rows[0] if self.rows else None

    def __iter__(self) -> Any:
        return iter(self.rows)


class ScriptedSession:
    """One provider and its allocation rows. `outcome` says what the next conditional
    write does: "apply", "lost" (another change won), "landed-unknown" (applied, then
    the error), "dropped-unknown" (not applied, then the error), "rival-unknown" (a
    rival change took the generation, then the error), "landed-rival-unknown" (applied,
    then a rival's claim on top of it, then the error)."""

    def __init__(self) -> None:
        self.pid = uuid.uuid4()
        self.generation = 1
        self.usages: dict[str, int] = {}
        self.inventories = json.dumps({"VCPU": Inventory(total=8).to_json()})
        self.rows: dict[uuid.UUID, dict[str, int]] = {}
        self.outcome = "apply"
        self.pending: dict[str, Any] = {}

    def prepare(self, cql: str) -> SimpleStatement:
        return SimpleStatement(cql.replace("?", "%s"))

    def execute(self, statement: Any, args: tuple[Any, ...] = ()) -> Result:
        if isinstance(statement, BatchStatement):
            return self._conditional(self.pending.pop("batch"))
        cql = statement.query_string if hasattr(statement, "query_string") else statement
        if cql.startswith("SELECT provider"):
            return Result([self._provider_row()])
        if cql.startswith("SELECT name, discrete"):
            return Result([ClassRow("VCPU", False)])
        if cql.startswith("SELECT resources"):
            found = self.rows.get(args[1])
            return Result([AllocRow(found)] if found is not None else [])
        if cql.startswith("UPDATE placement_providers SET inventories"):
            return self._conditional(lambda: setattr(self, "inventories", args[0]))
        raise AssertionError(f"unexpected statement {cql}")

    def _provider_row(self) -> ProviderRow:
        return ProviderRow(
            self.pid, "rp", self.generation, set(), set(), self.inventories, self.usages
        )

    def _conditional(self, effect: Any) -> Result:
        outcome, self.outcome = self.outcome, "apply"
        if outcome in ("apply", "landed-unknown", "landed-rival-unknown"):
            effect()
            self.generation += 1
        if outcome in ("lost", "rival-unknown", "landed-rival-unknown"):
            self.generation += 1
        if outcome.endswith("-unknown"):
            raise CAS_UNKNOWN
        applied = outcome == "apply"
        return Result([CasRow(applied, self.generation)], applied)


def claim_with(session: ScriptedSession, outcome: str, taken: dict[str, int]) -> bool:
    store = PlacementStore(session)
    provider = store.provider(str(session.pid))
    consumer = uuid.uuid4()

    def effect() -> None:
        session.rows[consumer] = dict(taken)
        session.usages = {k: session.usages.get(k, 0) + v for k, v in taken.items()}

    session.pending["batch"] = effect
    session.outcome = outcome
    return store.claim(provider, str(consumer), taken)


@pytest.mark.parametrize(
    ("outcome", "claimed"),
    [
        ("apply", True),
        ("lost", False),
        ("landed-unknown", True),
        ("dropped-unknown", False),
        ("rival-unknown", False),
        # Ours landed and another scheduler claimed on top before the doubt was
        # settled: ours, though the generation is two steps on (taken for "not ours",
        # the consumer was placed a second time elsewhere).
        ("landed-rival-unknown", True),
    ],
)
def test_a_claim_is_settled_by_what_landed(outcome: str, claimed: bool) -> None:
    session = ScriptedSession()
    assert claim_with(session, outcome, {"VCPU": 2}) is claimed
    assert (session.usages.get("VCPU", 0) == 2) is claimed


@pytest.mark.parametrize("outcome", ["landed-unknown", "dropped-unknown"])
def test_an_uncertain_inventory_change_lands_once(outcome: str) -> None:
    session = ScriptedSession()
    store = PlacementStore(session)
    session.outcome = outcome
    updated = store.set_inventories(str(session.pid), 1, {"VCPU": Inventory(total=16)})
    # Landed: taken as done. Dropped: tried again, and applied the second time.
    assert updated.inventories["VCPU"].total == 16
    assert session.generation == 2


def test_an_uncertain_change_a_rival_won_is_a_conflict() -> None:
    session = ScriptedSession()
    store = PlacementStore(session)
    # Rival changes moved the generation two steps while ours was in doubt: ours
    # cannot have landed, and the caller must read again.

    def execute_twice_rival(statement: Any, args: tuple[Any, ...] = ()) -> Result:
        cql = statement.query_string if hasattr(statement, "query_string") else ""
        if cql.startswith("UPDATE placement_providers SET inventories"):
            session.generation += 2
            raise CAS_UNKNOWN
        return ScriptedSession.execute(session, statement, args)

    session.execute = execute_twice_rival  # type: ignore[method-assign]
    with pytest.raises(Conflict, match="changed"):
        store.set_inventories(str(session.pid), 1, {"VCPU": Inventory(total=16)})
