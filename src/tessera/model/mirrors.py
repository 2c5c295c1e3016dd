"""Port mirrors: copy the packets a port or device sees to another port (MidoNet's
mirror), for capture and inspection."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tessera.model.base import Ref, StoredObject
from tessera.model.limits import MAX_MIRROR_CONDITIONS
from tessera.model.rules import Conditions, Rule
from tessera.model.text import Name
from tessera.model.types import Uuid


class Mirror(StoredObject):
    """Copies to `to_port_id` every packet that matches any of `conditions` (an empty
    list matches everything); ports, bridges and routers name it in their
    `inbound_mirror_ids` / `outbound_mirror_ids`."""

    kind: ClassVar[str] = "mirrors"
    refs: ClassVar[tuple[Ref, ...]] = (Ref("to_port_id", ("ports",), "cascade"),)
    # The references inside each condition: the same, with the same `on_delete`, as a
    # rule's (they are the rule's condition fields). `cascade` and an emptied
    # `delete_if_emptied` list drop the condition, and a mirror left with no condition
    # is deleted: dropping the last one would widen the mirror to every packet.
    condition_refs: ClassVar[tuple[Ref, ...]] = tuple(
        ref for ref in Rule.refs if ref.field in Conditions.model_fields
    )

    name: Name = ""
    tenant_id: Name | None = None
    to_port_id: Uuid
    conditions: list[Conditions] = Field(default_factory=list, max_length=MAX_MIRROR_CONDITIONS)
