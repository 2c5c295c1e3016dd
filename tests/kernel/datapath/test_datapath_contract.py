"""The datapath contract: one behavioural suite, run against every backend.

The agent drives the fake in its unit tests, the AF_PACKET userspace datapath on
machines without eBPF and the eBPF datapath in production, all through `Datapath`
(datapath/base.py). Whatever a test here checks, all three must do identically, frame
for frame: a frame sent into a port must leave where the installed flow says, rewritten
as it says, or reach the agent as a miss, unchanged. Where a backend disagrees it is
a bug in that backend (or an `xfail(strict=True)` naming it, until it is fixed).

Frames are built with tessera.packet, and expected results independently of the code
under test (a rewritten frame is built rewritten, never computed by `run_actions`).
"""

from __future__ import annotations

import time

import pytest
from kdp_harness import (
    NPORTS,
    REMOTE_IP,
    Harness,
    at_port,
    in_tunnel,
    port_vni,
    seen,
)

from tessera.datapath.base import (
    Action,
    DatapathError,
    DecTtl,
    Drop,
    Flow,
    FlowStats,
    Match,
    Miss,
    Output,
    OutputTunnel,
    SetEthDst,
    SetEthSrc,
    ToUserspace,
)
from tessera.packet import (
    ETH_TYPE_ARP,
    ETH_TYPE_IPV4,
    PROTO_UDP,
    Arp,
    Ethernet,
    IPv4,
    Udp,
    ip_from_str,
    mac_from_str,
)

pytestmark = pytest.mark.root

MAC1 = mac_from_str("02:00:00:00:0c:01")
MAC2 = mac_from_str("02:00:00:00:0c:02")
MAC3 = mac_from_str("02:00:00:00:0c:03")
ROUTER = mac_from_str("02:aa:00:00:0c:fe")
BROADCAST = 0xFFFF_FFFF_FFFF
IP1, IP2, IP9 = ip_from_str("10.12.0.1"), ip_from_str("10.12.0.2"), ip_from_str("10.12.9.9")


def udp(
    *,
    src: int = MAC1,
    dst: int = MAC2,
    ip_src: int = IP1,
    ip_dst: int = IP2,
    sport: int = 4000,
    dport: int = 53,
    ttl: int = 64,
    vlan: int | None = None,
    payload: bytes = b"contract",
) -> bytes:
    packet = IPv4(ip_src, ip_dst, PROTO_UDP, Udp(sport, dport, payload), ttl=ttl)
    return Ethernet(dst, src, ETH_TYPE_IPV4, packet, vlan_id=vlan).build()


def arp_request(*, src: int = MAC1, sender: int = IP1, target: int = IP2) -> bytes:
    return Ethernet(BROADCAST, src, ETH_TYPE_ARP, Arp(1, src, sender, 0, target)).build()


def xfail_for(harness: Harness, kind: str, request: pytest.FixtureRequest, reason: str) -> None:
    """A disagreement of backend `kind` that is a known bug: strict, so the fix shows."""
    if harness.kind == kind:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{kind}: {reason}"))


def to_port_2() -> Match:
    return Match.of(in_port=1, eth_dst=MAC2)


# -- ports -----------------------------------------------------------------------------


def test_ports_are_listed_with_their_tunnel_keys(harness: Harness) -> None:
    assert {n: (b.ifname, b.tunnel_key) for n, b in harness.dp.ports().items()} == {
        n: (f"t{n}", port_vni(n)) for n in range(1, NPORTS + 1)
    }


def test_a_removed_port_neither_receives_nor_sends(harness: Harness) -> None:
    """Flows that output to the port go with it (their packets reach the agent again);
    a flow that merely enters there stays, unreachable."""
    harness.dp.install(Flow(to_port_2(), (Output(2),)))
    flood = (Output(3), *(OutputTunnel(7000 + i, REMOTE_IP) for i in range(12)), Output(2))
    harness.dp.install(Flow(Match.of(in_port=1, eth_dst=BROADCAST), flood))
    entering = Flow(Match.of(in_port=2), (Output(3),))
    harness.dp.install(entering)
    harness.remove_port(2)
    try:
        assert 2 not in harness.dp.ports()
        assert {m: i.flow for m, i in harness.dp.dump().items()} == {entering.match: entering}
        assert harness.exchange(2, udp(src=MAC2), expect=0) == seen()
        assert harness.exchange(1, udp(), expect=1) == seen(misses=[(1, udp())])
        with pytest.raises(DatapathError):
            harness.dp.install(Flow(to_port_2(), (Output(2),)))
    finally:
        harness.add_port(2)


