"""The datapath contract for connection tracking (`tessera.datapath.conntrack`), on
every backend: the fake, the userspace one and the eBPF program on real veths.

What the agent relies on: a port's zone decides whether its packets are looked up; the
lookup's answer is the key's `ct_state` (so flows can be keyed on it, and a miss hands
it to the agent); `CtCommit` tracks the packet's connection as it arrived, so that its
replies find `CT_REPLY`; the agent can add and remove entries itself, and reads when
each was last used and which TCP flags went by. Expected values are written out here.
"""

from __future__ import annotations

import time

import pytest
from kdp_harness import REMOTE_IP, Harness, at_port, in_tunnel, port_vni, seen
from test_datapath_contract import IP1, IP2, MAC1, MAC2, arp_request

from tessera.datapath.base import (
    VNI_COMMIT,
    CtCommit,
    Flow,
    Match,
    Output,
    OutputTunnel,
    split_vni,
)
from tessera.datapath.conntrack import (
    CT_DEFAULT_ENTRIES,
    CT_F_FIN_ORIG,
    CT_F_FIN_REPLY,
    CT_F_UNREPLIED,
    CT_REPLY,
    CT_TRACKED,
)
from tessera.packet import (
    ETH_TYPE_IPV4,
    PROTO_ICMP,
    PROTO_TCP,
    Ethernet,
    Icmp,
    IPv4,
    Tcp,
)

pytestmark = pytest.mark.root

ZONE = 7
SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04
UNREPLIED, FIN_ORIG, FIN_REPLY = CT_F_UNREPLIED, CT_F_FIN_ORIG, CT_F_FIN_REPLY
NEW = CT_TRACKED
REPLY = CT_TRACKED | CT_REPLY


def tcp(sport: int = 4000, dport: int = 80, *, back: bool = False, flags: int = SYN) -> bytes:
    """A segment of the connection IP1:sport -> IP2:dport (`back`: its reply)."""
    if back:
        ip = IPv4(IP2, IP1, PROTO_TCP, Tcp(dport, sport, seq=1, ack=1, flags=flags))
        return Ethernet(MAC1, MAC2, ETH_TYPE_IPV4, ip).build()
    ip = IPv4(IP1, IP2, PROTO_TCP, Tcp(sport, dport, seq=1, ack=0, flags=flags))
    return Ethernet(MAC2, MAC1, ETH_TYPE_IPV4, ip).build()


def echo(ident: int, *, reply: bool = False) -> bytes:
    if reply:
        ip = IPv4(IP2, IP1, PROTO_ICMP, Icmp(0, 0, ident=ident, seq=1))
        return Ethernet(MAC1, MAC2, ETH_TYPE_IPV4, ip).build()
    ip = IPv4(IP1, IP2, PROTO_ICMP, Icmp(8, 0, ident=ident, seq=1))
    return Ethernet(MAC2, MAC1, ETH_TYPE_IPV4, ip).build()


def miss_state(harness: Harness, port: int, frame: bytes) -> int:
    """Send `frame` into `port` with no flow for it: the ct_state its miss carried."""
    got = harness.exchange(port, frame, expect=1)
    assert got == seen(misses=[(port, frame)])
    return got.ct_states[0]


def tracked(port: int, ct_state: int) -> Match:
    return Match.of(in_port=port, eth_type=ETH_TYPE_IPV4, ct_state=ct_state)


def test_a_port_without_a_zone_is_never_looked_up(harness: Harness) -> None:
    assert miss_state(harness, 1, tcp()) == 0
    harness.dp.ct_commit((ZONE, PROTO_TCP, IP1, IP2, 4000, 80))
    assert miss_state(harness, 2, tcp(back=True)) == 0  # the entry is there, no zone


