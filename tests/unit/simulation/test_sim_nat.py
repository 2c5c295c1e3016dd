"""NAT: dynamic SNAT through an allocator, DNAT before routing, reverse translation of
replies, 1:1 static NAT (floating IPs) both ways, flow actions, ICMP echo, fragments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sim_topo import Topo, eth, fragment, ip, mac, ping, tcp

from tessera.cli.trace import render_text
from tessera.model import Chain, Port
from tessera.packet import PROTO_ICMP, PROTO_TCP, Field, FlowMatch, Icmp, IPv4, mac_from_str
from tessera.simulation import (
    ConnKey,
    ConntrackEntry,
    ExpiryClass,
    NatBinding,
    NatEntry,
    NatKey,
    NatRange,
    SnatRequest,
    Verdict,
    nat_tag,
    simulate,
)
from tessera.simulation.trace import trace_packet

GW_IN = mac_from_str("02:aa:00:00:00:01")
GW_OUT = mac_from_str("02:aa:00:00:00:02")
EXT = mac(9)  # the external host 203.0.113.9 behind the uplink


class Edge:
    """VMs 10.0.0.5 (mac 5) and 10.0.0.6 (mac 6) on a bridge behind router r
    (10.0.0.1/24); r's uplink 203.0.113.1/24 is exterior, the external host 203.0.113.9
    is behind it. r's inbound and outbound filters are `pre` and `post`."""

    def __init__(self) -> None:
        t = self.t = Topo()
        self.br = t.bridge()
        self.vm: Port = t.bridge_port(self.br)
        self.vm2: Port = t.bridge_port(self.br)
        link = t.bridge_port(self.br)
        self.r = t.router()
        rp = t.router_port(self.r, "10.0.0.1/24", "02:aa:00:00:00:01")
        self.uplink: Port = t.router_port(self.r, "203.0.113.1/24", "02:aa:00:00:00:02")
        t.link(link, rp)
        t.route(self.r, "10.0.0.0/24", t.get(rp))
        t.route(self.r, "203.0.113.0/24", self.uplink)
        t.learn_mac(self.br, mac(5), self.vm)
        t.learn_mac(self.br, mac(6), self.vm2)
        t.learn_arp(self.r, "203.0.113.9", EXT)
        t.learn_arp(self.r, "10.0.0.5", mac(5))
        t.learn_arp(self.r, "10.0.0.6", mac(6))
        self.pre: Chain = t.chain("pre")
        self.post: Chain = t.chain("post")
        self.r = t.set(self.r, inbound_filter_id=self.pre.id, outbound_filter_id=self.post.id)

    def out(self, port: Port, frame: bytes) -> Any:
        return self.t.send(port, frame)

    def snat(self, targets: list[dict[str, Any]], **kw: Any) -> None:
        """SNAT what leaves by the uplink from 10.0.0.0/24; reverse what comes in by it."""
        self.t.rule(
            self.post,
            "snat",
            out_ports=[self.uplink.id],
            nw_src_address="10.0.0.0",
            nw_src_length=24,
            nat_targets=targets,
            **kw,
        )
        self.t.rule(self.pre, "rev_snat", in_ports=[self.uplink.id])


PUBLIC = [{"address_from": "203.0.113.1", "address_to": "203.0.113.1", "port_from": 1024,
           "port_to": 1087}]  # fmt: skip


def test_snat_rewrites_the_source_and_a_reply_through_rev_snat_restores_the_original() -> None:
    e = Edge()
    e.snat(PUBLIC)
    res = e.out(e.vm, tcp(mac(5), GW_IN, "10.0.0.5", "203.0.113.9", 40000, 80))
    assert res.verdict is Verdict.FORWARD and res.expiry is ExpiryClass.STATEFUL
    (out,) = res.outputs
    assert out.port_id == e.uplink.id
    assert (out.nw_src, out.tp_src, out.nw_dst, out.tp_dst) == (ip("203.0.113.1"), 1024, None, None)
    assert (out.eth_src, out.eth_dst, out.ttl_dec) == (GW_OUT, EXT, 1)
    fwd = NatKey("fwd_snat", PROTO_TCP, ip("10.0.0.5"), 40000, ip("203.0.113.9"), 80, e.r.id)
    rev = NatKey("rev_snat", PROTO_TCP, ip("203.0.113.9"), 80, ip("203.0.113.1"), 1024, e.r.id)
    assert res.flow_state == (
        NatEntry(fwd, NatBinding(ip("203.0.113.1"), 1024)),
        NatEntry(rev, NatBinding(ip("10.0.0.5"), 40000)),
    )
    assert {nat_tag(fwd), nat_tag(rev)} <= res.tags

    reply = tcp(EXT, GW_OUT, "203.0.113.9", "203.0.113.1", 80, 1024)
    assert e.out(e.uplink, reply).verdict is Verdict.DROP  # no binding: for the router
    e.t.install(res)
    back = e.out(e.uplink, reply)
    assert back.verdict is Verdict.FORWARD and back.state_refs == (rev,)
    (to_vm,) = back.outputs
    assert to_vm.port_id == e.vm.id
    assert (to_vm.nw_dst, to_vm.tp_dst, to_vm.nw_src, to_vm.tp_src) == (
        ip("10.0.0.5"), 40000, None, None,
    )  # fmt: skip
    assert to_vm.eth_dst == mac(5)
    # The next packet of the connection finds its binding and creates nothing.
    again = e.out(e.vm, tcp(mac(5), GW_IN, "10.0.0.5", "203.0.113.9", 40000, 80))
    assert again.outputs == res.outputs and again.flow_state == ()
    assert again.state_refs == (fwd,)