# -- tunnels in ------------------------------------------------------------------------


def test_a_tunnelled_frame_is_delivered_to_the_port_of_its_vni_unlooked_up(
    harness: Harness,
) -> None:
    """The sending host simulated the whole path: the VNI names the port, no flow."""
    frame = udp(src=ROUTER, dst=MAC2)
    harness.send_tunnel(port_vni(2), frame)
    assert harness.collect(1) == seen([(at_port(2), frame)])
    harness.send_tunnel(port_vni(NPORTS + 1), frame)  # no such port here
    assert harness.collect(0) == seen()


# -- misses, install, lookup by frame --------------------------------------------------


def test_without_flows_every_frame_reaches_the_agent_unchanged(harness: Harness) -> None:
    for port, frame in ((1, udp()), (2, arp_request(src=MAC2)), (3, udp(vlan=42))):
        assert harness.exchange(port, frame, expect=1) == seen(misses=[(port, frame)])


def test_an_installed_flow_forwards_the_frames_it_matches(harness: Harness) -> None:
    harness.dp.install(Flow(to_port_2(), (Output(2),)))
    frame = udp()
    assert harness.exchange(1, frame, expect=1) == seen([(at_port(2), frame)])
    # The same frame from another port, or to another MAC, is not this flow's.
    assert harness.exchange(3, frame, expect=1) == seen(misses=[(3, frame)])
    other = udp(dst=MAC3)
    assert harness.exchange(1, other, expect=1) == seen(misses=[(1, other)])


def test_a_megaflow_serves_frames_that_differ_only_outside_its_mask(harness: Harness) -> None:
    match = Match.of(in_port=1, eth_type=ETH_TYPE_IPV4, ip_dst=IP2)
    harness.dp.install(Flow(match, (Output(3),)))
    same = [
        udp(),
        udp(src=MAC3, dst=ROUTER),
        udp(ip_src=IP9, sport=1, dport=2, ttl=7),
        udp(vlan=5, payload=b"other bytes"),
    ]
    for frame in same:
        assert harness.exchange(1, frame, expect=1) == seen([(at_port(3), frame)]), frame.hex()
    for port, frame in ((1, udp(ip_dst=IP9)), (2, udp()), (1, arp_request(target=IP2))):
        assert harness.exchange(port, frame, expect=1) == seen(misses=[(port, frame)])


def test_a_tenant_tag_is_matched_and_kept(harness: Harness) -> None:
    harness.dp.install(Flow(Match.of(in_port=1, vlan_id=42, eth_dst=MAC2), (Output(2),)))
    tagged = udp(vlan=42)
    assert harness.exchange(1, tagged, expect=1) == seen([(at_port(2), tagged)])
    for frame in (udp(), udp(vlan=43)):
        assert harness.exchange(1, frame, expect=1) == seen(misses=[(1, frame)])


# -- actions ---------------------------------------------------------------------------


def test_rewrites_and_ttl_decrement(harness: Harness) -> None:
    harness.dp.install(
        Flow(to_port_2(), (SetEthSrc(ROUTER), SetEthDst(MAC3), DecTtl(1), Output(2)))
    )
    out = udp(src=ROUTER, dst=MAC3, ttl=63)  # built rewritten, checksum computed afresh
    assert harness.exchange(1, udp(ttl=64), expect=1) == seen([(at_port(2), out)])
    harness.dp.install(Flow(to_port_2(), (DecTtl(3), Output(2))))
    assert harness.exchange(1, udp(ttl=4), expect=1) == seen([(at_port(2), udp(ttl=1))])


