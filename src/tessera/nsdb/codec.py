"""How NSDB kinds, names and objects become classes and bytes, shared by both backends.

Both backends store objects as the model's JSON and parse them on every read, so the
in-memory backend can never hand two readers the same instance (it would hide aliasing
bugs that ZooKeeper would show). Only the fields that differ from their default are
written (a condition of a rule or mirror is mostly defaults: the full form of a mirror
with 3,000 conditions is ~1.8 MB, its compact form ~15 times smaller); reading accepts
both forms, so objects written in full by earlier versions still load. A consequence:
a field's default is part of the storage format (changing a default changes what every
stored object that kept the old one means).

Every write is bounded before it leaves the process (`check_commit_size`): an object
above `MAX_OBJECT_BYTES`, or a transaction above `MAX_COMMIT_BYTES`, raises
`ObjectTooLarge`. ZooKeeper refuses any request larger than its `jute.maxbuffer` (1 MiB
by default) by closing the connection, which costs the client its watches and its
leadership and leaves the write's outcome unknown; the limits keep every request well
below that, and both backends apply them alike.

Names (table names, keys, ids, counter and election names) are free strings to callers
but must each become exactly one ZooKeeper path component; `escape_component` makes
that mapping reversible for any string.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from tessera.model import KINDS, StoredObject
from tessera.model.text import STORED_CONTEXT
from tessera.nsdb.errors import ObjectTooLarge

# ZooKeeper's default jute.maxbuffer is 0xfffff bytes per request; a transaction is one
# request. Half of it per object leaves room for the transaction that writes it (the
# objects it touches, the id registry entries) and for the per-operation framing.
MAX_OBJECT_BYTES = 512 * 1024
MAX_COMMIT_BYTES = 960 * 1024
# What one operation of a transaction costs beyond its data, in ZooKeeper's encoding:
# the op header, the object's path and its id registry entry's path (each with the
# backend's root), ACL and flags. Counted from the jute encoding: ~225 bytes plus twice
# the root's length for a create with its registry entry, less for the other ops.
OP_OVERHEAD_BYTES = 256

# Kept readable: MAC addresses ("aa:bb:..."), IPv4 addresses and UUIDs pass unchanged.
_SAFE = frozenset(string.ascii_letters + string.digits + "-_:.")
_EMPTY = "%"  # no other escaped string is a lone '%': every '%' is followed by 2 hex digits


def escape_component(name: str) -> str:
    """One ZooKeeper path component for any string (reversible).

    Every character outside [A-Za-z0-9-_:.] is percent-encoded as UTF-8 bytes, so '/',
    '%', control and non-ASCII characters never reach ZooKeeper; names made only of dots
    ('.', '..') are fully encoded because ZooKeeper refuses them; '' becomes '%'.
    """
    if name == "":
        return _EMPTY
    if set(name) == {"."}:
        return "%2E" * len(name)
    out: list[str] = []
    for ch in name:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def unescape_component(component: str) -> str:
    """Inverse of `escape_component`; ValueError for text it cannot have produced."""
    if component == _EMPTY:
        return ""
    raw = bytearray()
    i = 0
    while i < len(component):
        ch = component[i]
        if ch == "%":
            hexpair = component[i + 1 : i + 3]
            if len(hexpair) != 2 or not all(c in string.hexdigits for c in hexpair):
                raise ValueError(f"bad escape in path component '{component}'")
            raw.append(int(hexpair, 16))
            i += 3
        else:
            raw.extend(ch.encode("utf-8"))
            i += 1
    return raw.decode("utf-8")


def kind_class(kind: str) -> type[StoredObject]:
    """The model class stored under `kind`; ValueError for a kind the NSDB does not know."""
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown object kind '{kind}'") from None


def kind_of(obj: StoredObject) -> str:
    """The NSDB kind of an object, refusing classes that are not registered kinds."""
    kind = getattr(type(obj), "kind", None)
    if not isinstance(kind, str):
        raise ValueError(f"{type(obj).__name__} is not a stored object kind")
    if kind_class(kind) is not type(obj):
        raise ValueError(f"{type(obj).__name__} is not the registered class of '{kind}'")
    return kind


def encode_object(obj: StoredObject) -> bytes:
    """The stored form: the id and every field that differs from its default (see the
    module doc); `ObjectTooLarge` above `MAX_OBJECT_BYTES`."""
    # The id stays: its default is a factory drawing a new id, which never equals it.
    encoded = obj.model_dump_json(exclude_defaults=True).encode("utf-8")
    if len(encoded) > MAX_OBJECT_BYTES:
        raise ObjectTooLarge(
            f"{describe(kind_of(obj), obj.id)} would take {_size(len(encoded))} in the NSDB, "
            f"above its limit of {_size(MAX_OBJECT_BYTES)} per object; make it smaller "
            "(fewer list entries)"
        )
    return encoded


def check_commit_size(sizes: Iterable[int], root: str = "/tessera") -> None:
    """Refuse a transaction whose operations (`sizes`: each one's data length, 0 for a
    delete or check) would make a request above `MAX_COMMIT_BYTES` for a backend whose
    paths start with `root` (the memory backend passes ZooKeeper's default root, so both
    backends refuse the same transactions)."""
    count = total = 0
    for size in sizes:
        count += 1
        total += size + OP_OVERHEAD_BYTES + 2 * len(root)
    if total > MAX_COMMIT_BYTES:
        raise ObjectTooLarge(
            f"this change writes {count} objects ({_size(total)}) in one transaction, "
            f"above the NSDB's limit of {_size(MAX_COMMIT_BYTES)}; make it in smaller "
            "steps (delete a device's ports before the device, for example)"
        )


def _size(n: int) -> str:
    """`n` bytes for a message: exact bytes and a readable unit."""
    if n >= 1024 * 1024:
        return f"{n} bytes ({n / (1024 * 1024):.1f} MiB)"
    if n >= 1024:
        return f"{n} bytes ({n / 1024:.0f} KiB)"
    return f"{n} bytes"


def decode_object(kind: str, data: bytes | str) -> StoredObject:
    # STORED_CONTEXT: an object stored before a check of the model existed stays readable.
    return kind_class(kind).model_validate_json(data, context=STORED_CONTEXT)


def id_taken(kind: str, id: str, holder: str) -> str:
    """The message of a create refused because `holder` (a kind) already uses the id:
    ids are unique across every kind, so a reference by id alone names one object."""
    if holder == kind:
        return f"{describe(kind, id)} already exists"
    return (
        f"cannot create {describe(kind, id)}: the id is already used by "
        f"{describe(holder, id)} (ids are unique across every kind of object)"
    )


def describe(kind: str, id: str) -> str:
    """'bridge 6f1e...' for messages that reach users (kinds are plural path names)."""
    return f"{kind.removesuffix('s').replace('_', ' ')} {id}"
