"""The Python model of the datapath's connection table (`tessera.datapath.conntrack`):
which packets have a connection, and the table's bound. What the backends do with it is
the kernel contract's (tests/kernel/datapath/test_datapath_contract_conntrack.py)."""

from __future__ import annotations

from tessera.datapath.base import packet_key
from tessera.datapath.conntrack import (
    CT_F_UNREPLIED,
    CT_REPLY,
    CT_TRACKED,
    ConnTable,
    ct_state_of,
    ct_tuple,
)
from tessera.packet import ETH_TYPE_IPV4, Arp, Ethernet, Icmp, IPv4, Tcp, Udp, ip_from_str

A, B = ip_from_str("10.0.0.1"), ip_from_str("10.0.0.2")


def key(payload: IPv4 | Arp, eth_type: int = ETH_TYPE_IPV4) -> tuple[int, ...]:
    return packet_key(1, Ethernet(2, 1, eth_type, payload).build())


def test_what_has_a_connection_and_how_it_reads_reversed() -> None:
    tcp = key(IPv4(A, B, 6, Tcp(1000, 80)))
    assert ct_tuple(tcp, 7) == (7, 6, A, B, 1000, 80)
    assert ct_tuple(tcp, 7, reversed_=True) == (7, 6, B, A, 80, 1000)
    udp = key(IPv4(A, B, 17, Udp(53, 5353, b"x")))
    assert ct_tuple(udp, 7) == (7, 17, A, B, 53, 5353)
    echo = key(IPv4(A, B, 1, Icmp(8, 0, ident=42, seq=1)))
    assert ct_tuple(echo, 7) == (7, 1, A, B, 42, 42)
    reply = key(IPv4(B, A, 1, Icmp(0, 0, ident=42, seq=1)))
    assert ct_tuple(reply, 7, reversed_=True) == ct_tuple(echo, 7)
    for none in (
        key(IPv4(A, B, 1, Icmp(3, 1))),  # an error: related, never a connection
        key(IPv4(A, B, 17, b"x" * 8, frag_offset=4)),  # a later fragment: no ports
        key(IPv4(A, B, 47, b"x" * 8)),  # GRE
        key(Arp(1, 2, A, 0, B), 0x0806),
    ):
        assert ct_tuple(none, 7) is None


def test_the_state_of_a_packet_and_the_entry_it_refreshes() -> None:
    table = ConnTable()
    syn = key(IPv4(A, B, 6, Tcp(1000, 80, flags=0x02)))
    ack = key(IPv4(B, A, 6, Tcp(80, 1000, flags=0x12)))
    assert ct_state_of(ack, 0, table, 0x12, 1.0) == 0  # no zone: no say
    assert ct_state_of(ack, 7, table, 0x12, 1.0) == CT_TRACKED
    table.commit_packet(syn, 7, 0x02, 1.0)
    assert table.entries() == {(7, 6, A, B, 1000, 80): (1.0, 0x02 | CT_F_UNREPLIED)}
    assert ct_state_of(ack, 7, table, 0x12, 2.0) == CT_TRACKED | CT_REPLY
    assert ct_state_of(ack, 8, table, 0x12, 2.0) == CT_TRACKED  # another zone
    assert table.entries() == {(7, 6, A, B, 1000, 80): (2.0, 0x12)}


def test_the_table_is_bounded_and_drops_the_least_recently_used() -> None:
    table = ConnTable(max_entries=3)
    for sport, now in ((1, 1.0), (2, 2.0), (3, 3.0)):
        table.commit((7, 6, A, B, sport, 80), 0, now)
    assert table.hit((7, 6, A, B, 1, 80), 0, 4.0)  # used: now the most recent
    table.commit((7, 6, A, B, 4, 80), 0, 5.0)
    assert {c[4] for c in table.entries()} == {1, 3, 4}
    assert len(table) == 3