@pytest.mark.parametrize(("ttl", "n"), [(1, 1), (3, 3), (2, 5), (0, 1)])
def test_a_ttl_that_would_reach_zero_goes_to_the_agent_unchanged(
    harness: Harness, ttl: int, n: int
) -> None:
    harness.dp.install(Flow(to_port_2(), (DecTtl(n), SetEthSrc(ROUTER), Output(2))))
    frame = udp(ttl=ttl)
    assert harness.exchange(1, frame, expect=1) == seen(misses=[(1, frame)])


def test_a_ttl_expiring_after_a_rewrite_reaches_the_agent_as_it_arrived(
    harness: Harness,
) -> None:
    """The agent simulates the miss again (to answer ICMP time exceeded): it must get the
    packet as it arrived, not half rewritten by the flow. `translate` puts a rewrite
    before a decrement when one output of a flood needs a MAC and a later one a TTL.
    And nothing leaves before: an output ahead of the expiring decrement sends no copy
    (the agent's simulation of the miss answers for every output)."""
    harness.dp.install(Flow(to_port_2(), (SetEthSrc(ROUTER), DecTtl(1), Output(2))))
    frame = udp(ttl=1)
    assert harness.exchange(1, frame, expect=1) == seen(misses=[(1, frame)])
    harness.dp.install(Flow(to_port_2(), (Output(3), DecTtl(1), Output(2), DecTtl(2),
                                          SetEthDst(MAC3), Output(2))))  # fmt: skip
    for ttl in (1, 3):
        frame = udp(ttl=ttl)
        assert harness.exchange(1, frame, expect=1) == seen(misses=[(1, frame)]), ttl
    assert harness.exchange(1, udp(ttl=4), expect=3) == seen(
        [(at_port(3), udp(ttl=4)), (at_port(2), udp(ttl=3)), (at_port(2), udp(dst=MAC3, ttl=1))]
    )


def test_each_output_takes_the_frame_as_rewritten_so_far(harness: Harness) -> None:
    harness.dp.install(
        Flow(
            to_port_2(),
            (Output(2), SetEthSrc(ROUTER), DecTtl(1), Output(3), SetEthDst(MAC1), Output(2)),
        )
    )
    assert harness.exchange(1, udp(), expect=3) == seen(
        [
            (at_port(2), udp()),
            (at_port(3), udp(src=ROUTER, ttl=63)),
            (at_port(2), udp(src=ROUTER, dst=MAC1, ttl=63)),
        ]
    )


def test_drop_and_an_empty_action_list_drop(harness: Harness) -> None:
    harness.dp.install(Flow(to_port_2(), (Drop(),)))
    harness.dp.install(Flow(Match.of(in_port=1, eth_dst=MAC3), ()))
    harness.dp.install(Flow(Match.of(in_port=2, eth_dst=MAC1), (SetEthSrc(ROUTER), Drop(),
                                                                  Output(3))))  # fmt: skip
    assert harness.exchange(1, udp(), expect=0) == seen()
    assert harness.exchange(1, udp(dst=MAC3), expect=0) == seen()
    assert harness.exchange(2, udp(src=MAC2, dst=MAC1), expect=0) == seen()
    for match in (to_port_2(), Match.of(in_port=1, eth_dst=MAC3)):
        stats = harness.dp.stats(match)
        assert stats is not None and stats.packets == 1, "a dropped packet still hit"


def test_to_userspace_hands_every_packet_to_the_agent(harness: Harness) -> None:
    harness.dp.install(Flow(to_port_2(), (ToUserspace(),)))
    frame = udp()
    for _ in range(2):
        assert harness.exchange(1, frame, expect=1) == seen(misses=[(1, frame)])
    stats = harness.dp.stats(to_port_2())
    assert stats is not None and stats.packets == 2
    # Outputs before it still leave; what reaches the agent is the packet as it arrived.
    harness.dp.install(Flow(to_port_2(), (Output(3), ToUserspace())))
    assert harness.exchange(1, frame, expect=2) == seen([(at_port(3), frame)], [(1, frame)])


