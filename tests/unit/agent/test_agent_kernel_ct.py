"""Connection tracking in the datapath, through the agent (`tessera.agent.kernel_ct`), on
fake datapaths that track connections as the kernel program does.

What it buys: a conntrack firewall's flows are keyed on the datapath's answer (new, or a
reply) instead of the 5-tuple, so after the first connection the next ones cost no miss
at all. What must not change: the firewall's decisions, connections a peer must see (or
NAT rewrote) tracked by the agent as before, and every tracked connection visible and
expiring like the agent's own.
"""

from __future__ import annotations

import time

from agent_harness import Cloud, Host, Vm
from test_agent_stateful import _free_udp_port, chain, udp

from tessera.agent.agent import SWEEP
from tessera.agent.flowstate.entry import TCP_RST_TIMEOUT, TIMEOUTS
from tessera.agent.kernel_ct import (
    CLOSED_TIMEOUT,
    PRESSURE_TIMEOUT,
    UNREPLIED_TIMEOUT,
    zone_of,
)
from tessera.datapath.base import CtCommit, Miss, OutputTunnel
from tessera.model import Bridge, Port, PortGroup
from tessera.packet import ETH_TYPE_IPV4, PROTO_TCP, Ethernet, IPv4, Tcp
from tessera.simulation.flowstate import ConnKey, ConntrackEntry

SYN, SYN_ACK, RST, FIN_ACK = 0x02, 0x12, 0x04, 0x11


def misses(h: Host) -> float:
    return h.agent.metrics.registry.get_sample_value("tessera_agent_misses_total") or 0.0


def tcp(src: Vm, dst: Vm, sport: int, dport: int, flags: int) -> bytes:
    packet = IPv4(src.ip, dst.ip, 6, Tcp(sport, dport, seq=1, flags=flags))
    return Ethernet(dst.mac, src.mac, ETH_TYPE_IPV4, packet).build()


def firewalled(cloud: Cloud, h: Host, far: Host | None = None) -> tuple[Bridge, Vm, Vm]:
    """Client c (on `h`) and server s (on `far`, else on `h`) on one bridge; c's port
    tracks what c starts and lets only the replies back in. Both have spoken."""
    br = cloud.bridge()
    c = cloud.vm(h, br, "tap-c", "02:00:00:00:00:0c", "10.0.0.12")
    s = cloud.vm(far or h, br, "tap-s", "02:00:00:00:00:0d", "10.0.0.13")
    out = chain(cloud, "from c", {"type": "accept", "match_forward_flow": True})
    back = chain(cloud, "to c", {"type": "accept", "match_return_flow": True}, {"type": "drop"})
    cloud.topo.update(Port, c.port_id, {"inbound_filter_id": out.id, "outbound_filter_id": back.id})
    cloud.settle()
    for vm, other in ((s, c), (c, s)):
        cloud.send(vm, vm.arp_request(other.ip))
        cloud.received(other)
    return br, c, s


def test_ports_get_the_zone_of_their_device(cloud: Cloud) -> None:
    h = cloud.host("h1", "198.18.0.1")
    br, c, s = firewalled(cloud, h)
    other = cloud.bridge("other")
    o = cloud.vm(h, other, "tap-o", "02:00:00:00:00:0e", "10.0.1.14")
    cloud.settle()
    zones = h.dp.port_zones()
    assert zones[h.number(c.port_id)] == zones[h.number(s.port_id)] == zone_of(br.id)
    assert zones[h.number(o.port_id)] == zone_of(other.id) != zone_of(br.id)
    assert zone_of(br.id) == zone_of(br.id) != 0  # the same after a restart