def test_snat_never_gives_two_connections_the_same_address_and_port() -> None:
    e = Edge()
    e.snat(PUBLIC)
    first = e.out(e.vm, tcp(mac(5), GW_IN, "10.0.0.5", "203.0.113.9", 40000, 80))
    e.t.install(first)
    second = e.out(e.vm2, tcp(mac(6), GW_IN, "10.0.0.6", "203.0.113.9", 40000, 80))
    assert second.outputs[0].tp_src == 1025
    e.t.install(second)
    reply = e.out(e.uplink, tcp(EXT, GW_OUT, "203.0.113.9", "203.0.113.1", 80, 1025))
    assert reply.outputs[0].port_id == e.vm2.id and reply.outputs[0].tp_dst == 40000


def test_snat_uses_the_injected_allocator_and_drops_when_nothing_is_free() -> None:
    e = Edge()
    e.snat(PUBLIC)
    frame = tcp(mac(5), GW_IN, "10.0.0.5", "203.0.113.9", 40000, 80)
    asked: list[SnatRequest] = []

    class Last:
        def allocate_snat(
            self, request: SnatRequest, taken: Callable[[int, int], bool]
        ) -> NatBinding | None:
            asked.append(request)
            return NatBinding(ip("203.0.113.1"), 1087)

    class Exhausted:
        def allocate_snat(
            self, request: SnatRequest, taken: Callable[[int, int], bool]
        ) -> NatBinding | None:
            return None

    snap = e.t.snapshot()
    res = simulate(snap, FlowMatch.from_frame(e.vm.id, frame), frame, 0.0, allocator=Last())
    assert res.outputs[0].tp_src == 1087
    assert asked == [
        SnatRequest(
            e.r.id, PROTO_TCP, ip("10.0.0.5"), 40000, ip("203.0.113.9"), 80,
            (NatRange(ip("203.0.113.1"), ip("203.0.113.1"), 1024, 1087),),
        )
    ]  # fmt: skip
    none = simulate(snap, FlowMatch.from_frame(e.vm.id, frame), frame, 0.0, allocator=Exhausted())
    assert none.verdict is Verdict.DROP and none.flow_state == ()
    assert "SNAT" in (none.drop_reason or "")


def test_dnat_then_routing_uses_the_new_destination() -> None:
    e = Edge()
    e.t.rule(
        e.pre,
        "dnat",
        in_ports=[e.uplink.id],
        nw_dst_address="203.0.113.10",
        tp_dst={"start": 80, "end": 80},
        nat_targets=[{"address_from": "10.0.0.5", "address_to": "10.0.0.5", "port_from": 8080,
                      "port_to": 8080}],
    )  # fmt: skip
    e.t.rule(e.post, "rev_dnat", out_ports=[e.uplink.id])
    res = e.out(e.uplink, tcp(EXT, GW_OUT, "203.0.113.9", "203.0.113.10", 33000, 80))
    assert res.verdict is Verdict.FORWARD
    (out,) = res.outputs
    assert out.port_id == e.vm.id and out.eth_dst == mac(5)
    assert (out.nw_dst, out.tp_dst, out.nw_src, out.tp_src) == (ip("10.0.0.5"), 8080, None, None)
    e.t.install(res)
    reply = e.out(e.vm, tcp(mac(5), GW_IN, "10.0.0.5", "203.0.113.9", 8080, 33000))
    (back,) = reply.outputs
    assert back.port_id == e.uplink.id
    assert (back.nw_src, back.tp_src) == (ip("203.0.113.10"), 80)