def test_tunnel_output(harness: Harness) -> None:
    harness.dp.install(Flow(to_port_2(), (SetEthSrc(ROUTER), OutputTunnel(5001, REMOTE_IP))))
    got = harness.exchange(1, udp(), expect=1)
    assert got == seen([(in_tunnel(5001), udp(src=ROUTER))])


def test_a_flood_wider_than_the_kernels_action_list(harness: Harness) -> None:
    """More outputs than a kernel flow holds inline (12): the eBPF backend moves them to a
    flood set; every backend must still deliver every copy, rewritten as before it."""
    tunnels = tuple(OutputTunnel(7000 + i, REMOTE_IP) for i in range(13))
    actions: tuple[Action, ...] = (DecTtl(1), Output(2), SetEthSrc(ROUTER), Output(3), *tunnels)
    harness.dp.install(Flow(Match.of(in_port=1, eth_dst=BROADCAST), actions))
    frame = udp(dst=BROADCAST)
    rewritten = udp(dst=BROADCAST, src=ROUTER, ttl=63)
    want = [(at_port(2), udp(dst=BROADCAST, ttl=63)), (at_port(3), rewritten)]
    want += [(in_tunnel(7000 + i), rewritten) for i in range(13)]
    assert harness.exchange(1, frame, expect=len(want)) == seen(want)
    assert harness.dp.dump()[Match.of(in_port=1, eth_dst=BROADCAST)].flow.actions == actions


def test_a_ttl_decrement_of_a_frame_without_ipv4_drops_it(harness: Harness) -> None:
    """Only a router's flows decrement, and they match IPv4: a frame without a TTL
    hitting one is a broken flow, not a packet for the agent to simulate (it would
    install the same flow again and miss forever)."""
    harness.dp.install(Flow(Match.of(in_port=1), (DecTtl(1), Output(2))))
    assert harness.exchange(1, arp_request(), expect=0) == seen()


def test_a_flow_to_a_port_that_is_not_attached_is_refused(harness: Harness) -> None:
    with pytest.raises(DatapathError):
        harness.dp.install(Flow(to_port_2(), (Output(NPORTS + 1),)))
    assert harness.dp.dump() == {}


# -- counters, replace, delete, dump ---------------------------------------------------


def test_counters_count_packets_bytes_and_the_last_hit(harness: Harness) -> None:
    harness.dp.install(Flow(to_port_2(), (Output(2),)))
    assert harness.dp.stats(to_port_2()) == FlowStats(0, 0, None)
    assert harness.dp.stats(Match.of(in_port=1, eth_dst=MAC3)) is None
    frames = [udp(), udp(payload=b"a longer payload than the first"), udp()]
    before = time.monotonic()
    for frame in frames:
        assert harness.exchange(1, frame, expect=1) == seen([(at_port(2), frame)])
    after = time.monotonic()
    stats = harness.dp.stats(to_port_2())
    assert stats is not None
    assert (stats.packets, stats.bytes) == (3, sum(len(f) for f in frames))
    assert stats.last_used is not None and before <= stats.last_used <= after


def test_counters_of_tagged_frames_count_the_tag(harness: Harness) -> None:
    """Bytes as the frame was on the wire, as for untagged frames (and as reported in
    the miss and on output, where the tag is in the frame)."""
    harness.dp.install(Flow(Match.of(in_port=1, vlan_id=42, eth_dst=MAC2), (Output(2),)))
    frame = udp(vlan=42)
    assert harness.exchange(1, frame, expect=1) == seen([(at_port(2), frame)])
    stats = harness.dp.stats(Match.of(in_port=1, vlan_id=42, eth_dst=MAC2))
    assert stats is not None and (stats.packets, stats.bytes) == (1, len(frame))


def test_replacing_a_flows_actions_keeps_its_counters(harness: Harness) -> None:
    """base.Datapath.install: a replace is the same traffic, and the agent's idle expiry
    (and connection liveness) read the counters."""
    harness.dp.install(Flow(to_port_2(), (Output(2),)))
    harness.exchange(1, udp(), expect=1)
    first = harness.dp.stats(to_port_2())
    assert first is not None and first.last_used is not None
    harness.dp.install(Flow(to_port_2(), (Output(3),)))
    kept = harness.dp.stats(to_port_2())
    assert kept == first
    assert harness.exchange(1, udp(), expect=1) == seen([(at_port(3), udp())])
    assert len(harness.dp.dump()) == 1
    stats = harness.dp.stats(to_port_2())
    assert stats is not None and (stats.packets, stats.bytes) == (2, 2 * len(udp()))