def test_the_next_connections_through_the_firewall_cost_no_miss(cloud: Cloud) -> None:
    h = cloud.host("h1", "198.18.0.1")
    br, c, s = firewalled(cloud, h)
    cloud.send(c, tcp(c, s, 40000, 80, SYN))
    assert len(cloud.received(s)) == 1
    # One flow for c's new connections: keyed on "new", it commits them first.
    forward = [
        f for m, f in h.dp.dump().items() if m.in_port == h.number(c.port_id) and m.fields().get(
            "ct_state") == 1
    ]  # fmt: skip
    assert len(forward) == 1
    assert forward[0].flow.actions[0] == CtCommit(zone_of(br.id))
    assert "tp_src" not in forward[0].flow.match.fields()
    before = misses(h)
    for sport in range(40001, 40011):
        cloud.send(c, tcp(c, s, sport, 80, SYN))
        assert len(cloud.received(s)) == 1
        cloud.send(s, tcp(s, c, 80, sport, SYN_ACK))
        assert len(cloud.received(c)) == 1
    assert misses(h) == before
    zone = zone_of(br.id)
    tracked = {conn[4] for conn in h.dp.ct_entries() if conn[0] == zone}
    assert tracked == set(range(40000, 40011))
    # The firewall still holds: s cannot start a connection to c.
    cloud.send(s, tcp(s, c, 80, 50000, SYN))
    assert cloud.received(c) == []
    # `tessera conntrack` lists the connections only the datapath saw.
    rows = h.agent.conntrack_report()["entries"]
    in_datapath = [r for r in rows if r.get("datapath")]
    assert len(in_datapath) == 10 and in_datapath[0]["zone"] == br.id
    assert in_datapath[0]["state"] == "established"


def test_connections_only_the_datapath_holds_expire_like_the_agent_s(cloud: Cloud) -> None:
    h = cloud.host("h1", "198.18.0.1")
    _br, c, s = firewalled(cloud, h)
    cloud.send(c, udp(c, s.mac, s.ip, 40000, 53))
    cloud.send(c, tcp(c, s, 40001, 80, SYN))
    cloud.send(c, tcp(c, s, 40002, 80, RST))
    cloud.received(s)
    # An RST that starts nothing tracks nothing.
    assert {conn[4] for conn in h.dp.ct_entries()} == {40000, 40001}
    cloud.send(s, tcp(s, c, 80, 40001, SYN_ACK))
    cloud.tick(TIMEOUTS[17] + SWEEP)
    # The UDP one is the agent's own (the first connection of its flow): it expired by
    # the datapath's last use of it, and the datapath's copy with it.
    assert {conn[4] for conn in h.dp.ct_entries()} == {40001}
    assert h.agent.flowstate.table.lookup(ConnKey(17, c.ip, s.ip, 40000, 53, _br.id)) is None


def test_unanswered_and_closed_connections_go_before_established_ones(cloud: Cloud) -> None:
    """What only the datapath sees decides: nobody answered (`UNREPLIED_TIMEOUT`), both
    ends sent a FIN (`CLOSED_TIMEOUT`), the answering side reset it (`TCP_RST_TIMEOUT`),
    the starting side reset it (gone at once); an established one keeps its 600 s."""
    h = cloud.host("h1", "198.18.0.1")
    _br, c, s = firewalled(cloud, h)
    cloud.send(c, tcp(c, s, 40000, 80, SYN))  # the first: the agent's own
    cloud.send(s, tcp(s, c, 80, 40000, SYN_ACK))

    def connect(sport: int) -> None:
        cloud.send(c, tcp(c, s, sport, 80, SYN))
        cloud.send(s, tcp(s, c, 80, sport, SYN_ACK))
        assert len(cloud.received(c)) == 1

    connect(40001)  # established
    cloud.send(c, tcp(c, s, 40002, 80, SYN))  # unanswered
    connect(40003)
    cloud.send(s, tcp(s, c, 80, 40003, RST))  # reset by the server
    connect(40004)
    cloud.send(c, tcp(c, s, 40004, 80, RST | 0x10))  # reset by the client: gone now
    connect(40005)
    cloud.send(c, tcp(c, s, 40005, 80, FIN_ACK))
    cloud.send(s, tcp(s, c, 80, 40005, FIN_ACK))  # closed both ways

    def held() -> set[int]:
        return {conn[4] for conn in h.dp.ct_entries()}

    assert held() == {40000, 40001, 40002, 40003, 40005}
    states = {
        r["forward"]["src_port"]: r["state"]
        for r in h.agent.conntrack_report()["entries"]
        if r.get("datapath")
    }
    assert states == {40001: "established", 40002: "unreplied", 40003: "reset", 40005: "closed"}
    cloud.tick(TCP_RST_TIMEOUT + SWEEP)
    assert held() == {40000, 40001, 40002, 40005}
    cloud.tick(CLOSED_TIMEOUT - TCP_RST_TIMEOUT + SWEEP)
    assert held() == {40000, 40001, 40002}
    cloud.tick(UNREPLIED_TIMEOUT - CLOSED_TIMEOUT + SWEEP)
    assert held() == {40000, 40001}


