"""The datapath contract for `FlowStats.tcp_flags`: the OR of the TCP flags of the
packets that hit a flow, on every backend (the eBPF and userspace ones on real veths).

After a connection's first packet its packets stay in the datapath, so the flags in the
flow's stats are how the agent learns that a FIN or RST went by (its conntrack entries
then expire sooner). Expected values are written out here, never computed by
`tessera.datapath.frames.tcp_flags`.
"""

from __future__ import annotations

import pytest
from kdp_harness import Harness, at_port, seen
from test_datapath_contract import IP1, IP2, MAC1, MAC2, to_port_2

from tessera.datapath.base import Flow, FlowStats, Match, Output
from tessera.packet import ETH_TYPE_IPV4, PROTO_TCP, PROTO_UDP, Ethernet, IPv4, Tcp, Udp

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def tcp(flags: int, *, vlan: int | None = None, payload: bytes = b"", **ip: object) -> bytes:
    segment = Tcp(4000, 80, seq=1, ack=1, flags=flags, payload=payload)
    packet = IPv4(IP1, IP2, PROTO_TCP, segment, **ip)  # type: ignore[arg-type]
    return Ethernet(MAC2, MAC1, ETH_TYPE_IPV4, packet, vlan_id=vlan).build()


def flags_after(harness: Harness, *frames: bytes) -> int:
    """Send `frames` through one fresh flow to port 2; the flags its stats report."""
    harness.dp.install(Flow(to_port_2(), (Output(2),)))
    for frame in frames:
        assert harness.exchange(1, frame, expect=1) == seen([(at_port(2), frame)])
    stats = harness.dp.stats(to_port_2())
    assert stats is not None and stats.packets == len(frames)
    return stats.tcp_flags


def test_a_new_flow_has_seen_no_flags(harness: Harness) -> None:
    harness.dp.install(Flow(to_port_2(), (Output(2),)))
    assert harness.dp.stats(to_port_2()) == FlowStats(0, 0, None, 0)


def test_a_fin_through_an_installed_flow_is_in_its_stats(harness: Harness) -> None:
    assert flags_after(harness, tcp(SYN), tcp(ACK, payload=b"data")) == SYN | ACK
    # The same flow, on: the FIN is added to what it saw before.
    assert harness.exchange(1, tcp(FIN | ACK), expect=1).count() == 1
    stats = harness.dp.stats(to_port_2())
    assert stats is not None and stats.tcp_flags == SYN | ACK | FIN


def test_an_rst_is_in_the_stats_and_tagged_frames_count_too(harness: Harness) -> None:
    assert flags_after(harness, tcp(RST | ACK)) == RST | ACK
    harness.reset()
    tagged = Match.of(in_port=1, vlan_id=42, eth_dst=MAC2)
    harness.dp.install(Flow(tagged, (Output(2),)))
    frame = tcp(RST, vlan=42)
    assert harness.exchange(1, frame, expect=1) == seen([(at_port(2), frame)])
    stats = harness.dp.stats(tagged)
    assert stats is not None and stats.tcp_flags == RST


def test_tcp_behind_ip_options_and_all_eight_flags(harness: Harness) -> None:
    options = bytes([1] * 36) + bytes(4)  # 40 bytes: the longest IPv4 header
    assert flags_after(harness, tcp(0xFF, options=options)) == 0xFF


def test_other_protocols_and_later_fragments_add_nothing(harness: Harness) -> None:
    udp = Ethernet(
        MAC2, MAC1, ETH_TYPE_IPV4, IPv4(IP1, IP2, PROTO_UDP, Udp(5, 6, payload=b"\x1f" * 20))
    ).build()
    # A later fragment's first bytes are data, whatever they look like.
    later = Ethernet(
        MAC2, MAC1, ETH_TYPE_IPV4,
        IPv4(IP1, IP2, PROTO_TCP, b"\x1f" * 24, frag_offset=3, more_fragments=True),
    ).build()  # fmt: skip
    # A first fragment whose TCP header stops before the flags byte.
    short = Ethernet(
        MAC2, MAC1, ETH_TYPE_IPV4,
        IPv4(IP1, IP2, PROTO_TCP, b"\x1f" * 13, more_fragments=True),
    ).build()  # fmt: skip
    assert flags_after(harness, udp, later, short) == 0


def test_a_replaced_flow_keeps_the_flags_it_saw(harness: Harness) -> None:
    assert flags_after(harness, tcp(FIN | ACK)) == FIN | ACK
    harness.dp.install(Flow(to_port_2(), (Output(3),)))
    stats = harness.dp.stats(to_port_2())
    assert stats is not None and (stats.packets, stats.tcp_flags) == (1, FIN | ACK)


@pytest.mark.parametrize("flags", [PSH | ACK, SYN | ACK])
def test_flags_are_ored_not_replaced(harness: Harness, flags: int) -> None:
    assert flags_after(harness, tcp(FIN), tcp(flags), tcp(ACK)) == FIN | flags | ACK
