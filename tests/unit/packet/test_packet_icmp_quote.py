"""The packet an ICMP error quotes: which connection it names, and its translation with
every checksum it holds kept right (the quoted L4 checksum incrementally)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tessera.packet.checksum import internet_checksum
from tessera.packet.icmp import Icmp, Quoted, parse_quoted, translate_quoted
from tessera.packet.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, IPv4
from tessera.packet.tcp import Tcp
from tessera.packet.udp import Udp

addrs = st.integers(1, 0xFFFF_FFFE)
ports = st.integers(1, 0xFFFF)
payloads = st.binary(max_size=24)


def _packet(proto: int, src: int, dst: int, sport: int, dport: int, data: bytes) -> bytes:
    l4: Tcp | Udp
    l4 = Tcp(sport, dport, 7, 9, 0x18, payload=data) if proto == PROTO_TCP else (
        Udp(sport, dport, data)
    )  # fmt: skip
    return IPv4(src, dst, proto, l4, ttl=17, ident=4242).build()


@given(
    st.sampled_from([PROTO_TCP, PROTO_UDP]),
    st.tuples(addrs, addrs, ports, ports),
    st.tuples(addrs, addrs, ports, ports),
    payloads,
    st.integers(28, 200),
)
def test_translating_a_quote_gives_the_quote_of_the_translated_packet(
    proto: int,
    old: tuple[int, int, int, int],
    new: tuple[int, int, int, int],
    data: bytes,
    cut: int,
) -> None:
    """Byte for byte, whatever the quote holds of the packet (8 bytes of it, as routers
    send, up to all of it, as Linux sends): the checksums are those of the packet built
    with the new fields."""
    before = _packet(proto, *old, data)[:cut]
    after = _packet(proto, *new, data)[:cut]
    assert parse_quoted(before) == Quoted(proto, *old)
    src, dst, sport, dport = new
    assert translate_quoted(before, src=src, dst=dst, sport=sport, dport=dport) == after


def test_a_udp_quote_without_checksum_keeps_none() -> None:
    packet = bytearray(_packet(PROTO_UDP, 1, 2, 3, 4, b"x"))
    packet[26:28] = b"\x00\x00"
    out = translate_quoted(bytes(packet), src=9, sport=10)
    assert out[26:28] == b"\x00\x00" and parse_quoted(out) == Quoted(PROTO_UDP, 9, 2, 10, 4)
    assert internet_checksum(out[:20]) == 0


def test_a_quoted_echo_is_named_by_its_id_and_keeps_a_valid_checksum() -> None:
    echo = IPv4(1, 2, PROTO_ICMP, Icmp(8, 0, 77, 1, b"ping")).build()
    assert parse_quoted(echo) == Quoted(PROTO_ICMP, 1, 2, 77, 77)
    out = translate_quoted(echo, src=5, dst=6)
    assert out == IPv4(5, 6, PROTO_ICMP, Icmp(8, 0, 77, 1, b"ping")).build()
    assert (
        translate_quoted(echo, sport=78)
        == IPv4(1, 2, PROTO_ICMP, Icmp(8, 0, 78, 1, b"ping")).build()
    )


@given(st.binary(max_size=64))
def test_any_bytes_either_name_a_connection_or_none(data: bytes) -> None:
    q = parse_quoted(data)
    if q is not None:
        assert translate_quoted(data, src=1)[12:16] == b"\x00\x00\x00\x01"


def test_quotes_naming_no_connection() -> None:
    udp = _packet(PROTO_UDP, 1, 2, 3, 4, b"x")
    assert parse_quoted(udp[:23]) is None  # the ports cut short
    assert parse_quoted(b"\x60" + udp[1:]) is None  # not IPv4
    later = bytearray(udp)
    later[6:8] = (0x0003).to_bytes(2, "big")  # a later fragment: no ports
    assert parse_quoted(bytes(later)) is None
    reply_error = IPv4(1, 2, PROTO_ICMP, Icmp(3, 3, payload=udp[:28])).build()
    assert parse_quoted(reply_error) is None  # an error about an error
    assert parse_quoted(IPv4(1, 2, 47, b"gre!").build()) is None