def test_a_nearly_full_table_sheds_closed_connections_first(cloud: Cloud) -> None:
    """The table of answered connections is an LRU map: full, it evicts the connection
    used longest ago, an idle established one as likely as not. From `PRESSURE` full
    on, closed and reset connections go after `PRESSURE_TIMEOUT` of idleness,
    established ones stay."""
    h = cloud.host("h1", "198.18.0.1")
    _br, c, s = firewalled(cloud, h)
    h.dp.conntrack.max_entries = 20

    def connect(sport: int, close: bool = False) -> None:
        cloud.send(c, tcp(c, s, sport, 80, SYN))
        cloud.send(s, tcp(s, c, 80, sport, SYN_ACK))
        if close:
            cloud.send(c, tcp(c, s, sport, 80, FIN_ACK))
            cloud.send(s, tcp(s, c, 80, sport, FIN_ACK))

    for sport in (40000, 40001, 40002):
        connect(sport)
    for sport in range(41000, 41010):  # 13 of 20: below the pressure
        connect(sport, close=True)
    cloud.tick(PRESSURE_TIMEOUT + SWEEP)
    assert len(h.dp.ct_entries()) == 13
    for sport in range(41010, 41013):  # 16 of 20: under pressure
        connect(sport, close=True)
    cloud.tick(PRESSURE_TIMEOUT + SWEEP)
    assert {conn[4] for conn in h.dp.ct_entries()} == {40000, 40001, 40002}


def test_a_burst_of_unanswered_connections_never_evicts_an_established_one(
    cloud: Cloud,
) -> None:
    """Connections nobody answered have a table of their own: a burst of them (a scan,
    a flood) larger than it evicts only its kind; the idle established connection's
    reply still gets through the firewall."""
    h = cloud.host("h1", "198.18.0.1")
    _br, c, s = firewalled(cloud, h)
    h.dp.conntrack.new_max_entries = 10
    cloud.send(c, tcp(c, s, 40000, 80, SYN))  # the first: the agent's own
    cloud.send(s, tcp(s, c, 80, 40000, SYN_ACK))
    cloud.send(c, tcp(c, s, 40001, 80, SYN))
    cloud.send(s, tcp(s, c, 80, 40001, SYN_ACK))
    for sport in range(41000, 41050):
        cloud.send(c, tcp(c, s, sport, 80, SYN))
    held = {conn[4] for conn in h.dp.ct_entries()}
    assert {40000, 40001} <= held and len(held) == 12  # the ten latest unanswered
    before = misses(h)
    cloud.send(s, tcp(s, c, 80, 40001, 0x10))
    assert len(cloud.received(c)) == 1
    assert misses(h) == before  # the datapath answered it from its table


def test_connections_across_hosts_are_committed_by_both_datapaths(cloud: Cloud) -> None:
    """c on h1, s on h2: the replies enter on h2, so h2's datapath must know c's
    connections. The tunnel asks it to commit each one as it arrives
    (`OutputTunnel.commit`): after the first connection, neither agent sees a miss."""
    port = _free_udp_port()  # the agents exchange flow state over real UDP
    h1 = cloud.host("h1", "127.0.0.21", flowstate_port=port)
    h2 = cloud.host("h2", "127.0.0.22", flowstate_port=port)
    br, c, s = firewalled(cloud, h1, far=h2)
    zone = zone_of(br.id)
    cloud.send(c, tcp(c, s, 40000, 80, SYN))
    assert len(cloud.received(s)) == 1
    # One flow on h1 for c's new connections: keyed on "new", it asks h2 to commit them
    # on arrival, and commits nothing here, where no reply enters (c's port is in the
    # bridge's zone too: the entries would only fill h1's table).
    (forward,) = [
        f
        for m, f in h1.dp.dump().items()
        if m.in_port == h1.number(c.port_id) and m.fields().get("ct_state") == 1
    ]
    assert "tp_src" not in forward.flow.match.fields()
    actions = forward.flow.actions
    assert not any(isinstance(a, CtCommit) for a in actions)
    (tunnel,) = [a for a in actions if isinstance(a, OutputTunnel)]
    assert tunnel.commit and tunnel.vni == h2.agent.cache.get("ports", s.port_id).tunnel_key
    assert h1.dp.ct_entries() == {}
    assert h1.agent.flowstate.table.lookup(ConnKey(6, c.ip, s.ip, 40000, 80, br.id)) is None
    # s's answer is a reply in h2's datapath: c's firewall lets it in.
    assert (zone, PROTO_TCP, c.ip, s.ip, 40000, 80) in h2.dp.ct_entries()
    cloud.send(s, tcp(s, c, 80, 40000, SYN_ACK))
    assert len(cloud.received(c)) == 1
    before = misses(h1), misses(h2)
    for sport in range(40001, 40011):
        cloud.send(c, tcp(c, s, sport, 80, SYN))
        assert len(cloud.received(s)) == 1
        cloud.send(s, tcp(s, c, 80, sport, SYN_ACK))
        assert len(cloud.received(c)) == 1
    assert (misses(h1), misses(h2)) == before
    tracked = {conn[4] for conn in h2.dp.ct_entries() if conn[0] == zone}
    assert tracked == set(range(40000, 40011))
    # The firewall still holds on h2: s cannot start a connection to c.
    cloud.send(s, tcp(s, c, 80, 50000, SYN))
    assert cloud.received(c) == []
    # h2 lists what its datapath committed; they expire there like its own.
    rows = [r for r in h2.agent.conntrack_report()["entries"] if r.get("datapath")]
    assert {r["forward"]["src_port"] for r in rows} >= set(range(40001, 40011))
    cloud.tick(TIMEOUTS[PROTO_TCP] + SWEEP)
    assert not any(conn[4] in range(40001, 40011) for conn in h2.dp.ct_entries())


