"""Connection tracking: forward and return flows, entries created only by a finished
simulation, tags, stateful port groups, ICMP echo by id, untracked protocols."""

from __future__ import annotations

from sim_topo import Topo, eth, ip, mac, ping, tcp

from tessera.cli.trace import render_text
from tessera.model import Chain, Port
from tessera.packet import PROTO_ICMP, Field, Icmp, IPv4
from tessera.simulation import (
    ConnKey,
    ConntrackEntry,
    ExpiryClass,
    Verdict,
    conntrack_tag,
)
from tessera.simulation.trace import trace_packet


class Firewalled:
    """Bridge br with VM a (10.0.0.1, mac 1) and VM b (10.0.0.2, mac 2). Packets from a
    ask whether they are forward flows (so connections are tracked); packets to a are
    accepted only as return flows."""

    def __init__(self) -> None:
        t = self.t = Topo()
        self.br = t.bridge()
        self.a: Port = t.bridge_port(self.br)
        self.b: Port = t.bridge_port(self.br)
        t.learn_mac(self.br, mac(1), self.a)
        t.learn_mac(self.br, mac(2), self.b)
        self.out_of_a: Chain = t.chain("from a")
        t.rule(self.out_of_a, "accept", match_forward_flow=True)
        self.into_a: Chain = t.chain("to a")
        t.rule(self.into_a, "accept", match_return_flow=True)
        t.rule(self.into_a, "drop")
        self.a = t.set(
            self.a, inbound_filter_id=self.out_of_a.id, outbound_filter_id=self.into_a.id
        )

    def key(self, sport: int = 40000, dport: int = 80) -> ConnKey:
        return ConnKey(6, ip("10.0.0.1"), ip("10.0.0.2"), sport, dport, self.br.id)