def test_a_floating_ip_both_ways() -> None:
    """1:1 static NAT: dnat the floating IP to the VM coming in, snat the VM to it going
    out; addresses only, no state, for any IPv4 packet."""
    e = Edge()
    fip = [{"address_from": "203.0.113.10", "address_to": "203.0.113.10"}]
    fixed = [{"address_from": "10.0.0.5", "address_to": "10.0.0.5"}]
    e.t.rule(e.pre, "dnat", in_ports=[e.uplink.id], nw_dst_address="203.0.113.10",
             nat_targets=fixed)  # fmt: skip
    e.t.rule(e.post, "snat", out_ports=[e.uplink.id], nw_src_address="10.0.0.5",
             nat_targets=fip)  # fmt: skip
    inbound = e.out(e.uplink, tcp(EXT, GW_OUT, "203.0.113.9", "203.0.113.10", 33000, 22))
    (out,) = inbound.outputs
    assert out.port_id == e.vm.id and (out.nw_dst, out.tp_dst) == (ip("10.0.0.5"), None)
    assert inbound.flow_state == () and inbound.expiry is ExpiryClass.NORMAL
    outbound = e.out(e.vm, tcp(mac(5), GW_IN, "10.0.0.5", "203.0.113.9", 22, 33000))
    (back,) = outbound.outputs
    assert back.port_id == e.uplink.id and (back.nw_src, back.tp_src) == (ip("203.0.113.10"), None)
    assert outbound.flow_state == ()
    # Stateless: the ports were never read, one flow serves every connection.
    assert Field.TP_SRC not in outbound.match.mask and Field.TP_DST not in outbound.match.mask
    ping_in = e.out(e.uplink, ping(EXT, GW_OUT, "203.0.113.9", "203.0.113.10"))
    assert ping_in.outputs[0].nw_dst == ip("10.0.0.5")


@pytest.mark.parametrize(("flow_action", "verdict"), [
    ("accept", Verdict.FORWARD), ("continue", Verdict.DROP), ("return", Verdict.FORWARD),
])  # fmt: skip
def test_the_flow_action_says_what_follows_the_translation(
    flow_action: str, verdict: Verdict
) -> None:
    e = Edge()
    e.snat(PUBLIC, flow_action=flow_action)
    e.t.rule(e.post, "drop")
    res = e.out(e.vm, tcp(mac(5), GW_IN, "10.0.0.5", "203.0.113.9", 40000, 80))
    assert res.verdict is verdict


def echo(src_mac: int, dst_mac: int, src: str, dst: str, ident: int, icmp_type: int = 8) -> bytes:
    message = Icmp(icmp_type, 0, ident, 1, b"hello")
    return eth(src_mac, dst_mac, IPv4(ip(src), ip(dst), PROTO_ICMP, message))


def test_icmp_echo_through_snat_gets_a_new_id_and_its_reply_the_old_one_back() -> None:
    """Two VMs pinging one address with one id through one SNAT address: each gets its
    own id from the target's ports, each reply finds its VM; every flow is cacheable,
    keyed by the echo id, so the kernel handles the next packets."""
    e = Edge()
    e.snat(PUBLIC)
    first = e.out(e.vm, ping(mac(5), GW_IN, "10.0.0.5", "203.0.113.9"))  # id 7
    (out,) = first.outputs
    assert (out.nw_src, out.icmp_id, out.tp_src) == (ip("203.0.113.1"), 1024, None)
    assert first.cacheable and Field.ICMP_ID in first.match.mask
    assert first.match.masked_key(Field.ICMP_ID) == (7,)
    e.t.install(first)
    second = e.out(e.vm2, ping(mac(6), GW_IN, "10.0.0.6", "203.0.113.9"))  # id 7 too
    assert (second.outputs[0].nw_src, second.outputs[0].icmp_id) == (ip("203.0.113.1"), 1025)
    e.t.install(second)
    rev = [x for x in second.flow_state if isinstance(x, NatEntry) and x.key.kind == "rev_snat"]
    assert rev[0].key == NatKey(
        "rev_snat", PROTO_ICMP, ip("203.0.113.9"), 1025, ip("203.0.113.1"), 1025, e.r.id
    ) and rev[0].binding == NatBinding(ip("10.0.0.6"), 7)
    for ident, vm, addr in ((1024, e.vm, "10.0.0.5"), (1025, e.vm2, "10.0.0.6")):
        back = e.out(e.uplink, echo(EXT, GW_OUT, "203.0.113.9", "203.0.113.1", ident, 0))
        (o,) = back.outputs
        assert (o.port_id, o.nw_dst, o.icmp_id) == (vm.id, ip(addr), 7)
        assert back.cacheable and back.match.masked_key(Field.ICMP_ID) == (ident,)
    stray = e.out(e.uplink, echo(EXT, GW_OUT, "203.0.113.9", "203.0.113.1", 7, 0))
    assert all(o.port_id not in (e.vm.id, e.vm2.id) for o in stray.outputs)


def test_an_echo_is_keyed_by_its_id_only_where_the_id_was_read() -> None:
    """A plain routed ping reads no id: one flow serves every echo id."""
    e = Edge()
    res = e.out(e.vm, ping(mac(5), GW_IN, "10.0.0.5", "203.0.113.9"))
    assert res.cacheable and Field.ICMP_ID not in res.match.mask