def test_without_tunnel_commits_the_state_is_pushed_as_before(cloud: Cloud) -> None:
    """`tessera agent --no-tunnel-commit` (a cluster still running hosts whose datapath
    drops a VNI with the commit bit): the flow keyed on the connection, no commit bit,
    the state pushed to h2, whose answer then gets through."""
    port = _free_udp_port()
    h1 = cloud.host("h1", "127.0.0.21", flowstate_port=port)
    h2 = cloud.host("h2", "127.0.0.22", flowstate_port=port)
    h1.agent.upcall.tunnel_commit = False
    br, c, s = firewalled(cloud, h1, far=h2)
    cloud.send(c, tcp(c, s, 40000, 80, SYN))
    assert len(cloud.received(s)) == 1
    (flow,) = [
        f
        for m, f in h1.dp.dump().items()
        if m.in_port == h1.number(c.port_id) and m.fields().get("eth_type") == ETH_TYPE_IPV4
    ]
    assert flow.flow.match.fields()["tp_src"] == 40000
    assert not any(isinstance(a, OutputTunnel) and a.commit for a in flow.flow.actions)
    key = ConnKey(6, c.ip, s.ip, 40000, 80, br.id)
    deadline = time.monotonic() + 5
    while key not in h2.agent.flowstate.view.conntrack and time.monotonic() < deadline:
        time.sleep(0.005)
    h2.agent.run_once(0)
    cloud.send(s, tcp(s, c, 80, 40000, SYN_ACK))
    assert len(cloud.received(c)) == 1


def test_a_connection_a_third_host_must_see_is_tracked_by_the_agent(cloud: Cloud) -> None:
    """s's port is in a stateful group with a port on h3, where its replies may enter
    too: the tunnel to h2 cannot tell h3, so the agent keys the flow on the connection
    and pushes its state, as before the datapath tracked connections."""
    port = _free_udp_port()
    h1 = cloud.host("h1", "127.0.0.21", flowstate_port=port)
    h2 = cloud.host("h2", "127.0.0.22", flowstate_port=port)
    h3 = cloud.host("h3", "127.0.0.23", flowstate_port=port)
    br, c, s = firewalled(cloud, h1, far=h2)
    o = cloud.vm(h3, br, "tap-o", "02:00:00:00:00:0e", "10.0.0.14")
    group = cloud.topo.create(PortGroup(name="edge", stateful=True))
    for member in (s, o):
        cloud.topo.add_port_group_port(group.id, member.port_id)
    cloud.settle()
    cloud.send(c, udp(c, s.mac, s.ip, 40000, 53))
    assert len(cloud.received(s)) == 1
    (flow,) = [
        m
        for m in h1.flows()
        if m.in_port == h1.number(c.port_id) and m.fields().get("eth_type") == ETH_TYPE_IPV4
    ]
    assert flow.fields()["tp_src"] == 40000
    actions = h1.dp.dump()[flow].flow.actions
    assert not any(isinstance(a, CtCommit) for a in actions)
    assert not any(isinstance(a, OutputTunnel) and a.commit for a in actions)
    key = ConnKey(17, c.ip, s.ip, 40000, 53, group.id)
    assert h1.agent.flowstate.table.lookup(key) == ConntrackEntry(key)
    # Both members' hosts got the entry.
    for h in (h2, h3):
        deadline = time.monotonic() + 5
        while key not in h.agent.flowstate.view.conntrack and time.monotonic() < deadline:
            time.sleep(0.005)
        assert key in h.agent.flowstate.view.conntrack
        h.agent.run_once(0)
    cloud.send(s, udp(s, c.mac, c.ip, 53, 40000))
    assert len(cloud.received(c)) == 1