def test_a_committed_connection_makes_its_replies_replies(harness: Harness) -> None:
    dp = harness.dp
    dp.set_port_zone(1, ZONE)
    dp.set_port_zone(2, ZONE)
    assert dp.port_zones() == {1: ZONE, 2: ZONE}
    assert miss_state(harness, 1, tcp()) == NEW
    assert miss_state(harness, 2, tcp(back=True)) == NEW  # nothing committed yet

    # One flow for every new connection from port 1: commit, then forward.
    dp.install(Flow(tracked(1, NEW), (CtCommit(ZONE), Output(2))))
    assert harness.exchange(1, tcp(), expect=1) == seen([(at_port(2), tcp())])
    assert harness.exchange(1, tcp(4001), expect=1) == seen([(at_port(2), tcp(4001))])
    entries = dp.ct_entries()
    assert set(entries) == {
        (ZONE, PROTO_TCP, IP1, IP2, 4000, 80),
        (ZONE, PROTO_TCP, IP1, IP2, 4001, 80),
    }
    assert entries[(ZONE, PROTO_TCP, IP1, IP2, 4000, 80)][1] == SYN | UNREPLIED

    # Their replies are replies; an answer to a connection never made is not.
    assert miss_state(harness, 2, tcp(back=True, flags=SYN | ACK)) == REPLY
    assert miss_state(harness, 2, tcp(4002, back=True, flags=SYN | ACK)) == NEW
    # The reply's flags joined the entry's, and the entry knows it was answered.
    assert dp.ct_entries()[(ZONE, PROTO_TCP, IP1, IP2, 4000, 80)][1] == SYN | ACK

    # A flow keyed on CT_REPLY carries replies only.
    dp.install(Flow(tracked(2, REPLY), (Output(1),)))
    reply = tcp(4001, back=True, flags=ACK)
    assert harness.exchange(2, reply, expect=1) == seen([(at_port(1), reply)])
    assert miss_state(harness, 2, tcp(4003, back=True)) == NEW


def test_entries_the_agent_writes_and_removes(harness: Harness) -> None:
    dp = harness.dp
    dp.set_port_zone(2, ZONE)
    before = time.monotonic()
    dp.ct_commit((ZONE, PROTO_TCP, IP1, IP2, 5000, 443), FIN)
    last_used, flags = dp.ct_entries()[(ZONE, PROTO_TCP, IP1, IP2, 5000, 443)]
    assert flags == FIN and before - 0.5 <= last_used <= time.monotonic() + 0.5
    assert miss_state(harness, 2, tcp(5000, 443, back=True)) == REPLY
    assert dp.ct_delete((ZONE, PROTO_TCP, IP1, IP2, 5000, 443))
    assert not dp.ct_delete((ZONE, PROTO_TCP, IP1, IP2, 5000, 443))
    assert miss_state(harness, 2, tcp(5000, 443, back=True)) == NEW
    # Another zone's entry is not this port's.
    dp.ct_commit((ZONE + 1, PROTO_TCP, IP1, IP2, 5000, 443))
    assert miss_state(harness, 2, tcp(5000, 443, back=True)) == NEW


def test_many_entries_go_at_once(harness: Harness) -> None:
    """`ct_delete_many` (the sweep's expiry): absent ones are skipped, the rest go,
    however many (the eBPF datapath: batches of 1,024, an absent key splitting one)."""
    dp = harness.dp
    conns = [(ZONE, PROTO_TCP, IP1, IP2, 10000 + i, 443) for i in range(2500)]
    for conn in conns:
        dp.ct_commit(conn)
    kept = (ZONE, PROTO_TCP, IP1, IP2, 9999, 443)
    dp.ct_commit(kept)
    absent = [(ZONE, PROTO_TCP, IP1, IP2, 7, 443), (ZONE + 1, PROTO_TCP, IP1, IP2, 10000, 443)]
    assert dp.ct_delete_many([*conns[:1500], *absent, *conns[1500:]]) == 2500
    assert set(dp.ct_entries()) == {kept}
    assert dp.ct_delete_many([]) == 0