@pytest.mark.parametrize(("policy", "drops_first", "drops_later"), [
    ("any", True, True),
    ("header", True, False),
    ("nonheader", False, True),
    ("unfragmented", False, False),
])  # fmt: skip
def test_fragment_policies(policy: str, drops_first: bool, drops_later: bool) -> None:
    t = Topo()
    br = t.bridge()
    a, b = t.bridge_port(br), t.bridge_port(br)
    t.learn_mac(br, mac(2), b)
    chain = t.chain()
    t.rule(chain, "drop", nw_proto=6, fragment_policy=policy)
    t.set(a, inbound_filter_id=chain.id)
    first = t.send(t.get(a), fragment(mac(1), mac(2), "10.0.0.1", "10.0.0.2", later=False))
    later = t.send(t.get(a), fragment(mac(1), mac(2), "10.0.0.1", "10.0.0.2", later=True))
    whole = t.send(t.get(a), tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2"))
    assert (first.verdict is Verdict.DROP) == drops_first
    assert (later.verdict is Verdict.DROP) == drops_later
    assert (whole.verdict is Verdict.DROP) == (policy in ("any", "header", "unfragmented"))
    if policy != "any":
        assert Field.IP_FRAG in first.match.mask


def test_a_later_fragment_meeting_dynamic_nat_is_dropped_and_static_nat_translates_it() -> None:
    e = Edge()
    e.snat(PUBLIC)
    frame = fragment(mac(5), GW_IN, "10.0.0.5", "203.0.113.9", later=True)
    later = e.out(e.vm, frame)
    assert later.verdict is Verdict.DROP and "fragmented" in (later.drop_reason or "")
    assert later.flow_state == ()
    static = Edge()
    fip = [{"address_from": "203.0.113.10", "address_to": "203.0.113.10"}]
    static.t.rule(static.post, "snat", out_ports=[static.uplink.id], nat_targets=fip)
    res = static.out(static.vm, frame)
    assert res.verdict is Verdict.FORWARD and res.outputs[0].nw_src == ip("203.0.113.10")


def test_the_trace_shows_each_translation() -> None:
    e = Edge()
    e.snat(PUBLIC)
    answer = trace_packet(
        e.t.snapshot(),
        {
            "port_id": e.vm.id,
            "src_mac": "02:00:00:00:00:05",
            "dst_mac": "02:aa:00:00:00:01",
            "src_ip": "10.0.0.5",
            "dst_ip": "203.0.113.9",
            "protocol": "tcp",
            "src_port": 40000,
            "dst_port": 80,
        },
        0.0,
    )
    assert "snat 10.0.0.5:40000 -> 203.0.113.1:1024 (new binding" in str(answer["trace"])
    assert answer["outputs"][0]["set_nw_src"] == "203.0.113.1"
    assert answer["outputs"][0]["set_tp_src"] == 1024
    assert [s["kind"] for s in answer["flow_state"]] == ["fwd_snat", "rev_snat"]
    text = render_text(answer)
    assert "would create NAT binding fwd_snat tcp 10.0.0.5:40000 > 203.0.113.9:80 -> " in text
    assert "set_nw_src=203.0.113.1" in text


def test_a_conntrack_firewall_on_the_vm_port_lets_the_snat_reply_in() -> None:
    """The connection is keyed as it leaves (after SNAT, on the router the uplink belongs
    to) and the reply as it enters (before reverse SNAT, on that same router)."""
    e = Edge()
    e.snat(PUBLIC)
    asks, returns = e.t.chain("from vm"), e.t.chain("to vm")
    e.t.rule(asks, "accept", match_forward_flow=True)
    e.t.rule(returns, "accept", match_return_flow=True)
    e.t.rule(returns, "drop")
    vm = e.t.set(e.vm, inbound_filter_id=asks.id, outbound_filter_id=returns.id)
    res = e.out(vm, tcp(mac(5), GW_IN, "10.0.0.5", "203.0.113.9", 40000, 80))
    conn = ConnKey(PROTO_TCP, ip("203.0.113.1"), ip("203.0.113.9"), 1024, 80, e.r.id)
    assert ConntrackEntry(conn) in res.flow_state and len(res.flow_state) == 3
    reply = tcp(EXT, GW_OUT, "203.0.113.9", "203.0.113.1", 80, 1024)
    e.t.nat.update({k.key: k.binding for k in res.flow_state if isinstance(k, NatEntry)})
    assert e.out(e.uplink, reply).verdict is Verdict.DROP  # translated, but not tracked
    e.t.install(res)
    back = e.out(e.uplink, reply)
    assert back.verdict is Verdict.FORWARD and back.outputs[0].port_id == e.vm.id
    assert conn in back.state_refs
