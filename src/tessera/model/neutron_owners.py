"""The reverse index of the Neutron translation: which Neutron objects name a tessera
object that is not their twin (a router's chains, routes and router ports, a security
group's chains and groups, a floating IP's NAT rules, a subnet's DHCP subnet).

A v1 delete of such an object is refused (409, `integrity.refuse_neutron_twin`); finding
its owner by walking every Neutron object was O(N) per delete. One entry per named id,
written in the transaction that writes the Neutron object (`store/neutron_owners.py`),
makes it one read. The entry shares its id with the object it indexes, whatever that
object's kind, so it takes no id of its own (`twin_of`).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tessera.model.base import StoredObject
from tessera.model.types import TesseraModel, Uuid

#: Owners of one id. Each indexed id belongs to one Neutron object's translation (ids
#: that many objects share, a network's or a host's, are not indexed): a few is plenty.
MAX_NEUTRON_OWNERS = 64


class NeutronOwner(TesseraModel):
    owner_kind: str = Field(max_length=64)
    owner_id: Uuid


class NeutronOwners(StoredObject):
    """The Neutron objects that name the object with this entry's id."""

    kind: ClassVar[str] = "neutron_owners"
    # The twin of an object of any kind: ids are unique across kinds, so no clash.
    twin_of: ClassVar[str | None] = "*"
    read_only: ClassVar[tuple[str, ...]] = ("id", "owners")

    owners: list[NeutronOwner] = Field(default_factory=list, max_length=MAX_NEUTRON_OWNERS)
