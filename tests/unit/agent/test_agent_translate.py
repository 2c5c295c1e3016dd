"""Per-output rewrites become one cumulative action list that gives every output the
frame its own branch of the simulation produced."""

from __future__ import annotations

from support.frames import IP_FAR, udp
from tessera.agent.translate import PortLocation, translate
from tessera.datapath.base import (
    Action,
    DecTtl,
    Output,
    OutputTunnel,
    SetEthDst,
    SetEthSrc,
    SetIpDst,
    SetIpSrc,
    SetTpDst,
    SetTpSrc,
)
from tessera.datapath.frames import run_actions
from tessera.packet import ETH_TYPE_IPV4, Ethernet, IPv4, Udp
from tessera.packet.addr import ip_from_str as ip
from tessera.packet.checksum import internet_checksum, l4_checksum
from tessera.packet.match import Field, FlowMatch
from tessera.simulation.result import PortOutput as VOut
from tessera.simulation.tags import host_tag

PLACES = {
    "a": PortLocation(local=1),
    "b": PortLocation(local=2),
    "r": PortLocation(vni=7, remote_ip=0xC6120002, host_id="h2"),
}


def frame_with_ttl(ttl: int) -> bytes:
    return udp(1, 2, ip_dst=IP_FAR, ttl=ttl, payload=b"x")


def _locate(port_id: str) -> PortLocation | None:
    return PLACES.get(port_id)


def test_each_output_gets_its_own_branch_of_rewrites() -> None:
    frame = frame_with_ttl(64)
    m = FlowMatch.from_frame("in", frame)
    outputs = (
        VOut("b", eth_src=0xAA, eth_dst=0xBB, ttl_dec=1),  # routed
        VOut("a"),  # flooded as it arrived
        VOut("r", eth_dst=0xCC),
    )
    t = translate(outputs, m, _locate)
    result = run_actions(frame, t.actions)
    seen = {}
    for action, data in result.outputs:
        eth = Ethernet.parse(data)
        assert isinstance(eth.payload, IPv4)
        key = action.port if isinstance(action, Output) else "tunnel"
        seen[key] = (eth.src, eth.dst, eth.payload.ttl)
    original = Ethernet.parse(frame)
    assert seen[1] == (original.src, original.dst, 64)
    assert seen[2] == (0xAA, 0xBB, 63)
    assert seen["tunnel"] == (original.src, 0xCC, 64)
    assert t.extra_mask == 0  # ordered so that nothing had to be restored
    assert {"a", "b", "r", host_tag("h2")} <= t.tags


def test_a_mac_rewritten_before_a_decrement_is_restored_and_joins_the_mask() -> None:
    frame = frame_with_ttl(64)
    m = FlowMatch.from_frame("in", frame)
    t = translate((VOut("a", eth_src=0xAA), VOut("b", ttl_dec=1)), m, _locate)
    original = Ethernet.parse(frame)
    outs = {a.port: Ethernet.parse(d) for a, d in run_actions(frame, t.actions).outputs}  # type: ignore[union-attr]
    assert outs[1].src == 0xAA
    assert outs[2].src == original.src and outs[2].payload.ttl == 63  # type: ignore[union-attr]
    assert t.extra_mask == int(Field.ETH_SRC)


def test_ttl_decrements_come_last_and_never_repeat() -> None:
    frame = frame_with_ttl(10)
    m = FlowMatch.from_frame("in", frame)
    t = translate((VOut("a", ttl_dec=1), VOut("b", ttl_dec=1)), m, _locate)
    assert t.actions == [DecTtl(1), Output(1), Output(2)]


def test_an_unlocatable_port_gets_no_action_but_its_tag() -> None:
    frame = frame_with_ttl(10)
    t = translate((VOut("nowhere"), VOut("a")), FlowMatch.from_frame("in", frame), _locate)
    assert t.actions == [Output(1)] and "nowhere" in t.tags
    t = translate((VOut("r", eth_src=5),), FlowMatch.from_frame("in", frame), _locate)
    assert t.actions == [SetEthSrc(5), OutputTunnel(7, 0xC6120002)]
    assert SetEthDst not in {type(a) for a in t.actions}