def test_a_peer_s_entry_reaches_the_datapath_and_leaves_with_it(cloud: Cloud) -> None:
    h = cloud.host("h1", "198.18.0.1")
    br, c, s = firewalled(cloud, h)
    key = ConnKey(17, s.ip, c.ip, 5353, 5353, br.id)
    fs = h.agent.flowstate
    fs.table.add(ConntrackEntry(key), cloud.clock(), origin="some-peer")
    conn = (zone_of(br.id), 17, s.ip, c.ip, 5353, 5353)
    assert conn in h.dp.ct_entries()
    # c's answer is a reply in the datapath, so the firewall lets it... out: c's port
    # only limits what enters c; what matters is that the decision came from there.
    cloud.send(c, udp(c, s.mac, s.ip, 5353, 5353))
    assert len(cloud.received(s)) == 1
    fs.table.remove(key)
    assert conn not in h.dp.ct_entries()


def test_a_new_connection_the_firewall_drops_stays_keyed_on_its_ports(cloud: Cloud) -> None:
    """Only a flow that commits is keyed on "new" alone: a drop is keyed on the ports,
    so a reply whose state arrives late never meets it (it misses, see below)."""
    h = cloud.host("h1", "198.18.0.1")
    _br, c, s = firewalled(cloud, h)
    cloud.send(s, tcp(s, c, 80, 50000, SYN))
    assert cloud.received(c) == []
    (drop,) = [
        f
        for m, f in h.dp.dump().items()
        if m.in_port == h.number(s.port_id) and m.fields().get("eth_type") == ETH_TYPE_IPV4
    ]
    assert drop.flow.match.fields()["tp_src"] == 80 and drop.flow.match.fields()["ct_state"] == 1


def test_a_reply_whose_state_came_after_its_lookup_is_a_reply(cloud: Cloud) -> None:
    """A peer's entry installed between the datapath's lookup ("new") and the agent's
    simulation: the agent answers with the state it holds, as before the datapath
    tracked connections."""
    h = cloud.host("h1", "198.18.0.1")
    br, c, s = firewalled(cloud, h)
    # c's port lets in replies only: s -> c is a reply of c's connection, which a peer
    # (say the host c's connection entered by) sent.
    key = ConnKey(6, c.ip, s.ip, 40000, 80, br.id)
    h.agent.flowstate.table.add(ConntrackEntry(key), cloud.clock(), origin="some-peer")
    late = tcp(s, c, 80, 40000, SYN_ACK)
    h.agent.upcall.handle([Miss(h.number(s.port_id), late, cloud.clock(), ct_state=1)])
    assert cloud.received(c) == [late]


def test_a_restarted_agent_keeps_the_committing_flows_and_the_connections(cloud: Cloud) -> None:
    h = cloud.host("h1", "198.18.0.1")
    _br, c, s = firewalled(cloud, h)
    cloud.send(c, tcp(c, s, 40000, 80, SYN))
    assert len(cloud.received(s)) == 1
    cloud.send(s, tcp(s, c, 80, 40000, SYN_ACK))
    assert len(cloud.received(c)) == 1
    flows = set(h.dp.dump())
    dp = h.dp
    cloud.stop(h)
    h2 = cloud.start_agent("h1", h.host_id, h.underlay, dp)
    c.host = s.host = h2
    for _ in range(10):
        cloud.tick(0.25)
    assert h2.agent.adopter.done and h2.agent.adopter.removed == 0
    assert flows <= set(dp.dump())
    # No made-up connection from the re-simulation (its packet had ports 0).
    assert all(conn[4] for conn in dp.ct_entries())
    before = misses(h2)
    cloud.send(c, tcp(c, s, 40001, 80, SYN))
    assert len(cloud.received(s)) == 1
    cloud.send(s, tcp(s, c, 80, 40001, SYN_ACK))
    assert len(cloud.received(c)) == 1
    assert misses(h2) == before