def test_delete_removes_exactly_one_flow(harness: Harness) -> None:
    other = Match.of(in_port=1, eth_dst=MAC3)
    harness.dp.install(Flow(to_port_2(), (Output(2),)))
    harness.dp.install(Flow(other, (Output(3),)))
    assert harness.dp.delete(to_port_2())
    assert not harness.dp.delete(to_port_2())
    assert not harness.dp.delete(Match.of(in_port=1, eth_dst=MAC2, eth_type=ETH_TYPE_IPV4))
    assert harness.dp.stats(to_port_2()) is None
    assert harness.exchange(1, udp(), expect=1) == seen(misses=[(1, udp())])
    assert harness.exchange(1, udp(dst=MAC3), expect=1) == seen([(at_port(3), udp(dst=MAC3))])


def test_dump_returns_every_flow_with_its_actions_and_counters(harness: Harness) -> None:
    flows = [
        Flow(to_port_2(), (SetEthSrc(ROUTER), SetEthDst(MAC3), DecTtl(2), Output(2))),
        Flow(
            Match.of(in_port=2, eth_type=ETH_TYPE_IPV4, ip_dst=IP9, tp_dst=53),
            (OutputTunnel(9, REMOTE_IP),),
        ),
        Flow(Match.of(in_port=3), (Drop(),)),
        Flow(Match.of(in_port=3, eth_type=ETH_TYPE_ARP, mask_fields=["vlan_id"]), (ToUserspace(),)),
    ]
    for flow in flows:
        harness.dp.install(flow)
    harness.exchange(1, udp(), expect=1)
    dumped = harness.dp.dump()
    assert {m: i.flow for m, i in dumped.items()} == {f.match: f for f in flows}
    assert dumped[to_port_2()].stats.packets == 1
    assert dumped[Match.of(in_port=3)].stats == FlowStats(0, 0, None)


# -- the miss path: reinject and execute -----------------------------------------------


def test_a_reinjected_miss_takes_the_flow_installed_since(harness: Harness) -> None:
    frame = udp()
    harness.send(1, frame)
    misses = _misses(harness, 1)
    assert [(m.port, m.frame) for m in misses] == [(1, frame)]
    harness.dp.install(Flow(to_port_2(), (SetEthDst(MAC3), Output(2))))
    harness.dp.reinject(misses[0])
    assert harness.collect(1) == seen([(at_port(2), udp(dst=MAC3))])


def test_a_reinjected_packet_never_misses_twice(harness: Harness) -> None:
    harness.send(1, udp())
    (miss,) = _misses(harness, 1)
    harness.dp.reinject(miss)  # still no flow: dropped, not queued again
    assert harness.collect(0) == seen()
    harness.dp.install(Flow(to_port_2(), (ToUserspace(),)))
    harness.dp.reinject(miss)
    assert harness.collect(0) == seen()


def test_execute_sends_without_installing(harness: Harness) -> None:
    frame = arp_request()
    harness.dp.execute(frame, [SetEthDst(MAC2), Output(2), OutputTunnel(77, REMOTE_IP)])
    rewritten = Ethernet(MAC2, MAC1, ETH_TYPE_ARP, Arp(1, MAC1, IP1, 0, IP2)).build()
    assert harness.collect(2) == seen([(at_port(2), rewritten), (in_tunnel(77), rewritten)])
    assert harness.dp.dump() == {}


def _misses(harness: Harness, n: int) -> list[Miss]:
    """The next `n` misses with their backend metadata (what reinject needs)."""
    got: list[Miss] = []
    deadline = time.monotonic() + 3
    while len(got) < n and time.monotonic() < deadline:
        got += list(harness.dp.recv_misses(0.05))
    return got
