"""Names become single ZooKeeper path components, reversibly, whatever they contain."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.model import Bridge, Chain, Rule
from tessera.nsdb.codec import (
    decode_object,
    describe,
    encode_object,
    escape_component,
    kind_of,
    unescape_component,
)

_ZK_FORBIDDEN = {chr(c) for c in range(0x00, 0x20)} | {chr(c) for c in range(0x7F, 0xA0)}


@given(st.text())
def test_escape_is_reversible_and_yields_one_valid_component(name: str) -> None:
    component = escape_component(name)
    assert unescape_component(component) == name
    assert component
    assert "/" not in component
    assert component not in {".", ".."}
    assert not set(component) & _ZK_FORBIDDEN
    assert component.isascii()


@given(st.text(), st.text())
def test_distinct_names_never_share_a_component(a: str, b: str) -> None:
    if a != b:
        assert escape_component(a) != escape_component(b)


@pytest.mark.parametrize(
    ("name", "component"),
    [
        ("6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b", "6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b"),
        ("aa:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee:ff"),
        ("10.0.0.1", "10.0.0.1"),
        ("mac_table/br-1", "mac_table%2Fbr-1"),
        ("", "%"),
        (".", "%2E"),
        ("..", "%2E%2E"),
        ("%", "%25"),
        ("é", "%C3%A9"),
    ],
)
def test_common_names_stay_readable(name: str, component: str) -> None:
    assert escape_component(name) == component


@pytest.mark.parametrize("bad", ["%G0", "%2", "abc%"])
def test_unescape_refuses_what_escape_cannot_produce(bad: str) -> None:
    with pytest.raises(ValueError):
        unescape_component(bad)


def test_objects_round_trip_through_json() -> None:
    chain = Chain(name="c")
    rule = Rule(chain_id=chain.id, type="accept", position=1, in_ports=[chain.id])
    assert decode_object("rules", encode_object(rule)) == rule
    assert kind_of(rule) == "rules"


def test_kind_of_refuses_unregistered_classes() -> None:
    class Custom(Bridge):
        pass

    with pytest.raises(ValueError, match="not the registered class"):
        kind_of(Custom())


def test_describe_names_the_object_for_humans() -> None:
    assert describe("bridges", "x") == "bridge x"
    assert describe("ip_addr_groups", "y") == "ip addr group y"
