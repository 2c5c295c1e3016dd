"""Names, tenant ids and interface names hold printable text only (issue 13, item 5)."""

from __future__ import annotations

import re
import sys
import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tessera.model import (
    Bridge,
    Chain,
    DhcpHost,
    IpAddrGroup,
    Mirror,
    Port,
    PortGroup,
    Router,
    TunnelZone,
    new_id,
)
from tessera.model.dhcp import HOSTNAME_PATTERN
from tessera.model.text import (
    IFNAME_PATTERN,
    STORED_CONTEXT,
    TEXT_PATTERN,
    UNICODE_VERSION,
    UNPRINTABLE_CATEGORIES,
    UNPRINTABLE_RANGES,
)

# One of each class the issue names: C0 controls, DEL and C1, the bidi overrides and
# isolates, zero-width and BOM format characters, line/paragraph separators, tags.
BAD = {
    "NUL": "\x00",
    "ESC": "\x1b",
    "newline": "\n",
    "tab": "\t",
    "DEL": "\x7f",
    "C1 CSI": "\x9b",
    "RLO": "\u202e",
    "LRE": "\u202a",
    "RLI": "\u2067",
    "PDI": "\u2069",
    "zero width space": "\u200b",
    "BOM": "\ufeff",
    "line separator": "\u2028",
    "paragraph separator": "\u2029",
    "tag": "\U000e0041",
}

NAMED: list[tuple[Any, str, dict[str, Any]]] = [
    (Bridge, "name", {}),
    (Bridge, "tenant_id", {}),
    (Router, "name", {}),
    (Router, "tenant_id", {}),
    (Chain, "name", {}),
    (Chain, "tenant_id", {}),
    (PortGroup, "name", {}),
    (PortGroup, "tenant_id", {}),
    (IpAddrGroup, "name", {}),
    (TunnelZone, "name", {}),
    (Mirror, "name", {"to_port_id": new_id()}),
    (Mirror, "tenant_id", {"to_port_id": new_id()}),
]


@pytest.mark.parametrize("what", sorted(BAD))
@pytest.mark.parametrize(("cls", "field", "base"), NAMED)
def test_names_refuse_control_and_format_characters(
    cls: Any, field: str, base: dict[str, Any], what: str
) -> None:
    bad = BAD[what]
    code = f"U+{ord(bad):04X}"
    for text in (f"a{bad}b", f"{bad}ab", f"ab{bad}"):  # also where stripping would hide it
        with pytest.raises(ValidationError, match=re.escape(code)):
            cls.model_validate({**base, field: text})


@pytest.mark.parametrize("text", ["web", "Zoë's net", "日本語", "emoji 😀", "a\u00a0b", "[x]"])
def test_printable_names_pass_unchanged(text: str) -> None:
    assert Bridge(name=text).name == text
    assert re.fullmatch(TEXT_PATTERN, text)


def test_the_message_names_the_character_without_echoing_it() -> None:
    with pytest.raises(ValidationError) as info:
        Bridge(name="x\x1b[31mred")
    message = info.value.errors()[0]["msg"]
    assert "U+001B" in message and "position 1" in message
    assert "\x1b" not in message


def test_the_ranges_are_exactly_the_refused_categories() -> None:
    """The literal table in model/text.py against this Python's Unicode database: equal
    on the version it was made from; on a newer one, still only refused categories."""
    listed = {c for low, high in UNPRINTABLE_RANGES for c in range(low, high + 1)}
    wanted = {
        c
        for c in range(sys.maxunicode + 1)
        if unicodedata.category(chr(c)) in UNPRINTABLE_CATEGORIES
    }
    assert listed <= wanted
    if unicodedata.unidata_version == UNICODE_VERSION:
        assert listed == wanted


