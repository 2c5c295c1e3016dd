"""Placement's rows in Cassandra: every read goes to the database (nothing is cached),
every change to a provider is a lightweight transaction on its generation.

Reads that decide are QUORUM; conditional writes are QUORUM with SERIAL Paxos, so a
cluster of three keeps every claim when one node dies.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from tessera.placement.errors import Conflict, Invalid, NotFound, Unavailable
from tessera.placement.model import CUSTOM, Inventory, check_name

#: How often an uncertain claim (the coordinator died or timed out) is settled by a
#: SERIAL read before giving up.
SETTLE_TRIES = 10
#: How often a release is tried again when other changes win the provider's generation.
RELEASE_TRIES = 50
#: How often an idempotent statement is tried when its coordinator fails.
RETRIES = 4


@dataclass
class Provider:
    uuid: str
    name: str
    generation: int
    traits: frozenset[str] = frozenset()
    aggregates: frozenset[str] = frozenset()
    inventories: dict[str, Inventory] = field(default_factory=dict)
    usages: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "generation": self.generation,
            "traits": sorted(self.traits),
            "aggregates": sorted(self.aggregates),
            "inventories": {k: v.to_json() for k, v in sorted(self.inventories.items())},
            "usages": {k: self.usages.get(k, 0) for k in sorted(self.inventories)},
        }


def provider_id(value: str) -> str:
    """A provider or consumer uuid in canonical form; 404 for anything else (a path
    that names nothing)."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise NotFound(f"{value!r} is not a uuid, so it names nothing") from None