def test_a_reply_to_an_accepted_connection_is_a_return_flow_and_passes_a_return_only_chain() -> (
    None
):
    f = Firewalled()
    reply = tcp(mac(2), mac(1), "10.0.0.2", "10.0.0.1", 80, 40000)
    assert f.t.send(f.b, reply).verdict is Verdict.DROP  # no connection yet

    first = f.t.send(f.a, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2", 40000, 80))
    assert first.verdict is Verdict.FORWARD
    assert first.flow_state == (ConntrackEntry(f.key()),)
    assert first.expiry is ExpiryClass.STATEFUL
    # Tagged with the entry that would make it a return flow (arriving from elsewhere)
    # and with the entry it creates.
    assert conntrack_tag(f.key().reversed()) in first.tags
    assert conntrack_tag(f.key()) in first.tags
    # The connection key was read: the flow is one connection's.
    for field in (Field.IP_SRC, Field.IP_DST, Field.IP_PROTO, Field.TP_SRC, Field.TP_DST):
        assert field in first.match.mask

    f.t.install(first)
    back = f.t.send(f.b, reply)
    assert back.verdict is Verdict.FORWARD
    assert back.state_refs == (f.key(),) and back.flow_state == ()
    assert back.expiry is ExpiryClass.STATEFUL
    assert conntrack_tag(f.key()) in back.tags


def test_a_new_connection_towards_the_tracked_side_is_not_a_return_flow() -> None:
    f = Firewalled()
    f.t.install(f.t.send(f.a, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2", 40000, 80)))
    other_port = tcp(mac(2), mac(1), "10.0.0.2", "10.0.0.1", 80, 40001)
    new_conn = tcp(mac(2), mac(1), "10.0.0.2", "10.0.0.1", 5555, 22)
    for frame in (other_port, new_conn):
        res = f.t.send(f.b, frame)
        assert res.verdict is Verdict.DROP and res.flow_state == ()


def test_a_simulation_has_no_side_effect_until_its_result_is_installed() -> None:
    f = Firewalled()
    frame = tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2")
    first, again = f.t.send(f.a, frame), f.t.send(f.a, frame)
    assert first.flow_state == again.flow_state == (ConntrackEntry(f.key()),)
    assert f.t.conns == set()


def test_state_is_created_only_when_a_rule_asked_and_the_packet_is_forwarded() -> None:
    f = Firewalled()
    f.t.set(f.a, inbound_filter_id=None)  # nobody asks on the way out
    res = f.t.send(f.a, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2"))
    assert res.verdict is Verdict.FORWARD and res.flow_state == ()
    assert res.expiry is ExpiryClass.NORMAL
    # Asked, but dropped after: nothing is created.
    f.t.set(f.a, inbound_filter_id=f.out_of_a.id)
    f.t.rule(f.t.get(f.out_of_a), "drop")
    f.t.set(f.b, outbound_filter_id=f.into_a.id)  # b accepts only return flows too
    dropped = f.t.send(f.a, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2"))
    assert dropped.verdict is Verdict.DROP and dropped.flow_state == ()


def test_protocols_other_than_tcp_udp_and_icmp_echo_are_always_forward_and_untracked() -> None:
    f = Firewalled()
    gre = eth(mac(1), mac(2), IPv4(ip("10.0.0.1"), ip("10.0.0.2"), 47, bytes(8)))
    res = f.t.send(f.a, gre)
    assert res.verdict is Verdict.FORWARD and res.flow_state == ()
    back = eth(mac(2), mac(1), IPv4(ip("10.0.0.2"), ip("10.0.0.1"), 47, bytes(8)))
    assert f.t.send(f.b, back).verdict is Verdict.DROP


def test_icmp_echo_is_tracked_by_its_identifier_and_cached_keyed_by_it() -> None:
    f = Firewalled()
    request = f.t.send(f.a, ping(mac(1), mac(2), "10.0.0.1", "10.0.0.2"))  # id 7
    key = ConnKey(PROTO_ICMP, ip("10.0.0.1"), ip("10.0.0.2"), 7, 7, f.br.id)
    assert request.flow_state == (ConntrackEntry(key),)
    # The id is a flow key field: the flow is cached, for this id only.
    assert request.expiry is ExpiryClass.STATEFUL and request.cacheable
    assert request.match.masked_key(Field.ICMP_ID) == (7,)
    f.t.install(request)
    reply = ping(mac(2), mac(1), "10.0.0.2", "10.0.0.1", icmp_type=0)
    answer = f.t.send(f.b, reply)
    assert answer.verdict is Verdict.FORWARD and answer.cacheable
    assert answer.match.masked_key(Field.ICMP_ID) == (7,)
    other_id = eth(
        mac(2),
        mac(1),
        IPv4(ip("10.0.0.2"), ip("10.0.0.1"), PROTO_ICMP, Icmp(0, 0, 8, 1, b"hello")),
    )
    assert f.t.send(f.b, other_id).verdict is Verdict.DROP


def test_a_stateful_port_group_shares_connections_among_its_members() -> None:
    """The forward packet leaves by p1 (bridge one), the reply enters by p2 (bridge two):
    a return flow only when p1 and p2 are in one stateful port group."""
    t = Topo()
    one, two = t.bridge("one"), t.bridge("two")
    vm, p1 = t.bridge_port(one), t.bridge_port(one)
    p2, vm2 = t.bridge_port(two), t.bridge_port(two)
    t.learn_mac(one, mac(2), p1)
    t.learn_mac(two, mac(1), vm2)
    asks = t.chain("asks")
    t.rule(asks, "accept", match_forward_flow=True)
    t.set(vm, inbound_filter_id=asks.id)
    returns = t.chain("returns only")
    t.rule(returns, "accept", match_return_flow=True)
    t.rule(returns, "drop")
    t.set(p2, inbound_filter_id=returns.id)
    forward = tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2", 40000, 80)
    reply = tcp(mac(2), mac(1), "10.0.0.2", "10.0.0.1", 80, 40000)

    t.install(t.send(t.get(vm), forward))
    assert t.send(t.get(p2), reply).verdict is Verdict.DROP  # keyed by bridge one

    group = t.port_group(t.get(p1), t.get(p2))
    t.set(group, stateful=True)
    t.conns.clear()
    res = t.send(t.get(vm), forward)
    assert res.flow_state == (
        ConntrackEntry(ConnKey(6, ip("10.0.0.1"), ip("10.0.0.2"), 40000, 80, group.id)),
    )
    t.install(res)
    back = t.send(t.get(p2), reply)
    assert back.verdict is Verdict.FORWARD and group.id in back.tags


def test_the_trace_shows_the_connection_tracking_decision() -> None:
    f = Firewalled()
    answer = trace_packet(
        f.t.snapshot(),
        {
            "port_id": f.a.id,
            "src_mac": "02:00:00:00:00:01",
            "dst_mac": "02:00:00:00:00:02",
            "src_ip": "10.0.0.1",
            "dst_ip": "10.0.0.2",
            "protocol": "tcp",
            "src_port": 40000,
            "dst_port": 80,
        },
        0.0,
    )
    text = str(answer["trace"])
    assert "forward flow tcp 10.0.0.1:40000 > 10.0.0.2:80" in text
    assert answer["flow_state"][0]["type"] == "conntrack"
    assert "would create conntrack entry tcp 10.0.0.1:40000 > 10.0.0.2:80" in render_text(answer)
    assert "unsupported" not in answer


def test_a_packet_the_network_generates_counts_as_a_return_flow() -> None:
    """A router's ICMP error back to a VM passes the VM's "return flows only" filter."""
    t = Topo()
    br, r = t.bridge(), t.router()
    vm, link = t.bridge_port(br), t.bridge_port(br)
    rp = t.router_port(r, "10.0.0.1/24", "02:aa:00:00:00:01")
    t.link(link, rp)
    t.route(r, "10.0.0.0/24", t.get(rp))
    t.learn_mac(br, mac(5), vm)
    returns = t.chain("to vm")
    t.rule(returns, "accept", match_return_flow=True)
    t.rule(returns, "drop")
    t.set(vm, outbound_filter_id=returns.id)
    res = t.send(t.get(vm), tcp(mac(5), 0x02AA_0000_0001, "10.0.0.5", "192.0.2.1"))  # no route
    assert res.verdict is Verdict.DROP
    assert [e.kind for e in res.emitted] == ["icmp_error"] and res.emitted[0].port_id == vm.id


def test_a_port_in_two_stateful_groups_is_keyed_by_the_lowest_group_id() -> None:
    t = Topo()
    br = t.bridge()
    p = t.bridge_port(br)
    g1, g2 = t.port_group(p), t.port_group(p)
    t.set(g1, stateful=True)
    t.set(g2, stateful=True)
    snap = t.snapshot()
    assert snap.conn_device(snap.port(p.id)) == min(g1.id, g2.id)
    t.set(g1, stateful=False)
    t.set(g2, stateful=False)
    snap = t.snapshot()
    assert snap.conn_device(snap.port(p.id)) == br.id
