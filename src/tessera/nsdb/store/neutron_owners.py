"""Keeping the reverse index of the Neutron translation (`model/neutron_owners.py`).

`Transaction.ops()` calls `reindex` before it turns a transaction into its commit: for
each Neutron object written there, the ids it stopped naming lose it as an owner and
the ids it started naming gain it, in the same commit (the entries are read and
written with the transaction's version checks, so two writers of one entry retry).
Every Neutron write goes through a transaction, so the index never lags the objects.

Not indexed: ids a Neutron object names under a key in `NOT_INDEXED`. Those name other
Neutron objects, or a twin (a network, port or router id is the bridge, port or router
id: `refuse_neutron_twin` finds those by id), or a host; they are also the ids many
objects share (every port names its network and its host), whose entries would grow
with them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tessera.model import NeutronOwners, StoredObject
from tessera.model.neutron import NeutronObject
from tessera.model.neutron_owners import NeutronOwner

if TYPE_CHECKING:
    from tessera.nsdb.store.transaction import Transaction

NOT_INDEXED = frozenset(
    {
        "project_id",
        "tenant_id",
        "network_id",
        "subnet_id",
        "port_id",
        "router_id",
        "device_id",
        "bridge_id",
        "tessera_port_id",
        "floating_network_id",
        "floating_port_id",
        "security_group_id",
        "remote_group_id",
        "binding_host_id",
    }
)
_UUID = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")


def named_ids(value: Any, skip: frozenset[str] = frozenset()) -> set[str]:
    """Every id under a `*_id` / `*_ids` key of a dumped object, at any depth, but
    those under a key in `skip`."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key in skip:
                continue
            if key.endswith("_id") and isinstance(item, str):
                found.add(item)
            elif key.endswith("_ids") and isinstance(item, list):
                found.update(x for x in item if isinstance(x, str))
            else:
                found |= named_ids(item, skip)
    elif isinstance(value, list):
        for item in value:
            found |= named_ids(item, skip)
    return found


def indexed_ids(obj: StoredObject | None) -> set[str]:
    """The ids of `obj`'s translation that the index lists it as owner of."""
    if not isinstance(obj, NeutronObject):
        return set()
    return {i for i in named_ids(obj.model_dump(), NOT_INDEXED) if _UUID.match(i)}


def reindex(
    tx: Transaction, changes: Iterable[tuple[StoredObject | None, StoredObject | None]]
) -> None:
    """Bring the entries of the ids the changed objects (before, after) name or named
    up to date, in `tx`."""
    for before, after in changes:
        owner_obj = after or before
        if not isinstance(owner_obj, NeutronObject):
            continue
        owner = NeutronOwner(owner_kind=owner_obj.kind, owner_id=owner_obj.id)
        old, new = indexed_ids(before), indexed_ids(after)
        for id in sorted(new - old):
            _add(tx, id, owner)
        for id in sorted(old - new):
            _drop(tx, id, owner)


def _add(tx: Transaction, id: str, owner: NeutronOwner) -> None:
    entry = tx.find(NeutronOwners.kind, id)
    if entry is None:
        tx.create(NeutronOwners(id=id, owners=[owner]))
    elif isinstance(entry, NeutronOwners) and owner not in entry.owners:
        tx.put(entry.model_copy(update={"owners": [*entry.owners, owner]}))


def _drop(tx: Transaction, id: str, owner: NeutronOwner) -> None:
    entry = tx.find(NeutronOwners.kind, id)
    if not isinstance(entry, NeutronOwners) or owner not in entry.owners:
        return
    left = [o for o in entry.owners if o != owner]
    if left:
        tx.put(entry.model_copy(update={"owners": left}))
    else:
        tx.delete(NeutronOwners.kind, id)


def owner_of(tx: Transaction, id: str) -> NeutronOwner | None:
    """A Neutron object whose translation names `id` (not as its twin), if any."""
    entry = tx.find(NeutronOwners.kind, id)
    if isinstance(entry, NeutronOwners) and entry.owners:
        return entry.owners[0]
    return None
