"""Text a user gives that tools print back: names, tenant ids, interface names.

Control characters (Unicode category Cc: NUL, ESC, newline, tab...), format characters
(Cf: the bidi overrides U+202A-U+202E and isolates U+2066-U+2069, zero-width marks),
lone surrogates (Cs: no UTF-8 encoding exists) and line/paragraph separators (Zl, Zp)
are refused anywhere in such text: printed raw they inject terminal escapes, split
table rows or reorder what a reader sees. The check runs on the text as sent, before
the model strips surrounding white space, so the JSON schema's `pattern` (which says
the same) and the server always agree.

Objects read back from the NSDB are validated under `STORED_CONTEXT`, which lets text
stored before these checks existed through: it stays readable (the CLI escapes it) and
can be fixed with a PUT.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationInfo

STORED_CONTEXT: Mapping[str, Any] = {"tessera_stored": True}
"""Validation context for objects read back from the NSDB: the checks added after an
object could be stored (text, ports, DHCP subnets, rule EtherTypes) let it through, so
that data written by an older version stays readable instead of breaking every read of
its kind. Limits on sizes hold regardless."""


def is_stored(info: ValidationInfo | None) -> bool:
    """Whether this validation reads an object back from the NSDB (`STORED_CONTEXT`)."""
    context = info.context if info is not None else None
    return isinstance(context, Mapping) and bool(context.get("tessera_stored"))


UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

UNICODE_VERSION = "14.0.0"
"""The Unicode version of `UNPRINTABLE_RANGES` (Python 3.11's `unicodedata`): the same
characters are refused whatever the Python, so the server always agrees with its schema."""

# Every code point in UNPRINTABLE_CATEGORIES as of UNICODE_VERSION, as inclusive ranges
# (tests/unit/model/test_model_text.py recomputes it). Kept literal: scanning the whole
# code space at import would cost a noticeable fraction of a second.
UNPRINTABLE_RANGES: tuple[tuple[int, int], ...] = (
    (0x0000, 0x001F), (0x007F, 0x009F), (0x00AD, 0x00AD), (0x0600, 0x0605),
    (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891),
    (0x08E2, 0x08E2), (0x180E, 0x180E), (0x200B, 0x200F), (0x2028, 0x202E),
    (0x2060, 0x2064), (0x2066, 0x206F), (0xD800, 0xDFFF), (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x13438),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F),
)  # fmt: skip


def _class_body(surrogates: bool = True) -> str:
    """The ranges as a regex character class body: BMP ranges as \\uXXXX escapes;
    astral code points listed one by one as literal characters. The schema's pattern
    leaves the surrogate range out (`surrogates=False`): a regex engine working on code
    points (Rust's, in schema validators) refuses a class naming surrogates, and no
    JSON text decodes to a lone surrogate that the server would then accept (it refuses
    them all the same)."""
    parts: list[str] = []
    for low, high in UNPRINTABLE_RANGES:
        if (low, high) == (0xD800, 0xDFFF) and not surrogates:
            continue
        if high <= 0xFFFF:
            parts.append(f"\\u{low:04x}" if low == high else f"\\u{low:04x}-\\u{high:04x}")
        else:
            parts.extend(chr(c) for c in range(low, high + 1))
    return "".join(parts)


# `(?!\n)$`, not a bare `$`: in Python (and so in schema-driven test generators) `$` also
# matches before a final newline, which the server refuses; ECMA-262 reads both alike.
END = "(?!\\n)$"

TEXT_PATTERN = f"^[^{_class_body(surrogates=False)}]*{END}"
"""The JSON schema `pattern` of printable text (what `check_text` accepts)."""
_UNPRINTABLE_RE = re.compile(f"[{_class_body()}]")


def check_text(value: str, what: str = "") -> str:
    """`value` unless it holds a character that must never be printed raw; the message
    names the character by code point and position, never echoing it."""
    found = _UNPRINTABLE_RE.search(value)
    if found is None:
        return value
    ch = found.group()
    name = unicodedata.name(ch, "")
    label = f"U+{ord(ch):04X}" + (f" {name}" if name else "")
    raise ValueError(
        f"{what + ' ' if what else ''}contains the control or format character {label} at "
        f"position {found.start()}; only printable characters are allowed"
    )


def _text(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str) and not is_stored(info):
        check_text(value)
    return value


# Field before the validator: its constraints then stay on the string itself (and read
# "String should have at most 255 characters").
Name = Annotated[
    str,
    Field(max_length=255, json_schema_extra={"pattern": TEXT_PATTERN}),
    BeforeValidator(_text),
]
"""A name or tenant id: up to 255 printable characters (surrounding spaces stripped)."""


# Linux's dev_valid_name(): 1 to IFNAMSIZ-1 = 15 bytes, not "." or "..", no "/", ":" or
# white space. Tessera also keeps to printable ASCII, so that characters are bytes and
# the schema's length is the kernel's; tap devices are named so everywhere.
IFNAME_MAX_LEN = 15
_IFCHAR = "[!-.0-9;-~]"  # printable ASCII without space, '/' and ':'
_IFCHAR_NO_DOT = "[!-\\-0-9;-~]"
IFNAME_PATTERN = (
    f"^(?:{_IFCHAR_NO_DOT}|{_IFCHAR_NO_DOT}{_IFCHAR}|\\.{_IFCHAR_NO_DOT}"
    f"|{_IFCHAR}{{3,{IFNAME_MAX_LEN}}}){END}"
)
"""The JSON schema `pattern` of a Linux interface name (what `check_ifname` accepts)."""
_IFNAME_RE = re.compile(IFNAME_PATTERN)


def check_ifname(value: str) -> str:
    """`value` if it is a valid Linux interface name, else ValueError saying why."""
    if _IFNAME_RE.fullmatch(value):
        return value
    check_text(value, "an interface name")
    if not 1 <= len(value) <= IFNAME_MAX_LEN:
        raise ValueError(
            f"an interface name has 1 to {IFNAME_MAX_LEN} characters (this one has {len(value)})"
        )
    if value in (".", ".."):
        raise ValueError(f"'{value}' is not a valid interface name")
    bad = next(ch for ch in value if not re.match(_IFCHAR, ch))
    what = "white space" if bad.isspace() else f"'{bad}' (U+{ord(bad):04X})"
    raise ValueError(
        f"an interface name cannot contain {what}: printable ASCII without '/', ':' or spaces"
    )


def _ifname(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str) and not is_stored(info):
        check_ifname(value)
    return value


InterfaceName = Annotated[
    str,
    Field(min_length=1, max_length=IFNAME_MAX_LEN, json_schema_extra={"pattern": IFNAME_PATTERN}),
    BeforeValidator(_ifname),
]
"""The name of a host's network interface a port is bound to, as Linux accepts it."""
