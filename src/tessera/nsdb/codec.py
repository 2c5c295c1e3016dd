"""How NSDB kinds, names and objects become classes and bytes, shared by both backends.

Both backends store objects as the model's JSON and parse them on every read, so the
in-memory backend can never hand two readers the same instance (it would hide aliasing
bugs that ZooKeeper would show). Names (table names, keys, ids, counter and election
names) are free strings to callers but must each become exactly one ZooKeeper path
component; `escape_component` makes that mapping reversible for any string.
"""

from __future__ import annotations

import string

from tessera.model import KINDS, StoredObject
from tessera.model.text import STORED_CONTEXT

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
    return obj.model_dump_json().encode("utf-8")


def decode_object(kind: str, data: bytes | str) -> StoredObject:
    # STORED_CONTEXT: an object stored before a check of the model existed stays readable.
    return kind_class(kind).model_validate_json(data, context=STORED_CONTEXT)


def describe(kind: str, id: str) -> str:
    """'bridge 6f1e...' for messages that reach users (kinds are plural path names)."""
    return f"{kind.removesuffix('s').replace('_', ' ')} {id}"