def test_every_backend_holds_as_many_connections(harness: Harness) -> None:
    """One capacity (the eBPF map's max_entries, the Python tables' bound), read in
    steps or at once alike."""
    dp = harness.dp
    assert dp.ct_capacity() == CT_DEFAULT_ENTRIES
    dp.ct_commit((ZONE, PROTO_TCP, IP1, IP2, 5001, 443))
    steps = list(dp.ct_entries_in_steps())
    assert steps[-1] == dp.ct_entries() and all(p is None for p in steps[:-1])
    assert (ZONE, PROTO_TCP, IP1, IP2, 5001, 443) in dp.ct_entries()


def test_an_echo_is_tracked_by_its_identifier(harness: Harness) -> None:
    dp = harness.dp
    dp.set_port_zone(1, ZONE)
    dp.set_port_zone(2, ZONE)
    dp.install(Flow(tracked(1, NEW), (CtCommit(ZONE), Output(2))))
    assert harness.exchange(1, echo(0x1234), expect=1).count() == 1
    assert (ZONE, PROTO_ICMP, IP1, IP2, 0x1234, 0x1234) in dp.ct_entries()
    assert miss_state(harness, 2, echo(0x1234, reply=True)) == REPLY
    assert miss_state(harness, 2, echo(0x1235, reply=True)) == NEW


def test_what_has_no_connection_is_not_tracked(harness: Harness) -> None:
    dp = harness.dp
    dp.set_port_zone(1, ZONE)
    later = IPv4(IP1, IP2, 17, b"x" * 16, frag_offset=8)
    frames = [
        Ethernet(MAC2, MAC1, ETH_TYPE_IPV4, later).build(),  # a later fragment
        Ethernet(MAC2, MAC1, ETH_TYPE_IPV4, IPv4(IP1, IP2, PROTO_ICMP, Icmp(3, 3))).build(),
    ]
    for frame in frames:
        assert miss_state(harness, 1, frame) == 0


def test_a_removed_port_loses_its_zone(harness: Harness) -> None:
    harness.dp.set_port_zone(3, ZONE)
    assert harness.dp.port_zones() == {3: ZONE}
    harness.remove_port(3)
    try:
        assert harness.dp.port_zones() == {}
    finally:
        harness.add_port(3)


# -- across hosts: the tunnel asks the far end to commit --------------------------------


def test_a_committing_tunnel_sets_the_vni_s_commit_bit(harness: Harness) -> None:
    """What the far host reads: the port's tunnel key, and the bit (`VNI_COMMIT`)."""
    dp = harness.dp
    dp.set_port_zone(1, ZONE)
    dp.install(Flow(tracked(1, NEW), (CtCommit(ZONE), OutputTunnel(5001, REMOTE_IP, commit=True))))
    got = harness.exchange(1, tcp(), expect=1)
    assert got == seen([(in_tunnel(5001 | VNI_COMMIT), tcp())])
    assert split_vni(5001 | VNI_COMMIT) == (5001, True)
    assert (ZONE, PROTO_TCP, IP1, IP2, 4000, 80) in dp.ct_entries()  # here too


