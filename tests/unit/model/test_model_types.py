"""Scalar validation every object relies on: the REST API shows what these normalise."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tessera.model import Bridge, PortRange, new_id
from tessera.model.types import network_of


def test_unknown_fields_are_refused_so_typos_never_pass() -> None:
    with pytest.raises(ValidationError, match="admin_state"):
        Bridge.model_validate({"name": "b", "admin_state": False})


def test_objects_are_frozen() -> None:
    b = Bridge(name="b")
    with pytest.raises(ValidationError):
        b.name = "c"  # type: ignore[misc]


def test_names_are_stripped_and_bounded() -> None:
    assert Bridge(name="  b1 ").name == "b1"
    with pytest.raises(ValidationError):
        Bridge(name="x" * 256)


def test_ids_are_uuids_normalised_to_lower_case() -> None:
    upper = new_id().upper()
    assert Bridge(id=upper).id == upper.lower()
    with pytest.raises(ValidationError, match="is not a UUID"):
        Bridge(id="not-a-uuid")


@given(st.binary(min_size=6, max_size=6), st.sampled_from([":", "-"]), st.booleans())
def test_mac_addresses_normalise_to_lower_case_colons(raw: bytes, sep: str, upper: bool) -> None:
    raw = bytes([(raw[0] & 0xFE) | 0x02]) + raw[1:]  # unicast, never zero: a router port's
    text = sep.join(f"{b:02x}" for b in raw)
    if upper:
        text = text.upper()
    from tessera.model import Port

    port = Port(
        device_id=new_id(),
        type="Router",
        port_address="10.0.0.1",
        network_address="10.0.0.0",
        network_length=24,
        port_mac=text,
    )
    assert port.port_mac == ":".join(f"{b:02x}" for b in raw)


@pytest.mark.parametrize("bad", ["", "02:00:00:00:00", "02:00:00:00:00:0g", "0200.0000.0001"])
def test_malformed_macs_name_the_value(bad: str) -> None:
    from tessera.model import Port

    with pytest.raises(ValidationError, match="is not a MAC address"):
        Port(
            device_id=new_id(),
            type="Router",
            port_address="10.0.0.1",
            network_address="10.0.0.0",
            network_length=24,
            port_mac=bad,
        )


def test_port_range_is_inclusive_and_ordered() -> None:
    assert PortRange(start=80, end=80).end == 80
    with pytest.raises(ValidationError, match="greater than end"):
        PortRange(start=81, end=80)
    with pytest.raises(ValidationError):
        PortRange(start=0, end=65536)


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_network_of_allows_host_bits_like_midonet(addr: int, length: int) -> None:
    text = str(ipaddress.IPv4Address(addr))
    net = network_of(text, length)
    assert ipaddress.IPv4Address(addr) in net
    assert net.prefixlen == length
