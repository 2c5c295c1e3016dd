from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.packet import (
    PacketError,
    ip_from_str,
    ip_to_str,
    is_multicast_ip,
    is_multicast_mac,
    mac_from_str,
    mac_to_str,
    prefix_mask,
)


def test_known_values() -> None:
    assert mac_from_str("02:00:5E:10:00:01") == 0x02005E100001
    assert mac_from_str("02-00-5e-10-00-01") == 0x02005E100001
    assert mac_to_str(0x02005E100001) == "02:00:5e:10:00:01"
    assert ip_from_str("198.18.0.1") == 0xC6120001
    assert ip_to_str(0xC6120001) == "198.18.0.1"
    assert prefix_mask(0) == 0 and prefix_mask(24) == 0xFFFFFF00 and prefix_mask(32) == 2**32 - 1
    assert is_multicast_mac(0xFFFF_FFFF_FFFF) and not is_multicast_mac(0x020000000001)
    assert is_multicast_ip(ip_from_str("224.0.0.1")) and not is_multicast_ip(1)


@given(st.integers(0, 2**48 - 1))
def test_mac_round_trip(mac: int) -> None:
    assert mac_from_str(mac_to_str(mac)) == mac


@given(st.integers(0, 2**32 - 1))
def test_ip_round_trip(ip: int) -> None:
    assert ip_from_str(ip_to_str(ip)) == ip


@pytest.mark.parametrize(
    "text",
    ["", "02:00:00:00:00", "02:00:00:00:00:0g", "02:00-00:00:00:01", "020000000001",
     "02:00:00:00:00:01 ", "+2:00:00:00:00:01", "02:00:00:00:00:001"],
)  # fmt: skip
def test_bad_macs(text: str) -> None:
    with pytest.raises(PacketError):
        mac_from_str(text)


@pytest.mark.parametrize("text", ["", "1.2.3", "1.2.3.256", "01.2.3.4", "1.2.3.4/24", "a.b.c.d"])
def test_bad_ips(text: str) -> None:
    with pytest.raises(PacketError):
        ip_from_str(text)


@pytest.mark.parametrize("value", [-1, 2**48])
def test_out_of_range_mac(value: int) -> None:
    with pytest.raises(PacketError):
        mac_to_str(value)


@pytest.mark.parametrize("value", [-1, 2**32])
def test_out_of_range_ip(value: int) -> None:
    with pytest.raises(PacketError):
        ip_to_str(value)


@given(st.text(max_size=20))
def test_arbitrary_text_raises_only_packet_error(text: str) -> None:
    for parse in (mac_from_str, ip_from_str):
        try:
            parse(text)
        except PacketError:
            pass