def test_a_tunnelled_packet_that_asks_is_committed_in_its_port_s_zone(harness: Harness) -> None:
    """The far end of the above: delivered unlooked-up as always, its connection (as it
    arrived) committed in the zone of the port it is delivered to, so that the port's
    replies are replies without the agent; every such packet keeps the entry fresh and
    adds its TCP flags."""
    dp = harness.dp
    dp.set_port_zone(2, ZONE)
    harness.send_tunnel(port_vni(2) | VNI_COMMIT, tcp())
    assert harness.collect(1) == seen([(at_port(2), tcp())])
    entries = dp.ct_entries()
    assert set(entries) == {(ZONE, PROTO_TCP, IP1, IP2, 4000, 80)}
    assert entries[(ZONE, PROTO_TCP, IP1, IP2, 4000, 80)][1] == SYN | UNREPLIED
    assert miss_state(harness, 2, tcp(back=True, flags=SYN | ACK)) == REPLY
    harness.send_tunnel(port_vni(2) | VNI_COMMIT, tcp(flags=ACK | FIN))
    assert harness.collect(1).count() == 1
    assert dp.ct_entries()[(ZONE, PROTO_TCP, IP1, IP2, 4000, 80)][1] == (SYN | ACK | FIN | FIN_ORIG)
    # Without the bit, or to a port without a zone: delivered, nothing committed.
    harness.send_tunnel(port_vni(2), tcp(4001))
    dp.set_port_zone(3, 0)
    harness.send_tunnel(port_vni(3) | VNI_COMMIT, tcp(4002))
    assert harness.collect(2).count() == 2
    assert set(dp.ct_entries()) == {(ZONE, PROTO_TCP, IP1, IP2, 4000, 80)}
    # Nothing a packet cannot carry: an ARP frame is delivered, and tracks nothing.
    harness.send_tunnel(port_vni(2) | VNI_COMMIT, arp_request())
    assert harness.collect(1).count() == 1
    assert len(dp.ct_entries()) == 1


def test_an_entry_knows_which_side_answered_and_closed(harness: Harness) -> None:
    """Above the TCP flags byte, what only the datapath can tell: whether a reply found
    the entry yet, and which side sent a FIN (the sweep expires unanswered and closed
    connections sooner than established ones)."""
    dp = harness.dp
    dp.set_port_zone(1, ZONE)
    dp.set_port_zone(2, ZONE)
    dp.install(Flow(tracked(1, NEW), (CtCommit(ZONE), Output(2))))
    dp.install(Flow(tracked(2, REPLY), (Output(1),)))
    conn = (ZONE, PROTO_TCP, IP1, IP2, 4000, 80)
    harness.exchange(1, tcp(), expect=1)
    assert dp.ct_entries()[conn][1] == SYN | UNREPLIED  # nobody answered yet
    harness.exchange(1, tcp(flags=SYN), expect=1)  # a retransmission: still not
    assert dp.ct_entries()[conn][1] == SYN | UNREPLIED
    harness.exchange(2, tcp(back=True, flags=SYN | ACK), expect=1)
    assert dp.ct_entries()[conn][1] == SYN | ACK
    harness.exchange(2, tcp(back=True, flags=FIN | ACK), expect=1)
    assert dp.ct_entries()[conn][1] == SYN | ACK | FIN | FIN_REPLY
    harness.exchange(1, tcp(flags=FIN | ACK), expect=1)
    assert dp.ct_entries()[conn][1] == SYN | ACK | FIN | FIN_REPLY | FIN_ORIG
    # An echo answered: replied, no TCP flags.
    echo_conn = (ZONE, PROTO_ICMP, IP1, IP2, 77, 77)
    harness.exchange(1, echo(77), expect=1)
    assert dp.ct_entries()[echo_conn][1] == UNREPLIED
    harness.exchange(2, echo(77, reply=True), expect=1)
    assert dp.ct_entries()[echo_conn][1] == 0
    # What the agent writes itself starts answered (it has its own record).
    dp.ct_commit((ZONE, PROTO_TCP, IP1, IP2, 6000, 80))
    assert dp.ct_entries()[(ZONE, PROTO_TCP, IP1, IP2, 6000, 80)][1] == 0