def test_a_routed_flow_to_ports_bound_nowhere_still_hands_an_expiring_ttl_to_the_agent() -> None:
    # The routed flow's mask holds only "TTL above the hops": a TTL-1 packet meets the
    # same flow, and only its DecTtl sends it to the agent for the ICMP time exceeded.
    m = FlowMatch.from_frame("in", frame_with_ttl(64))
    t = translate((VOut("nowhere", eth_src=0xAA, ttl_dec=1),), m, _locate)
    assert t.actions == [DecTtl(1)]
    assert run_actions(frame_with_ttl(64), t.actions).dropped
    assert run_actions(frame_with_ttl(1), t.actions).to_userspace


def _nat_frame() -> bytes:
    packet = IPv4(ip("10.0.0.5"), ip("203.0.113.9"), 17, Udp(40000, 53, b"query"), ttl=64)
    return Ethernet(0x020000000002, 0x020000000001, ETH_TYPE_IPV4, packet).build()


def _seen(frame: bytes, actions: list[Action]) -> dict[object, tuple[int, int, int, int, int]]:
    """Per output: (src, dst, sport, dport, ttl), checksums verified on the way."""
    seen: dict[object, tuple[int, int, int, int, int]] = {}
    for action, data in run_actions(frame, actions).outputs:
        eth = Ethernet.parse(data)
        packet = eth.payload
        assert isinstance(packet, IPv4) and isinstance(packet.payload, Udp)
        raw_ip = data[14:]
        assert internet_checksum(raw_ip[:20]) == 0  # the header checksum was fixed
        assert l4_checksum(packet.src, packet.dst, 17, raw_ip[20:]) == 0
        key = action.port if isinstance(action, Output) else "tunnel"
        u = packet.payload
        seen[key] = (packet.src, packet.dst, u.src_port, u.dst_port, packet.ttl)
    return seen


def test_nat_rewrites_become_set_actions_and_the_checksums_follow() -> None:
    frame = _nat_frame()
    m = FlowMatch.from_frame("in", frame)
    out = VOut("r", ttl_dec=1, nw_src=ip("203.0.113.1"), tp_src=20001)
    t = translate((out,), m, _locate)
    assert t.actions == [
        DecTtl(1), SetIpSrc(ip("203.0.113.1")), SetTpSrc(20001), OutputTunnel(7, 0xC6120002),
    ]  # fmt: skip
    assert _seen(frame, t.actions)["tunnel"] == (ip("203.0.113.1"), ip("203.0.113.9"), 20001,
                                                 53, 63)  # fmt: skip
    back = VOut("a", nw_dst=ip("10.0.0.7"), tp_dst=8080)
    t = translate((back,), m, _locate)
    assert t.actions == [SetIpDst(ip("10.0.0.7")), SetTpDst(8080), Output(1)]
    assert t.extra_mask == 0


def test_a_nat_rewrite_is_undone_for_a_later_output_that_needs_the_arriving_values() -> None:
    frame = _nat_frame()
    m = FlowMatch.from_frame("in", frame)
    # The translated branch decrements the TTL: it must go first, so the untranslated
    # one (same TTL decrement, no NAT) comes after and needs the arriving values back.
    nat = VOut("a", ttl_dec=1, nw_src=ip("203.0.113.1"), nw_dst=ip("10.9.9.9"),
               tp_src=20001, tp_dst=99)  # fmt: skip
    plain = VOut("b", ttl_dec=1)
    t = translate((plain, nat), m, _locate)
    seen = _seen(frame, t.actions)
    assert seen[1] == (ip("203.0.113.1"), ip("10.9.9.9"), 20001, 99, 63)
    assert seen[2] == (ip("10.0.0.5"), ip("203.0.113.9"), 40000, 53, 63)
    # Ordered by decrement then rewrites: the plain branch goes first, nothing restored.
    assert t.extra_mask == 0
    t = translate((nat, VOut("b", ttl_dec=2)), m, _locate)
    seen = _seen(frame, t.actions)
    assert seen[2] == (ip("10.0.0.5"), ip("203.0.113.9"), 40000, 53, 62)
    assert t.extra_mask == int(Field.IP_SRC | Field.IP_DST | Field.TP_SRC | Field.TP_DST)
