"""Referential integrity, driven by the `Ref` declarations on the model classes.

Two halves, both working inside one `Transaction` so they commit atomically with the
write that needs them:

- `check_refs`: every id a new or updated object names must exist; each newly named
  target is *touched* (rewritten unchanged with a version check). A plain existence
  check would not do: a concurrent delete of the target lists the target's referrers
  before our commit and would miss ours; touching bumps the target's version, so one
  of the two transactions fails its version check and is retried from fresh reads.
- `cascade_delete`: deleting an object applies every referrer's `on_delete` rule
  (`cascade`, `nullify`, `remove` with `delete_if_emptied`), recursively, with the same
  version checks on every referrer touched.

A few references live inside nested values: a tunnel zone's member hosts (no `Ref`)
and the ports and groups a mirror's conditions name (`Mirror.condition_refs`); they are
handled here by name, next to the generic rules.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any

from tessera.model import KINDS, Conditions, Mirror, Ref, StoredObject, TunnelZone
from tessera.model.types import TesseraModel
from tessera.nsdb.codec import describe
from tessera.nsdb.errors import Conflict, IntegrityError, NotFound
from tessera.nsdb.store.neutron_owners import owner_of
from tessera.nsdb.store.transaction import Transaction

# The field that names an object's parent: it comes from the REST path, so a missing
# parent is "not found" (404) rather than a bad reference in the body (400).
PARENT_FIELD: dict[str, str] = {
    "ports": "device_id",
    "routes": "router_id",
    "rules": "chain_id",
    "dhcp_subnets": "bridge_id",
}

# Fields set at creation that an update may not change (sent unchanged is fine).
# A port's addressing and VLAN define how the simulation forwards to it; the contract
# lets an update change only its filters and admin state. A DHCP subnet's prefix is
# its name in REST paths.
_PORT_MUTABLE = frozenset(
    {
        "inbound_filter_id",
        "outbound_filter_id",
        "inbound_mirror_ids",
        "outbound_mirror_ids",
        "admin_state_up",
    }
)
FIXED_FIELDS: dict[str, frozenset[str]] = {
    "ports": frozenset(f for f in KINDS["ports"].model_fields if f not in _PORT_MUTABLE)
    - frozenset(KINDS["ports"].read_only),
    "dhcp_subnets": frozenset({"subnet_prefix", "subnet_length"}),
    "tunnel_zones": frozenset({"type"}),
    # A pool moved to another load balancer would leave the VIPs naming it in the old one.
    "pools": frozenset({"load_balancer_id"}),
}

# Clearing one field of a pair must clear its partner, or the object is invalid.
_NULLIFY_TOGETHER: dict[tuple[str, str], tuple[str, ...]] = {
    ("ports", "host_id"): ("interface_name",),
}


def server_owned(cls: type[StoredObject]) -> frozenset[str]:
    """Read-only fields the server fills in (not the id, not the parent from the path,
    not a port's type): ignored from clients at create and at update alike."""
    keep = {"id", PARENT_FIELD.get(cls.kind, ""), "type" if cls.kind == "ports" else ""}
    return frozenset(f for f in cls.read_only if f not in keep)


def _referrers() -> dict[str, list[tuple[str, Ref]]]:
    index: dict[str, list[tuple[str, Ref]]] = defaultdict(list)
    for kind, cls in KINDS.items():
        for ref in cls.refs:
            for target in ref.targets:
                index[target].append((kind, ref))
    return dict(index)


REFERRERS = _referrers()
_CONDITION_TARGETS = frozenset(t for ref in Mirror.condition_refs for t in ref.targets)


# References whose target kind depends on the referrer: a port's `device_id` names a
# bridge or a router according to the port's `type`. Ids are unique across kinds (the
# NSDB refuses a create of a taken id), yet data written before that rule may hold a
# bridge and a router with one id; matching by id alone would then give a router the
# bridge's ports, so every check and cascade also asks which kind the referrer means.
_TARGET_BY_TYPE: dict[tuple[str, str], dict[str, str]] = {
    ("ports", "device_id"): {"Bridge": "bridges", "Router": "routers"},
}


def targets_of(obj: StoredObject, ref: Ref) -> tuple[str, ...]:
    """The kinds `ref` of this very object may name (a subset of `ref.targets`)."""
    by_type = _TARGET_BY_TYPE.get((obj.kind, ref.field))
    if by_type is None:
        return ref.targets
    kind = by_type.get(str(getattr(obj, "type", "")))
    return (kind,) if kind is not None else ref.targets


def ref_ids(obj: TesseraModel | None, ref: Ref) -> set[str]:
    if obj is None:
        return set()
    value = getattr(obj, ref.field)
    if value is None:
        return set()
    return set(value) if ref.many else {value}


def replace(obj: StoredObject, **changes: Any) -> StoredObject:
    """A copy with `changes`, validated again (model validators included)."""
    return type(obj).model_validate({**obj.model_dump(), **changes})


def _kinds_text(targets: tuple[str, ...]) -> str:
    return " or ".join(t.removesuffix("s").replace("_", " ") for t in targets)


def resolve(
    tx: Transaction, ref: Ref, id: str, parent: bool = False, targets: tuple[str, ...] = ()
) -> str:
    """The kind of the object `id` names through `ref` (among `targets`, by default
    all of the ref's); NotFound (for a parent) or IntegrityError (for a reference in
    the body) when there is none."""
    targets = targets or ref.targets
    for target in targets:
        if tx.find(target, id) is not None:
            return target
    if parent:
        raise NotFound(f"{describe(targets[0], id)} does not exist")
    raise IntegrityError(f"{ref.field}: no {_kinds_text(targets)} {id} exists")


def check_refs(tx: Transaction, new: StoredObject, old: StoredObject | None) -> None:
    """Every id `new` names exists; the newly named ones are touched (see module doc)."""
    parent = PARENT_FIELD.get(new.kind)
    for ref in type(new).refs:
        for id in sorted(ref_ids(new, ref) - ref_ids(old, ref)):
            if id == new.id and new.kind in ref.targets:
                continue
            target = resolve(tx, ref, id, ref.field == parent, targets_of(new, ref))
            tx.touch(target, id)
    if isinstance(new, Mirror):
        _check_condition_refs(tx, new, old if isinstance(old, Mirror) else None)


def _condition_ref_ids(mirror: Mirror | None, ref: Ref) -> set[str]:
    if mirror is None:
        return set()
    return {id for c in mirror.conditions for id in ref_ids(c, ref)}


def _check_condition_refs(tx: Transaction, new: Mirror, old: Mirror | None) -> None:
    for ref in Mirror.condition_refs:
        for n, condition in enumerate(new.conditions):
            for id in sorted(ref_ids(condition, ref) - _condition_ref_ids(old, ref)):
                nested = Ref(f"conditions[{n}].{ref.field}", ref.targets, ref.on_delete)
                tx.touch(resolve(tx, nested, id), id)


# Objects of these kinds are the Neutron API's (tessera.neutron): each names its tessera
# twins (bridge, router, port: the same id) and the rest of its translation (a router's
# chains, router ports, routes, SNAT and floating IP rules, a subnet's DHCP subnet, a
# security group's chains and groups), which only the Neutron API knows how to undo.
# The twins are found by id; the rest through the reverse index that every Neutron write
# keeps (`neutron_owners`): one or two reads per delete, whatever the number of objects.
NEUTRON_PREFIX = "neutron_"
_TWINS: dict[str, tuple[str, ...]] = {
    kind: tuple(k for k, c in KINDS.items() if c.twin_of == kind and k.startswith(NEUTRON_PREFIX))
    for kind in KINDS
}


def refuse_neutron_twin(tx: Transaction, kind: str, id: str) -> None:
    """Refuse (409) a v1 delete of an object that is part of a Neutron object's
    translation: cascading from the v1 side would delete the Neutron object (or leave
    it naming nothing) and leave behind the rest of its translation, which only the
    Neutron API's delete removes exactly."""
    owner = next(((k, id) for k in _TWINS.get(kind, ()) if tx.find(k, id) is not None), None)
    if owner is None and (indexed := owner_of(tx, id)) is not None:
        owner = (indexed.owner_kind, indexed.owner_id)
    if owner is not None:
        noun = owner[0].removeprefix(NEUTRON_PREFIX).removesuffix("s").replace("_", " ")
        raise Conflict(
            f"{describe(kind, id)} is managed by the Neutron API (Neutron {noun} "
            f"{owner[1]}): delete it there"
        )


def cascade_delete(tx: Transaction, kind: str, id: str) -> None:
    """Delete the object and apply its referrers' `on_delete` rules, recursively."""
    queue: deque[tuple[str, str]] = deque([(kind, id)])
    while queue:
        k, i = queue.popleft()
        if tx.is_deleted(k, i) or tx.find(k, i) is None:
            continue
        tx.delete(k, i)
        for rkind, ref in REFERRERS.get(k, []):
            for referrer in tx.all(rkind):
                if i not in ref_ids(referrer, ref) or k not in targets_of(referrer, ref):
                    continue
                if ref.on_delete == "cascade":
                    queue.append((rkind, referrer.id))
                elif ref.on_delete == "nullify":
                    extra = _NULLIFY_TOGETHER.get((rkind, ref.field), ())
                    tx.put(replace(referrer, **{ref.field: None, **dict.fromkeys(extra)}))
                else:
                    remaining = [x for x in getattr(referrer, ref.field) if x != i]
                    if not remaining and ref.delete_if_emptied:
                        queue.append((rkind, referrer.id))
                    else:
                        tx.put(replace(referrer, **{ref.field: remaining}))
        if k == "hosts":
            _remove_host_from_tunnel_zones(tx, i)
        if k in _CONDITION_TARGETS:
            queue.extend(_drop_from_mirror_conditions(tx, k, i))


def _remove_host_from_tunnel_zones(tx: Transaction, host_id: str) -> None:
    for zone in tx.all_of(TunnelZone):
        if any(h.host_id == host_id for h in zone.hosts):
            tx.put(replace(zone, hosts=[h for h in zone.hosts if h.host_id != host_id]))


def _drop_from_mirror_conditions(tx: Transaction, kind: str, id: str) -> list[tuple[str, str]]:
    """Apply the condition refs' `on_delete` inside every mirror naming `kind` `id`;
    returns the mirrors to delete (those left without any condition)."""
    refs = [ref for ref in Mirror.condition_refs if kind in ref.targets]
    doomed: list[tuple[str, str]] = []
    for mirror in tx.all_of(Mirror):
        if not any(id in _condition_ref_ids(mirror, ref) for ref in refs):
            continue
        left = (_without(c, refs, id) for c in mirror.conditions)
        kept = [c for c in left if c is not None]
        if kept:
            tx.put(mirror.model_copy(update={"conditions": kept}))
        else:
            doomed.append((Mirror.kind, mirror.id))
    return doomed


def _without(condition: Conditions, refs: list[Ref], id: str) -> Conditions | None:
    """The condition once `id` is deleted, None if the condition goes with it."""
    for ref in refs:
        if id not in ref_ids(condition, ref):
            continue
        remaining = [x for x in getattr(condition, ref.field) if x != id] if ref.many else []
        if ref.on_delete == "cascade" or (not remaining and ref.delete_if_emptied):
            return None
        condition = condition.model_copy(update={ref.field: remaining})
    return condition
