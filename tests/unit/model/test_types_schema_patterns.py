"""The patterns the OpenAPI schema declares for UUIDs, IPv4 and MAC addresses accept
exactly what the model's validators accept: a schema-driven client never sends a value
the server refuses (issue 13: 31 operations refused schema-valid requests), and the
server never takes a value the schema calls invalid."""

from __future__ import annotations

import re
import uuid

from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from tessera.model.types import IPV4_PATTERN, MAC_PATTERN, UUID_PATTERN, IPv4Addr, MacAddr, Uuid

_HEX = "0123456789abcdefABCDEF"


def _accepted(adapter: TypeAdapter[str], value: str) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def _schema_allows(pattern: str, value: str) -> bool:
    """JSON Schema's (ECMA) reading of `^...$`: `$` is the end, never before a final
    newline as in Python's `re.match`."""
    return re.fullmatch(pattern.removeprefix("^").removesuffix("$"), value) is not None


def _agree(adapter: TypeAdapter[str], pattern: str, value: str) -> None:
    assert _schema_allows(pattern, value) == _accepted(adapter, value), repr(value)


def _near(valid: st.SearchStrategy[str], alphabet: str) -> st.SearchStrategy[str]:
    """Valid values, and values one small edit away from valid."""
    edits = st.tuples(valid, st.integers(0, 40), st.sampled_from(alphabet + "{}:-.x \n")).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]
    )
    cuts = st.tuples(valid, st.integers(0, 40)).map(lambda t: t[0][: t[1]])
    return st.one_of(valid, edits, cuts, st.text(alphabet + ":-.{}", max_size=40))


UUIDS = st.uuids().map(str)
IPS = st.ip_addresses(v=4).map(str)
MACS = st.lists(st.integers(0, 255), min_size=6, max_size=6).flatmap(
    lambda b: st.sampled_from(":-").map(lambda sep: sep.join(f"{x:02X}" for x in b))
)


@given(_near(UUIDS | UUIDS.map(str.upper), _HEX))
@example(uuid.uuid4().hex)  # 32 digits without hyphens: uuid.UUID takes it, we do not
@example("{" + str(uuid.uuid4()) + "}")
@example("urn:uuid:" + str(uuid.uuid4()))
def test_the_uuid_pattern_is_what_the_server_accepts(value: str) -> None:
    _agree(TypeAdapter(Uuid), UUID_PATTERN, value)


@given(_near(IPS, "0123456789"))
@example("01.2.3.4")
@example("256.0.0.1")
@example("1.2.3")
def test_the_ipv4_pattern_is_what_the_server_accepts(value: str) -> None:
    _agree(TypeAdapter(IPv4Addr), IPV4_PATTERN, value)


@given(_near(MACS, _HEX))
@example("02:00:00:00:00:0g")
@example("02:00-00:00:00:01")
@example("02:00:00:00:00:01\n")
def test_the_mac_pattern_is_what_the_server_accepts(value: str) -> None:
    _agree(TypeAdapter(MacAddr), MAC_PATTERN, value)