@pytest.mark.parametrize(
    "good", ["tap0", "tap1234abcd-ef", "eth0.100", "veth_a", "a", "x" * 15, ".a"]
)
def test_interface_names_linux_accepts(good: str) -> None:
    port = Port(device_id=new_id(), type="Bridge", host_id=new_id(), interface_name=good)
    assert port.interface_name == good
    assert re.fullmatch(IFNAME_PATTERN, good)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("", "1 to 15 characters (this one has 0)"),
        ("x" * 16, "1 to 15 characters"),
        (".", "not a valid interface name"),
        ("..", "not a valid interface name"),
        ("a/b", "'/'"),
        ("eth0:1", "':'"),
        ("tap 0", "white space"),
        (" tap0", "white space"),
        ("tap0\n", "U+000A"),
        ("a\x00b", "U+0000"),
        ("tap\u202e0", "U+202E"),
        ("tapé", "'é'"),
    ],
)
def test_interface_names_linux_refuses(bad: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(fragment)):
        Port(device_id=new_id(), type="Bridge", host_id=new_id(), interface_name=bad)
    assert not re.fullmatch(IFNAME_PATTERN, bad)


@pytest.mark.parametrize("bad", ["vm 5", "-vm", "vm-", "a..b", "a" * 64, "vm\x1b", "vm/1", "é"])
def test_dhcp_host_names_are_host_names(bad: str) -> None:
    with pytest.raises(ValidationError, match=r"not a host name|U\+001B"):
        DhcpHost(mac_addr="02:00:00:00:00:01", ip_addr="10.0.0.2", name=bad)


def test_text_stored_before_the_check_stays_readable() -> None:
    """An object read back from the NSDB (STORED_CONTEXT) keeps what an older version
    let in; a copy of it (as the store makes) works too, a new object does not."""
    raw = Bridge(name="ok").model_dump() | {"name": "old\x1bname"}
    stored = Bridge.model_validate(raw, context=STORED_CONTEXT)
    assert stored.name == "old\x1bname"
    assert stored.model_copy(update={"admin_state_up": False}).name == "old\x1bname"
    port = Port.model_validate(
        {"device_id": new_id(), "type": "Bridge", "host_id": new_id(), "interface_name": "a/b"},
        context=STORED_CONTEXT,
    )
    assert port.model_copy(update={"vlan_id": 3}).interface_name == "a/b"
    with pytest.raises(ValidationError):
        Bridge.model_validate(raw)


def test_a_copy_is_validated_like_a_new_object() -> None:
    """The store binds ports and grows lists through copies: they must not slip past."""
    port = Port(device_id=new_id(), type="Bridge")
    with pytest.raises(ValidationError, match="white space"):
        port.model_copy(update={"host_id": new_id(), "interface_name": "tap 0"})
    bound = port.model_copy(update={"host_id": new_id(), "interface_name": "tap0"})
    assert bound.interface_name == "tap0"
    assert bound.model_fields_set == port.model_fields_set | {"host_id", "interface_name"}


def _accepts(field: str, value: str) -> bool:
    try:
        if field == "name":
            Bridge(name=value)
        elif field == "interface_name":
            Port(device_id=new_id(), type="Bridge", host_id=new_id(), interface_name=value)
        else:
            DhcpHost(mac_addr="02:00:00:00:00:01", ip_addr="10.0.0.2", name=value)
    except ValidationError:
        return False
    return True


FIELDS = {"name": TEXT_PATTERN, "interface_name": IFNAME_PATTERN, "hostname": HOSTNAME_PATTERN}


@pytest.mark.parametrize("field", sorted(FIELDS))
@settings(max_examples=150)
@given(data=st.data())
def test_what_the_schema_pattern_generates_the_model_accepts(
    field: str, data: st.DataObject
) -> None:
    """Schema-driven clients (and fuzzers) generate from the pattern with Python's regex
    semantics, where a bare `$` would also allow a final newline: each value they draw
    within the schema's length must pass."""
    value = data.draw(st.from_regex(FIELDS[field]))
    schema_max = {"name": 255, "interface_name": 15, "hostname": 63}[field]
    if field == "interface_name" and not value:
        return  # minLength 1 in the schema
    if len(value) <= schema_max:
        assert _accepts(field, value), repr(value)


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize("value", ["ok\n", "ok\x00", "o\u202ek", "tap 0", "a/b", "-x", "..", "é"])
def test_the_schema_pattern_refuses_what_the_model_refuses(field: str, value: str) -> None:
    """JSON Schema's `pattern` is a search (`re.search`): it and the model agree."""
    assert bool(re.search(FIELDS[field], value)) == _accepts(field, value)