def test_an_rst_from_the_side_that_started_ends_the_connection(harness: Harness) -> None:
    """An RST committed (sent by the connection's originator) removes its entry at once
    and never makes one; the other side's RST is only noted (it comes from outside the
    firewall, unchecked: the sweep removes the entry seconds later)."""
    dp = harness.dp
    dp.set_port_zone(1, ZONE)
    dp.set_port_zone(2, ZONE)
    dp.install(Flow(tracked(1, NEW), (CtCommit(ZONE), Output(2))))
    dp.install(Flow(tracked(2, REPLY), (Output(1),)))
    harness.exchange(1, tcp(4000), expect=1)
    harness.exchange(1, tcp(4001), expect=1)
    harness.exchange(2, tcp(4000, back=True, flags=SYN | ACK), expect=1)
    harness.exchange(2, tcp(4001, back=True, flags=SYN | ACK), expect=1)
    # The originator resets 4000: forwarded, and its entry is gone.
    assert harness.exchange(1, tcp(4000, flags=RST | ACK), expect=1) == seen(
        [(at_port(2), tcp(4000, flags=RST | ACK))]
    )
    assert set(dp.ct_entries()) == {(ZONE, PROTO_TCP, IP1, IP2, 4001, 80)}
    assert miss_state(harness, 2, tcp(4000, back=True, flags=ACK)) == NEW
    # The answering side resets 4001: still a reply, noted, kept.
    harness.exchange(2, tcp(4001, back=True, flags=RST), expect=1)
    assert dp.ct_entries()[(ZONE, PROTO_TCP, IP1, IP2, 4001, 80)][1] == SYN | ACK | RST
    # An RST that starts nothing tracks nothing.
    harness.exchange(1, tcp(4002, flags=RST), expect=1)
    assert (ZONE, PROTO_TCP, IP1, IP2, 4002, 80) not in dp.ct_entries()
    # Across hosts likewise: a tunnelled RST asking to be committed removes the entry.
    dp.set_port_zone(3, ZONE)
    harness.send_tunnel(port_vni(3) | VNI_COMMIT, tcp(4100))
    assert harness.collect(1).count() == 1
    assert (ZONE, PROTO_TCP, IP1, IP2, 4100, 80) in dp.ct_entries()
    harness.send_tunnel(port_vni(3) | VNI_COMMIT, tcp(4100, flags=RST))
    assert harness.collect(1).count() == 1
    assert (ZONE, PROTO_TCP, IP1, IP2, 4100, 80) not in dp.ct_entries()


def test_answered_and_unanswered_connections_are_one_table_to_the_agent(
    harness: Harness,
) -> None:
    """Connections nobody answered live apart (a burst of them evicts only its kind),
    but read, looked up and deleted as one table: a reply moves a connection across,
    and `ct_delete_many` finds each wherever it is, also after it moved since the
    last read."""
    dp = harness.dp
    dp.set_port_zone(1, ZONE)
    dp.set_port_zone(2, ZONE)
    dp.install(Flow(tracked(1, NEW), (CtCommit(ZONE), Output(2))))
    dp.install(Flow(tracked(2, REPLY), (Output(1),)))
    for sport in range(4000, 4010):
        harness.exchange(1, tcp(sport), expect=1)
    for sport in range(4000, 4005):
        harness.exchange(2, tcp(sport, back=True, flags=SYN | ACK), expect=1)
    agents = [(ZONE, PROTO_TCP, IP1, IP2, 9000 + i, 443) for i in range(5)]
    for conn in agents:
        dp.ct_commit(conn)
    entries = dp.ct_entries()
    assert len(entries) == 15
    assert {c[4] for c, (_, f) in entries.items() if f & UNREPLIED} == set(range(4005, 4010))
    # 4005 and 4006 are answered after the read: deleted all the same.
    harness.exchange(2, tcp(4005, back=True, flags=SYN | ACK), expect=1)
    harness.exchange(2, tcp(4006, back=True, flags=SYN | ACK), expect=1)
    victims = [c for c in entries if c[4] in (4000, 4005, 4006, 4009, 9000)]
    assert dp.ct_delete_many(victims) == 5
    assert len(dp.ct_entries()) == 10 and not set(victims) & set(dp.ct_entries())
    assert dp.ct_delete((ZONE, PROTO_TCP, IP1, IP2, 4008, 80))  # unanswered, one by one
    assert dp.ct_delete((ZONE, PROTO_TCP, IP1, IP2, 4001, 80))  # answered
    assert len(dp.ct_entries()) == 8
