"""What every stored object shares: its kind (the NSDB type name) and its references.

References are declared on the class so that the NSDB enforces referential integrity
generically, in the same transaction as the write, for both backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field

from tessera.model.types import TesseraModel, Uuid, new_id

OnDelete = Literal["cascade", "nullify", "remove"]


@dataclass(frozen=True)
class Ref:
    """A field that names other objects.

    on_delete says what happens to the referrer when the target is deleted:
    `cascade` deletes the referrer; `nullify` sets the field to None; `remove` drops the
    id from a list field, and if `delete_if_emptied` the referrer is deleted when that
    empties the list (an emptied port list would otherwise widen a rule to every port).
    Every target a referrer names must exist when the referrer is written.
    """

    field: str
    targets: tuple[str, ...]
    on_delete: OnDelete
    many: bool = False
    delete_if_emptied: bool = False


class StoredObject(TesseraModel):
    """A top-level NSDB object with an id."""

    kind: ClassVar[str]
    refs: ClassVar[tuple[Ref, ...]] = ()
    # Fields the server owns: accepted back in a PUT unchanged but never taken from a client.
    read_only: ClassVar[tuple[str, ...]] = ("id",)
    # A kind whose objects share their id with an object of another kind, their twin (a
    # Neutron network is the bridge with its id): such an object takes no id of its own,
    # so ids stay unique across every other kind and a Neutron id is the tessera id.
    twin_of: ClassVar[str | None] = None

    id: Uuid = Field(default_factory=new_id)
