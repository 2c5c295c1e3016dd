"""The load balancer in a router's path: a VIP connection's first packet chooses a member
(weighted, injectable), later packets and replies follow its binding, sticky source IP,
disabled and INACTIVE members, pools and VIPs, the mask, the trace."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from sim_topo import Topo, fragment, ip, mac, tcp, udp, uid

from tessera.cli.trace import render_text
from tessera.model import LoadBalancer, Pool, PoolMember, Port, Vip
from tessera.packet import PROTO_TCP, Field, FlowMatch, mac_from_str
from tessera.simulation import (
    ExpiryClass,
    NatBinding,
    NatEntry,
    NatKey,
    Verdict,
    nat_tag,
    simulate,
)
from tessera.simulation.loadbalancer import RandomPicker
from tessera.simulation.result import SimulationResult

GW_IN = mac_from_str("02:aa:00:00:00:01")
GW_OUT = mac_from_str("02:aa:00:00:00:02")
CLIENT = mac(9)  # 203.0.113.9 behind the uplink
VIP = "203.0.113.100"


class Fixed:
    """Always the same index; remembers the weights it was offered."""

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self.asked: list[list[int]] = []

    def pick(self, weights: Sequence[int]) -> int:
        self.asked.append(list(weights))
        return self.index


class Lb:
    """Router r: uplink 203.0.113.1/24 (the client 203.0.113.9 behind it), members
    10.0.0.5/.6/.7 (MACs 5, 6, 7) on a bridge behind 10.0.0.1/24; a load balancer with
    VIP 203.0.113.100:80 -> pool of the three members on port 8080."""

    def __init__(self, sticky: bool = False, weights: tuple[int, ...] = (1, 1, 1)) -> None:
        t = self.t = Topo()
        br = t.bridge()
        self.vms: list[Port] = [t.bridge_port(br) for _ in range(3)]
        link = t.bridge_port(br)
        self.r = t.router()
        rp = t.router_port(self.r, "10.0.0.1/24", "02:aa:00:00:00:01")
        self.uplink: Port = t.router_port(self.r, "203.0.113.1/24", "02:aa:00:00:00:02")
        t.link(link, rp)
        t.route(self.r, "10.0.0.0/24", t.get(rp))
        t.route(self.r, "203.0.113.0/24", self.uplink)
        t.learn_arp(self.r, "203.0.113.9", CLIENT)
        for i, vm in enumerate(self.vms):
            t.learn_mac(br, mac(5 + i), vm)
            t.learn_arp(self.r, f"10.0.0.{5 + i}", mac(5 + i))
        self.lb: LoadBalancer = t.add(LoadBalancer(id=_uid(t), router_id=self.r.id))
        self.pool: Pool = t.add(Pool(id=_uid(t), load_balancer_id=self.lb.id))
        self.members: list[PoolMember] = [
            t.add(
                PoolMember(
                    id=_uid(t),
                    pool_id=self.pool.id,
                    address=f"10.0.0.{5 + i}",
                    protocol_port=8080,
                    weight=w,
                )
            )
            for i, w in enumerate(weights)
        ]
        persistence: Literal["SOURCE_IP"] | None = "SOURCE_IP" if sticky else None
        self.vip: Vip = t.add(
            Vip(
                id=_uid(t),
                load_balancer_id=self.lb.id,
                pool_id=self.pool.id,
                address=VIP,
                protocol_port=80,
                session_persistence=persistence,
            )
        )

    def connect(
        self, sport: int, picker: Any = None, *, src: str = "203.0.113.9"
    ) -> SimulationResult:
        frame = tcp(CLIENT, GW_OUT, src, VIP, sport, 80)
        kw = {} if picker is None else {"picker": picker}
        return self.t.send(self.uplink, frame, **kw)

    def member_of(self, res: SimulationResult) -> int:
        """Which member (0, 1, 2) the connection went to, checking the whole output."""
        (out,) = res.outputs
        n = self.vms.index(next(vm for vm in self.vms if vm.id == out.port_id))
        assert (out.nw_dst, out.tp_dst) == (ip(f"10.0.0.{5 + n}"), 8080)
        assert out.nw_src is None and out.tp_src is None  # the client's address is kept
        assert out.eth_dst == mac(5 + n)
        return n

    def reply(self, n: int, sport: int) -> SimulationResult:
        frame = tcp(mac(5 + n), GW_IN, f"10.0.0.{5 + n}", "203.0.113.9", 8080, sport)
        return self.t.send(self.vms[n], frame)


def _uid(t: Topo) -> str:
    return uid()


def test_a_new_connection_is_dnated_to_the_picked_member_and_its_reply_back() -> None:
    lb = Lb(weights=(1, 2, 3))
    picker = Fixed(1)
    res = lb.connect(40000, picker)
    assert res.verdict is Verdict.FORWARD and res.expiry is ExpiryClass.STATEFUL
    assert picker.asked == [[1, 2, 3]]
    assert lb.member_of(res) == 1
    fwd = NatKey("fwd_dnat", PROTO_TCP, ip("203.0.113.9"), 40000, ip(VIP), 80, lb.lb.id)
    rev = NatKey("rev_dnat", PROTO_TCP, ip("10.0.0.6"), 8080, ip("203.0.113.9"), 40000, lb.lb.id)
    assert res.flow_state == (
        NatEntry(fwd, NatBinding(ip("10.0.0.6"), 8080)),
        NatEntry(rev, NatBinding(ip(VIP), 80)),
    )
    assert {nat_tag(fwd), nat_tag(rev), lb.vip.id, lb.pool.id, lb.lb.id} <= res.tags
    assert {m.id for m in lb.members} <= res.tags
    # The 5-tuple is in the mask: another connection of the client is a miss.
    assert res.match.mask & (Field.IP_SRC | Field.TP_SRC | Field.IP_DST | Field.TP_DST) == (
        Field.IP_SRC | Field.TP_SRC | Field.IP_DST | Field.TP_DST
    )

    before = lb.reply(1, 40000)  # no binding yet: leaves with the member's address
    assert before.outputs[0].nw_src is None
    lb.t.install(res)
    back = lb.reply(1, 40000)
    (out,) = back.outputs
    assert out.port_id == lb.uplink.id and (out.nw_src, out.tp_src) == (ip(VIP), 80)
    assert out.nw_dst is None and back.state_refs == (rev,)
    # The connection's next packet follows its binding whatever the picker says.
    again = lb.connect(40000, Fixed(2))
    assert lb.member_of(again) == 1 and again.flow_state == () and again.state_refs == (fwd,)


def test_round_robin_is_a_weighted_random_choice_per_connection() -> None:
    lb = Lb(weights=(1, 2, 5))
    picker = RandomPicker(random.Random(7))
    snap = lb.t.snapshot()
    counts: Counter[int] = Counter()
    for sport in range(20000, 22400):
        frame = tcp(CLIENT, GW_OUT, "203.0.113.9", VIP, sport, 80)
        res = simulate(snap, FlowMatch.from_frame(lb.uplink.id, frame), frame, 0.0, picker=picker)
        counts[lb.member_of(res)] += 1
    total = sum(counts.values())
    for n, share in enumerate((1 / 8, 2 / 8, 5 / 8)):
        assert abs(counts[n] / total - share) < 0.04, counts


def test_inactive_and_disabled_members_get_no_new_connection_but_keep_theirs() -> None:
    lb = Lb()
    first = lb.connect(40000, Fixed(0))
    assert lb.member_of(first) == 0
    lb.t.install(first)
    lb.t.set(lb.members[0], status="INACTIVE")
    lb.t.set(lb.members[1], admin_state_up=False)
    picker = Fixed(0)
    new = lb.connect(40001, picker)
    assert lb.member_of(new) == 2 and picker.asked == [[1]]
    assert "INACTIVE" in render_text(new.to_dict())
    old = lb.connect(40000, Fixed(0))
    assert lb.member_of(old) == 0 and old.flow_state == ()
    assert lb.reply(0, 40000).outputs[0].nw_src == ip(VIP)

    lb.t.set(lb.members[2], status="INACTIVE")
    none = lb.connect(40002)
    assert none.verdict is Verdict.DROP and none.flow_state == ()
    assert "no active member" in (none.drop_reason or "")
    assert lb.member_of(lb.connect(40000)) == 0  # still its member


def test_a_disabled_pool_vip_or_load_balancer_refuses_new_connections_only() -> None:
    for obj, change, words in (
        ("pool", {"admin_state_up": False}, "pool"),
        ("pool", {"status": "INACTIVE"}, "INACTIVE"),
        ("vip", {"admin_state_up": False}, "VIP is disabled"),
        ("lb", {"admin_state_up": False}, "load balancer"),
    ):
        lb = Lb()
        lb.t.install(lb.connect(40000, Fixed(1)))
        lb.t.set(getattr(lb, obj), **change)
        new = lb.connect(40001)
        assert new.verdict is Verdict.DROP, obj
        assert words in (new.drop_reason or "") and "no new connection" in (new.drop_reason or "")
        assert lb.member_of(lb.connect(40000)) == 1, obj


def test_source_ip_persistence_keeps_a_client_on_its_member_until_it_stops_serving() -> None:
    lb = Lb(sticky=True)
    first = lb.connect(40000, Fixed(2))
    assert lb.member_of(first) == 2
    sticky = NatKey("sticky_dnat", PROTO_TCP, ip("203.0.113.9"), 0, ip(VIP), 80, lb.lb.id)
    assert NatEntry(sticky, NatBinding(ip("10.0.0.7"), 8080)) in first.flow_state
    lb.t.install(first)
    picker = Fixed(0)
    second = lb.connect(40001, picker)
    assert lb.member_of(second) == 2 and picker.asked == []  # no choice made
    assert sticky in second.state_refs and nat_tag(sticky) in second.tags
    assert all(e.key != sticky for e in second.flow_state)
    assert "sticky" in render_text(second.to_dict())
    # Another client is chosen for afresh.
    assert lb.member_of(lb.connect(40001, Fixed(0), src="203.0.113.8")) == 0

    lb.t.set(lb.members[2], status="INACTIVE")
    third = lb.connect(40002, Fixed(0))
    assert lb.member_of(third) == 0
    assert NatEntry(sticky, NatBinding(ip("10.0.0.5"), 8080)) in third.flow_state
    assert "no longer a candidate" in render_text(third.to_dict())
    assert lb.member_of(lb.connect(40000)) == 2  # the first connection is not broken


def test_other_traffic_through_the_router_is_routed_as_before() -> None:
    lb = Lb()
    # To the VIP's address on another port, or UDP: not load balanced (routed to the
    # address on the uplink's network: ARP for it).
    for frame in (
        tcp(CLIENT, GW_OUT, "203.0.113.9", VIP, 40000, 22),
        udp(CLIENT, GW_OUT, "203.0.113.9", VIP, 40000, 80),
    ):
        res = lb.t.send(lb.uplink, frame)
        assert res.verdict is Verdict.HOLD and "VIP" not in render_text(res.to_dict())
    # Straight to a member: routed, not translated, and the client port not in the mask.
    direct = lb.t.send(lb.uplink, tcp(CLIENT, GW_OUT, "203.0.113.9", "10.0.0.5", 40000, 8080))
    (out,) = direct.outputs
    assert out.port_id == lb.vms[0].id and out.nw_dst is None
    assert not direct.match.mask & Field.TP_SRC
    # A member's packet that is no VIP connection's reply leaves untranslated.
    assert lb.reply(0, 45000).outputs[0].nw_src is None


def test_fragments_to_a_vip_are_dropped() -> None:
    lb = Lb()
    for later in (False, True):
        res = lb.t.send(lb.uplink, fragment(CLIENT, GW_OUT, "203.0.113.9", VIP, later=later))
        assert res.verdict is Verdict.DROP and "fragmented" in (res.drop_reason or "")


def test_the_trace_shows_the_vip_the_candidates_and_the_choice() -> None:
    lb = Lb(weights=(1, 2, 3))
    lb.t.set(lb.members[0], admin_state_up=False)
    text = render_text(lb.connect(40000, Fixed(1)).to_dict(), width=200)
    assert f"VIP {VIP}:80" in text
    assert "10.0.0.5:8080 weight 1 (disabled)" in text and "10.0.0.6:8080 weight 2" in text
    assert "chose member 10.0.0.7:8080 (weighted random)" in text
