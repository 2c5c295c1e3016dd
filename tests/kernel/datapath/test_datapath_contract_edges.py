"""The datapath contract at its edges: 802.1ad frames on real ports, and flows that
decrement the TTL running all or nothing.

Same harness and rules as test_datapath_contract.py: every backend, frame for frame.
"""

from __future__ import annotations

import pytest
from kdp_harness import Harness, at_port, seen
from test_datapath_contract import MAC2, ROUTER, arp_request, udp

from tessera.datapath.base import DecTtl, Flow, Match, Output, SetEthSrc

pytestmark = pytest.mark.root

ETH_TYPE_8021AD = 0x88A8


def s_tagged(frame: bytes, vid: int = 100) -> bytes:
    """`frame` behind an 802.1ad S-tag."""
    return frame[:12] + ETH_TYPE_8021AD.to_bytes(2, "big") + vid.to_bytes(2, "big") + frame[12:]


def test_an_8021ad_tag_is_an_ethertype_not_a_vlan(harness: Harness) -> None:
    """The receive path of a real port moves an S-tag to metadata just like a C-tag;
    the datapath must still key it as EtherType 0x88a8 with VLAN 0, as the agent parses
    the miss — else the flow installed for the miss is never hit."""
    frame = s_tagged(udp())
    assert harness.exchange(1, frame, expect=1) == seen(misses=[(1, frame)])
    match = Match.of(in_port=1, eth_type=ETH_TYPE_8021AD, mask_fields=["vlan_id"])
    harness.dp.install(Flow(match, (Output(2),)))
    assert harness.exchange(1, frame, expect=1) == seen([(at_port(2), frame)])
    stats = harness.dp.stats(match)
    assert stats is not None and (stats.packets, stats.bytes) == (1, len(frame))
    # A C-tag outside the S-tag is the VLAN; the S-tag is then the EtherType.
    both = udp(vlan=7)[:16] + s_tagged(udp())[12:]
    tagged = Match.of(in_port=1, vlan_id=7, eth_type=ETH_TYPE_8021AD)
    harness.dp.install(Flow(tagged, (Output(3),)))
    assert harness.exchange(1, both, expect=1) == seen([(at_port(3), both)])


def test_a_flow_decrementing_the_ttl_of_a_frame_without_one_sends_nothing(
    harness: Harness,
) -> None:
    """All or nothing, like an expiring TTL: the output before the decrement sends no
    copy either (the flow is broken; the frame is dropped)."""
    harness.dp.install(Flow(Match.of(in_port=1), (Output(3), DecTtl(1), Output(2))))
    assert harness.exchange(1, arp_request(), expect=0) == seen()
    stats = harness.dp.stats(Match.of(in_port=1))
    assert stats is not None and stats.packets == 1


def test_the_decrements_of_a_flow_add_up_against_the_ttl(harness: Harness) -> None:
    """Two decrements of 2 need a TTL above 4, whatever comes between them."""
    flow = Flow(
        Match.of(in_port=1, eth_dst=MAC2),
        (DecTtl(2), Output(3), SetEthSrc(ROUTER), DecTtl(2), Output(2)),
    )
    harness.dp.install(flow)
    for ttl in (2, 4):
        frame = udp(ttl=ttl)
        assert harness.exchange(1, frame, expect=1) == seen(misses=[(1, frame)]), ttl
    assert harness.exchange(1, udp(ttl=5), expect=2) == seen(
        [(at_port(3), udp(ttl=3)), (at_port(2), udp(src=ROUTER, ttl=1))]
    )