class PlacementStore:
    def __init__(self, session: Any) -> None:
        from cassandra import ConsistencyLevel  # type: ignore[attr-defined]

        self.session = session
        self._quorum = ConsistencyLevel.QUORUM
        self._serial = ConsistencyLevel.SERIAL
        prep = self._prepare
        self._q_provider = prep(
            "SELECT provider, name, generation, traits, aggregates, inventories, usages "
            "FROM placement_providers WHERE provider = ? LIMIT 1"
        )
        self._q_provider_serial = prep(
            "SELECT provider, name, generation, traits, aggregates, inventories, usages "
            "FROM placement_providers WHERE provider = ? LIMIT 1",
            serial=True,
        )
        self._q_all = prep(
            "SELECT DISTINCT provider, name, generation, traits, aggregates, inventories, "
            "usages FROM placement_providers"
        )
        self._q_rows = prep(
            "SELECT consumer, resources FROM placement_providers WHERE provider = ?"
        )
        self._q_row = prep(
            "SELECT resources FROM placement_providers WHERE provider = ? AND consumer = ?"
        )
        self._q_row_serial = prep(
            "SELECT resources FROM placement_providers WHERE provider = ? AND consumer = ?",
            serial=True,
        )
        self._i_provider = prep(
            "INSERT INTO placement_providers (provider, name, generation, traits, aggregates, "
            "inventories, usages, created) VALUES (?, ?, 0, {}, {}, '{}', {}, ?) IF NOT EXISTS",
            lwt=True,
        )
        self._u_claim = prep(
            "UPDATE placement_providers SET usages = ?, generation = ? "
            "WHERE provider = ? IF generation = ?",
            lwt=True,
        )
        self._i_alloc = prep(
            "INSERT INTO placement_providers (provider, consumer, resources) VALUES (?, ?, ?)"
        )
        self._d_alloc = prep("DELETE FROM placement_providers WHERE provider = ? AND consumer = ?")
        self._u_inventories = prep(
            "UPDATE placement_providers SET inventories = ?, generation = ? "
            "WHERE provider = ? IF generation = ?",
            lwt=True,
        )
        self._u_traits = prep(
            "UPDATE placement_providers SET traits = ?, generation = ? "
            "WHERE provider = ? IF generation = ?",
            lwt=True,
        )
        self._u_aggregates = prep(
            "UPDATE placement_providers SET aggregates = ?, generation = ? "
            "WHERE provider = ? IF generation = ?",
            lwt=True,
        )
        self._u_name = prep(
            "UPDATE placement_providers SET name = ?, generation = ? "
            "WHERE provider = ? IF generation = ?",
            lwt=True,
        )
        self._d_provider = prep(
            "DELETE name, generation, traits, aggregates, inventories, usages, created "
            "FROM placement_providers WHERE provider = ? IF generation = ?",
            lwt=True,
        )
        self._i_request = prep(
            "INSERT INTO placement_consumers (consumer, request, required, state, attempts, "
            "retries, created, updated) VALUES (?, ?, ?, 'pending', 0, 0, ?, ?)"
        )
        self._u_request = prep(
            "UPDATE placement_consumers SET state = ?, providers = ?, attempts = ?, "
            "retries = ?, updated = ? WHERE consumer = ?"
        )
        self._u_request_add = prep(
            "UPDATE placement_consumers SET providers = providers + ?, updated = ? "
            "WHERE consumer = ?"
        )
        self._q_request = prep(
            "SELECT consumer, request, required, state, providers, attempts, retries "
            "FROM placement_consumers WHERE consumer = ?"
        )

    def _prepare(self, cql: str, *, lwt: bool = False, serial: bool = False) -> Any:
        statement = self.session.prepare(cql)
        statement.consistency_level = self._serial if serial else self._quorum
        if lwt:
            statement.serial_consistency_level = self._serial
        return statement

    def _run(self, statement: Any, args: Iterable[Any] = (), *, retry: bool = True) -> Any:
        """Execute; an idempotent statement (every read, every plain write) is tried
        again when its coordinator failed (a node killed mid-request), conditional
        writes are not (the claim settles its outcome instead)."""
        from cassandra import DriverException  # type: ignore[attr-defined]
        from cassandra.cluster import NoHostAvailable
        from cassandra.protocol import ErrorMessage

        if isinstance(statement, str):
            # Plain CQL (resource classes, traits) at the same levels as the prepared
            # statements: the driver's default (LOCAL_ONE) could read a class or trait
            # one node has not heard of yet.
            from cassandra.query import SimpleStatement

            statement = SimpleStatement(
                statement,
                consistency_level=self._quorum,
                serial_consistency_level=self._serial,
            )
        tries = RETRIES if retry else 1
        for attempt in range(1, tries + 1):
            try:
                return self.session.execute(statement, tuple(args))
            except (NoHostAvailable, DriverException, ErrorMessage) as exc:
                # ErrorMessage: codes the driver has no class for, such as 0x1700
                # (CAS_WRITE_UNKNOWN: a Paxos proposal accepted by fewer than a
                # quorum because a replica died mid-round).
                if attempt == tries or not _transient(exc):
                    raise Unavailable(f"Cassandra: {exc}") from exc
                time.sleep(0.1 * attempt)
        raise AssertionError("unreachable")

    # -- resource classes and traits ---------------------------------------------------

    def resource_classes(self) -> dict[str, bool]:
        """Every class and whether it is discrete."""
        rows = self._run("SELECT name, discrete FROM placement_resource_classes")
        return {r.name: bool(r.discrete) for r in rows}

    def discrete_classes(self) -> frozenset[str]:
        return frozenset(k for k, v in self.resource_classes().items() if v)

    def create_resource_class(self, name: str, discrete: bool = False) -> bool:
        """True when created, False when it existed (with the same discreteness)."""
        check_name("resource class", name, custom=True)
        rows = self._run(
            "INSERT INTO placement_resource_classes (name, discrete, custom) "
            "VALUES (%s, %s, true) IF NOT EXISTS",
            (name, discrete),
        )
        row = rows.one()
        if row.applied:
            return True
        if bool(row.discrete) != discrete:
            kind = "discrete" if row.discrete else "divisible"
            raise Conflict(f"resource class {name} exists and is {kind}")
        return False

    def delete_resource_class(self, name: str) -> None:
        if not CUSTOM.fullmatch(name):
            raise Invalid(f"{name} is a standard resource class and cannot be deleted")
        if name not in self.resource_classes():
            raise NotFound(f"no resource class {name}")
        if any(name in p.inventories for p in self.providers()):
            raise Conflict(f"resource class {name} is in a provider's inventory")
        self._run("DELETE FROM placement_resource_classes WHERE name = %s", (name,))

    def traits(self) -> list[str]:
        return sorted(r.name for r in self._run("SELECT name FROM placement_traits"))

    def create_trait(self, name: str) -> bool:
        check_name("trait", name, custom=True)
        row = self._run(
            "INSERT INTO placement_traits (name, custom) VALUES (%s, true) IF NOT EXISTS",
            (name,),
        ).one()
        return bool(row.applied)

    # -- providers -----------------------------------------------------------------------

    def create_provider(self, name: str, provider: str | None = None) -> Provider:
        check_provider_name(name)
        pid = provider_id(provider) if provider else str(uuid.uuid4())
        if any(p.name == name for p in self.providers()):
            raise Conflict(f"a resource provider is already named {name!r}")
        row = self._run(self._i_provider, (uuid.UUID(pid), name, _now()), retry=False).one()
        if not row.applied:
            raise Conflict(f"resource provider {pid} exists")
        return Provider(pid, name, 0)

    def provider(self, provider: str, *, serial: bool = False) -> Provider:
        pid = provider_id(provider)
        query = self._q_provider_serial if serial else self._q_provider
        row = self._run(query, (uuid.UUID(pid),)).one()
        if row is None or row.generation is None:
            raise NotFound(f"no resource provider {pid}")
        return _provider(row)

    def providers(self) -> list[Provider]:
        """Every provider, read now (the scheduler's only source)."""
        rows = self._run(self._q_all)
        return sorted(
            (_provider(r) for r in rows if r.generation is not None), key=lambda p: p.name
        )

    def rename_provider(self, provider: str, name: str, generation: int | None = None) -> Provider:
        check_provider_name(name)
        current = self.provider(provider)
        if any(p.name == name and p.uuid != current.uuid for p in self.providers()):
            raise Conflict(f"a resource provider is already named {name!r}")
        expected = current.generation if generation is None else generation
        self._cas(self._u_name, (name, expected + 1, uuid.UUID(current.uuid), expected), current)
        return self.provider(current.uuid)

    def delete_provider(self, provider: str) -> None:
        current = self.provider(provider)
        if self.provider_allocations(current.uuid):
            raise Conflict(f"resource provider {current.uuid} has allocations")
        self._cas(self._d_provider, (uuid.UUID(current.uuid), current.generation), current)

    def set_inventories(
        self, provider: str, generation: int, inventories: dict[str, Inventory]
    ) -> Provider:
        """Replace the provider's inventories if `generation` is current (409 if not,
        and 409 if a class in use would go or shrink below its usage)."""
        current = self.provider(provider)
        known = self.resource_classes()
        for name in inventories:
            if name not in known:
                raise Invalid(f"no resource class {name} (create CUSTOM_ ones first)")
        inventories = {k: replace(v, discrete=known[k]) for k, v in inventories.items()}
        for name, used in current.usages.items():
            if not used:
                continue
            inv = inventories.get(name)
            if inv is None:
                raise Conflict(f"{name} is in use ({used}) on {current.uuid}: it cannot go")
            if inv.capacity < used:
                raise Conflict(
                    f"{name}: capacity {inv.capacity} would be below its usage {used} "
                    f"on {current.uuid}"
                )
        text = json.dumps({k: v.to_json() for k, v in sorted(inventories.items())})
        args = (text, generation + 1, uuid.UUID(current.uuid), generation)
        self._cas(self._u_inventories, args, current)
        return self.provider(current.uuid)

    def set_traits(self, provider: str, generation: int, traits: Iterable[str]) -> Provider:
        current = self.provider(provider)
        wanted = set(traits)
        unknown = wanted - set(self.traits())
        if unknown:
            raise Invalid(f"no such trait(s): {', '.join(sorted(unknown))}")
        args = (wanted, generation + 1, uuid.UUID(current.uuid), generation)
        self._cas(self._u_traits, args, current)
        return self.provider(current.uuid)

    def set_aggregates(self, provider: str, generation: int, aggregates: Iterable[str]) -> Provider:
        current = self.provider(provider)
        wanted = {provider_id(a) for a in aggregates}
        args = (wanted, generation + 1, uuid.UUID(current.uuid), generation)
        self._cas(self._u_aggregates, args, current)
        return self.provider(current.uuid)

    def _cas(self, statement: Any, args: tuple[Any, ...], current: Provider) -> None:
        """One conditional change of a provider on its generation (the last of
        `args`). An uncertain outcome (coordinator or replica lost mid-round) is
        settled by a SERIAL read, which finishes any round left in flight: at the
        expected generation nothing landed and the change is tried again; one above
        it is taken as ours (a rival change would have needed our generation too)."""
        expected = args[-1]
        for _ in range(SETTLE_TRIES):
            try:
                row = self._run(statement, args, retry=False).one()
                break
            except Unavailable:
                now = self._settled_generation(current.uuid)
                if now == expected + 1:
                    return
                if now != expected:
                    raise Conflict(
                        f"resource provider {current.uuid} changed: its generation is "
                        f"{now}, not {expected} (read it again and retry)"
                    ) from None
        else:
            raise Unavailable(f"cannot change resource provider {current.uuid} now")
        if not row.applied:
            seen = row.generation if "generation" in row._fields else "?"
            raise Conflict(
                f"resource provider {current.uuid} changed: its generation is {seen}, "
                f"not {args[-1]} (read it again and retry)"
            )

    def _settled_generation(self, provider: str) -> int | None:
        """The provider's generation read at SERIAL (None if it is gone): the read
        finishes any Paxos round left in flight, so what it sees is final."""
        for attempt in range(SETTLE_TRIES):
            try:
                return self.provider(provider, serial=True).generation
            except NotFound:
                return None
            except Unavailable:
                time.sleep(0.2 * (attempt + 1))
        raise Unavailable(f"cannot tell whether a change of resource provider {provider} landed")

    # -- allocations ---------------------------------------------------------------------

    def allocation(self, provider: str, consumer: str) -> dict[str, int]:
        """`consumer`'s allocation on `provider` ({} if none)."""
        row = self._run(self._q_row, (uuid.UUID(provider), uuid.UUID(consumer))).one()
        return dict(row.resources or {}) if row is not None else {}

    def claim(
        self,
        provider: Provider,
        consumer: str,
        taken: dict[str, int],
        previous: dict[str, int] | None = None,
    ) -> bool:
        """Make `consumer`'s allocation on `provider` exactly `taken` (replacing one it
        had there) if the provider is still at the generation it was read at: True if
        written, False if another change won. `taken` must fit in `provider` as read,
        less the consumer's own allocation there (the caller checked it); the condition
        makes that check still true when the write lands. The allocation row is read
        after `provider` was: had it changed since, so would the generation. A caller
        that read it so already passes it as `previous`."""
        from cassandra.query import BatchStatement

        pid, cid = uuid.UUID(provider.uuid), uuid.UUID(consumer)
        if previous is None:
            previous = self.allocation(provider.uuid, consumer)
        usages = dict(provider.usages)
        for name, amount in previous.items():
            usages[name] = max(0, usages.get(name, 0) - amount)
        for name, amount in taken.items():
            usages[name] = usages.get(name, 0) + amount
        batch = BatchStatement(consistency_level=self._quorum)
        batch.serial_consistency_level = self._serial
        batch.add(self._u_claim, (usages, provider.generation + 1, pid, provider.generation))
        batch.add(self._i_alloc, (pid, cid, taken))
        try:
            return bool(self._run(batch, retry=False).was_applied)
        except Unavailable:
            # Timed out, coordinator lost, or CAS_WRITE_UNKNOWN: settle it. At the read
            # generation nothing landed. Above it, ours may have landed and another
            # claim after it (two schedulers on one provider): the consumer's row, read
            # at SERIAL, tells. Taking "not generation + 1" for "not ours" placed a
            # consumer twice when a node died mid-claim (tests/integration/placement/
            # test_discrete_and_failure.py).
            settled = self._settled_generation(provider.uuid)
            if settled is None or settled <= provider.generation:
                return False
            return self._settled_row(pid, cid) == taken

    def _settled_row(self, pid: uuid.UUID, cid: uuid.UUID) -> dict[str, int] | None:
        for attempt in range(SETTLE_TRIES):
            try:
                row = self._run(self._q_row_serial, (pid, cid)).one()
                return dict(row.resources or {}) if row is not None else None
            except Unavailable:
                time.sleep(0.2 * (attempt + 1))
        raise Unavailable(f"cannot tell whether the claim of {cid} on {pid} landed")

    def release(self, provider: str, consumer: str) -> bool:
        """Remove `consumer`'s allocation on `provider` (its usages go down in the same
        conditional batch); False if there was none. Retried while other changes win
        the provider's generation, a bounded number of times."""
        from cassandra.query import BatchStatement

        pid, cid = uuid.UUID(provider), uuid.UUID(consumer)
        for _ in range(RELEASE_TRIES):
            current = self.provider(provider)
            row = self._run(self._q_row, (pid, cid)).one()
            if row is None:
                return False
            usages = dict(current.usages)
            for name, amount in (row.resources or {}).items():
                usages[name] = max(0, usages.get(name, 0) - amount)
            batch = BatchStatement(consistency_level=self._quorum)
            batch.serial_consistency_level = self._serial
            batch.add(self._u_claim, (usages, current.generation + 1, pid, current.generation))
            batch.add(self._d_alloc, (pid, cid))
            try:
                if self._run(batch, retry=False).was_applied:
                    return True
            except Unavailable:
                if self._settled_row(pid, cid) is None:
                    return True
        raise Conflict(
            f"resource provider {provider} kept changing while {consumer}'s allocation "
            "was released: retry"
        )

    def provider_allocations(self, provider: str) -> dict[str, dict[str, int]]:
        pid = provider_id(provider)
        rows = self._run(self._q_rows, (uuid.UUID(pid),))
        return {str(r.consumer): dict(r.resources or {}) for r in rows if r.consumer is not None}

    def consumer_allocations(self, consumer: str) -> dict[str, dict[str, int]]:
        """{provider: resources} of a consumer, read from the providers' partitions
        (the consumer's record only says where to look)."""
        record = self.request(consumer)
        if record is None:
            return {}
        cid = uuid.UUID(record["consumer"])
        out: dict[str, dict[str, int]] = {}
        for pid in record["providers"]:
            row = self._run(self._q_row, (uuid.UUID(pid), cid)).one()
            if row is not None:
                out[pid] = dict(row.resources or {})
        return out

    # -- request records -----------------------------------------------------------------

    def record_request(
        self, consumer: str, wanted: dict[str, int], required: Iterable[str]
    ) -> None:
        now = _now()
        args = (uuid.UUID(consumer), wanted, set(required), now, now)
        self._run(self._i_request, args)

    def update_request(
        self, consumer: str, state: str, providers: Iterable[str], attempts: int, retries: int
    ) -> None:
        pids = {uuid.UUID(p) for p in providers}
        self._run(self._u_request, (state, pids, attempts, retries, _now(), uuid.UUID(consumer)))

    def note_provider(self, consumer: str, provider: str) -> None:
        """Add `provider` to where the consumer's record says to look, before a claim
        there: a scheduler that dies between its claim and its final record leaves no
        allocation that nothing points to."""
        self._run(self._u_request_add, ({uuid.UUID(provider)}, _now(), uuid.UUID(consumer)))

    def request(self, consumer: str) -> dict[str, Any] | None:
        cid = provider_id(consumer)
        row = self._run(self._q_request, (uuid.UUID(cid),)).one()
        if row is None:
            return None
        return {
            "consumer": str(row.consumer),
            "resources": dict(row.request or {}),
            "required": sorted(row.required or ()),
            "state": row.state,
            "providers": sorted(str(p) for p in row.providers or ()),
            "attempts": row.attempts or 0,
            "retries": row.retries or 0,
        }


def _transient(exc: BaseException) -> bool:
    """A failure of the coordinator or of the replicas, not of the statement."""
    from cassandra import InvalidRequest  # type: ignore[attr-defined]

    return not isinstance(exc, InvalidRequest)


def check_provider_name(name: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= 200 or name.strip() != name:
        raise Invalid("a provider name is 1-200 characters, without surrounding spaces")
    return name


def _provider(row: Any) -> Provider:
    inventories = {
        k: Inventory.from_json(v) for k, v in json.loads(row.inventories or "{}").items()
    }
    return Provider(
        uuid=str(row.provider),
        name=row.name or "",
        generation=int(row.generation),
        traits=frozenset(row.traits or ()),
        aggregates=frozenset(row.aggregates or ()),
        inventories=inventories,
        usages={k: int(v) for k, v in (row.usages or {}).items()},
    )


def _now() -> Any:
    import datetime

    return datetime.datetime.now(datetime.UTC)
