"""Stateful L4 through the agent, with packets on fake datapaths that execute the
installed flows: a conntrack firewall, dynamic SNAT with the reply reversed, a floating
IP both ways. The state a simulation creates is installed before its packet leaves,
and its tags invalidate exactly the flows decided without it."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

from agent_harness import Cloud, Host, Vm

from tessera.model import Chain, Port, PortGroup, Route, Rule
from tessera.nsdb.tables import snat_table
from tessera.packet import ETH_TYPE_IPV4, Ethernet, IPv4, Udp
from tessera.packet.addr import ip_from_str, ip_to_str, mac_from_str
from tessera.simulation.flowstate import ConnKey, ConntrackEntry
from tessera.simulation.tags import conntrack_tag

GW_MAC = "02:7e:00:00:00:01"
UPLINK_MAC = "02:7e:00:00:00:02"


def udp(src: Vm, dst_mac: int, dst_ip: int, sport: int, dport: int) -> bytes:
    packet = IPv4(src.ip, dst_ip, 17, Udp(sport, dport, b"hello"))
    return Ethernet(dst_mac, src.mac, ETH_TYPE_IPV4, packet).build()


def udp_of(frame: bytes) -> tuple[str, int, str, int]:
    """(src ip, sport, dst ip, dport) of a delivered UDP frame."""
    ip = Ethernet.parse(frame).payload
    assert isinstance(ip, IPv4) and isinstance(ip.payload, Udp)
    return ip_to_str(ip.src), ip.payload.src_port, ip_to_str(ip.dst), ip.payload.dst_port


def chain(cloud: Cloud, name: str, *rules: dict[str, Any]) -> Chain:
    c = cloud.topo.create(Chain(name=name))
    for position, fields in enumerate(rules, 1):
        cloud.topo.create(Rule(chain_id=c.id, position=position, **fields))
    return c


def test_a_conntrack_firewall_lets_replies_in_and_drops_new_inbound(cloud: Cloud) -> None:
    h = cloud.host("h1", "198.18.0.1")
    br = cloud.bridge()
    a = cloud.vm(h, br, "tap-a", "02:00:00:00:00:0a", "10.0.0.10")
    b = cloud.vm(h, br, "tap-b", "02:00:00:00:00:0b", "10.0.0.11")
    # B's connections are tracked as they enter; towards B only their replies pass.
    from_b = chain(cloud, "from b", {"type": "accept", "match_forward_flow": True})
    to_b = chain(cloud, "to b", {"type": "accept", "match_return_flow": True}, {"type": "drop"})
    cloud.topo.update(
        Port, b.port_id, {"inbound_filter_id": from_b.id, "outbound_filter_id": to_b.id}
    )
    cloud.settle()

    # A cannot start a connection to B: dropped, and a drop flow is installed for it.
    reply = udp(a, b.mac, b.ip, 53, 40000)
    cloud.send(a, reply)
    assert cloud.received(b) == []
    assert any(m.in_port == h.number(a.port_id) for m in h.flows())

    # B reaches A; the connection's entry is installed before the packet is forwarded.
    cloud.send(b, udp(b, a.mac, a.ip, 40000, 53))
    (delivered,) = cloud.received(a)
    assert udp_of(delivered) == ("10.0.0.11", 40000, "10.0.0.10", 53)
    key = ConnKey(17, b.ip, a.ip, 40000, 53, br.id)
    fs = h.agent.flowstate
    assert key in fs.view.conntrack and fs.table.lookup(key) == ConntrackEntry(key)
    # The reply's drop flow read the missing entry: its tag invalidated it.
    assert not any(conntrack_tag(key) in d.tags for d in h.agent.flows.snapshot()
                   if d.flow.actions and str(d.flow.actions[0]) == "drop")  # fmt: skip
    cloud.send(a, reply)
    (back,) = cloud.received(b)
    assert udp_of(back) == ("10.0.0.10", 53, "10.0.0.11", 40000)
    # The reply now has a flow of its own: the next one is forwarded by the datapath.
    misses = h.agent.metrics.registry.get_sample_value("tessera_agent_misses_total")
    cloud.send(a, reply)
    assert len(cloud.received(b)) == 1
    assert h.agent.metrics.registry.get_sample_value("tessera_agent_misses_total") == misses
    # A new connection from A (another port) is still dropped.
    cloud.send(a, udp(a, b.mac, b.ip, 53, 40001))
    assert cloud.received(b) == []
    # When the connection's flows are idle past the entry's timeout it expires, with the
    # tag invalidating the reply's flow: replies are dropped again.
    cloud.tick(61.0)
    cloud.tick(61.0)
    assert key not in fs.view.conntrack
    cloud.send(a, reply)
    assert cloud.received(b) == []


class Edge:
    """VM 10.0.0.5 on h1 behind router rt (10.0.0.1/24); rt's uplink 203.0.113.1/24 is
    an exterior port bound on `ext_host` to an "external" VM 203.0.113.9."""

    def __init__(self, cloud: Cloud, h: Host | None = None, ext_host: Host | None = None) -> None:
        self.cloud = cloud
        self.h = h or cloud.host("h1", "198.18.0.1")
        ext_host = ext_host or self.h
        br = cloud.bridge()
        self.rt = cloud.router()
        rp = cloud.router_port(self.rt, "10.0.0.1/24", GW_MAC)
        self.uplink = cloud.router_port(self.rt, "203.0.113.1/24", UPLINK_MAC)
        cloud.topo.link(rp.id, cloud.bridge_port(br).id)
        for port, net in ((rp, "10.0.0.0"), (self.uplink, "203.0.113.0")):
            cloud.topo.create(
                Route(
                    router_id=self.rt.id, dst_network_addr=net, dst_network_length=24,
                    next_hop_port=port.id,
                )
            )  # fmt: skip
        self.vm = cloud.vm(self.h, br, "tap-vm", "02:00:00:00:00:05", "10.0.0.5")
        cloud.topo.bind(ext_host.host_id, self.uplink.id, "tap-ext")
        self.ext = Vm(self.uplink.id, mac_from_str("02:00:00:00:00:99"),
                      ip_from_str("203.0.113.9"), ext_host)  # fmt: skip
        cloud.settle()

    def filters(self, pre: list[dict[str, Any]], post: list[dict[str, Any]]) -> None:
        self.cloud.topo.update(
            type(self.rt), self.rt.id,
            {"inbound_filter_id": chain(self.cloud, "pre", *pre).id,
             "outbound_filter_id": chain(self.cloud, "post", *post).id},
        )  # fmt: skip
        self.cloud.settle()

    def resolve(self) -> None:
        """The router learns both MACs (each answers the router's ARP request)."""
        c = self.cloud
        c.send(self.vm, self.vm.arp_reply(mac_from_str(GW_MAC), ip_from_str("10.0.0.1")))
        c.send(self.ext, self.ext.arp_reply(mac_from_str(UPLINK_MAC), ip_from_str("203.0.113.1")))

    def out(self, sport: int = 40000) -> bytes:
        return udp(self.vm, mac_from_str(GW_MAC), self.ext.ip, sport, 53)

    def to_public(self, ip: str, port: int, sport: int = 53) -> bytes:
        return udp(self.ext, mac_from_str(UPLINK_MAC), ip_from_str(ip), sport, port)


SNAT_TARGET = [{"address_from": "203.0.113.1", "address_to": "203.0.113.1",
                "port_from": 20000, "port_to": 20127}]  # fmt: skip


def _snat_edge(cloud: Cloud, h: Host | None = None, ext_host: Host | None = None) -> Edge:
    e = Edge(cloud, h, ext_host)
    e.filters(
        pre=[{"type": "rev_snat", "in_ports": [e.uplink.id]}],
        post=[{"type": "snat", "out_ports": [e.uplink.id], "nw_src_address": "10.0.0.0",
               "nw_src_length": 24, "nat_targets": SNAT_TARGET}],
    )  # fmt: skip
    e.resolve()
    return e


def _through_arp(e: Edge, frame: bytes) -> list[bytes]:
    """Send from the VM; answer the router's ARP for the external VM if it asks."""
    c = e.cloud
    c.send(e.vm, frame)
    got = c.received(e.ext)
    if got and Ethernet.parse(got[0]).dst == 0xFFFF_FFFF_FFFF:
        c.send(e.ext, e.ext.arp_reply(mac_from_str(UPLINK_MAC), ip_from_str("203.0.113.1")))
        got = [f for f in c.received(e.ext) if Ethernet.parse(f).dst != 0xFFFF_FFFF_FFFF]
    return got


def test_dynamic_snat_to_an_external_address_and_the_reply_reversed(cloud: Cloud) -> None:
    e = _snat_edge(cloud)
    (first,) = _through_arp(e, e.out(40000))
    src, sport, dst, dport = udp_of(first)
    assert (src, dst, dport) == ("203.0.113.1", "203.0.113.9", 53)
    assert 20000 <= sport <= 20127
    fs = e.h.agent.flowstate
    # The port came from a block leased in the NSDB, and is held for the connection.
    assert cloud.admin.state_get(snat_table("203.0.113.1"))
    (lease,) = fs.snat.leases()
    assert lease[2] == 1
    # The reply to the public address reaches the VM, translated back.
    cloud.send(e.ext, e.to_public("203.0.113.1", sport))
    (back,) = cloud.received(e.vm)
    assert udp_of(back) == ("203.0.113.9", 53, "10.0.0.5", 40000)
    # Both directions now run on kernel flows that rewrite (no more misses).
    misses = e.h.agent.metrics.registry.get_sample_value("tessera_agent_misses_total")
    cloud.send(e.vm, e.out(40000))
    assert [udp_of(f) for f in cloud.received(e.ext)] == [(src, sport, dst, dport)]
    cloud.send(e.ext, e.to_public("203.0.113.1", sport))
    assert [udp_of(f) for f in cloud.received(e.vm)] == [("203.0.113.9", 53, "10.0.0.5", 40000)]
    assert e.h.agent.metrics.registry.get_sample_value("tessera_agent_misses_total") == misses
    # A second connection gets another port; a reply to a port never bound is dropped.
    (second,) = _through_arp(e, e.out(40001))
    assert udp_of(second)[1] not in (sport,) and udp_of(second)[0] == "203.0.113.1"
    cloud.send(e.ext, e.to_public("203.0.113.1", 20127 if sport != 20127 else 20126))
    assert cloud.received(e.vm) == []


def test_a_floating_ip_translates_both_ways(cloud: Cloud) -> None:
    e = Edge(cloud)
    fip = "203.0.113.50"
    e.filters(
        pre=[{"type": "dnat", "in_ports": [e.uplink.id], "nw_dst_address": fip,
              "nw_dst_length": 32, "nat_targets": [{"address_from": "10.0.0.5",
                                                    "address_to": "10.0.0.5"}]}],
        post=[{"type": "snat", "out_ports": [e.uplink.id], "nw_src_address": "10.0.0.5",
               "nw_src_length": 32, "nat_targets": [{"address_from": fip,
                                                     "address_to": fip}]}],
    )  # fmt: skip
    e.resolve()
    # Inbound: the external VM reaches the floating IP; the VM sees its own address.
    cloud.send(e.ext, e.to_public(fip, 8080, sport=5555))
    (inbound,) = cloud.received(e.vm)
    assert udp_of(inbound) == ("203.0.113.9", 5555, "10.0.0.5", 8080)
    # Outbound: the VM's packets leave from the floating IP, ports kept.
    (out,) = _through_arp(e, e.out(41000))
    assert udp_of(out) == (fip, 41000, "203.0.113.9", 53)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_snat_state_reaches_the_egress_host_before_the_reply_can_arrive(cloud: Cloud) -> None:
    """VM on h1, the external VM on the uplink bound on h2: the reply enters on h2, whose
    agent knows the binding only because h1 sent it (real UDP between the agents)."""
    port = _free_udp_port()
    h1 = cloud.host("h1", "127.0.0.21", flowstate_port=port)
    h2 = cloud.host("h2", "127.0.0.22", flowstate_port=port)
    e = _snat_edge(cloud, h1, h2)
    (first,) = _through_arp(e, e.out(40000))
    src, sport, _dst, _dport = udp_of(first)
    assert src == "203.0.113.1"
    received = h2.agent.flowstate.table
    deadline = time.monotonic() + 5
    while len(received) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    kinds = sorted(t.entry.key.kind for t in received.snapshot())  # type: ignore[union-attr]
    assert kinds == ["fwd_snat", "rev_snat"]
    assert h1.agent.metrics.registry.get_sample_value("tessera_agent_flowstate_sent_total")
    h2.agent.run_once(0)  # the received state's tags (nothing was decided without it yet)
    cloud.send(e.ext, e.to_public("203.0.113.1", sport))
    (back,) = cloud.received(e.vm)
    assert udp_of(back) == ("203.0.113.9", 53, "10.0.0.5", 40000)
    # h2 leased nothing: the port is h1's.
    assert h2.agent.flowstate.snat.leases() == [] and len(h1.agent.flowstate.snat.leases()) == 1


@dataclass
class GroupEdge:
    """x on h1, firewalled (replies only); o1 (h1) and o2 (h2) on x's bridge, which
    `members` of them in stateful group `group`."""

    h1: Host
    h2: Host
    x: Vm
    o1: Vm
    o2: Vm
    group: PortGroup


def _group_edge(cloud: Cloud, members: tuple[str, ...]) -> GroupEdge:
    port = _free_udp_port()
    h1 = cloud.host("h1", "127.0.0.31", flowstate_port=port)
    h2 = cloud.host("h2", "127.0.0.32", flowstate_port=port)
    br = cloud.bridge()
    x = cloud.vm(h1, br, "tap-x", "02:00:00:00:00:0c", "10.0.0.12")
    o1 = cloud.vm(h1, br, "tap-o1", "02:00:00:00:00:0d", "10.0.0.13")
    o2 = cloud.vm(h2, br, "tap-o2", "02:00:00:00:00:0e", "10.0.0.14")
    group = cloud.topo.create(PortGroup(name="edge", stateful=True))
    for name in members:
        cloud.topo.add_port_group_port(group.id, {"o1": o1, "o2": o2}[name].port_id)
    from_x = chain(cloud, "from x", {"type": "accept", "match_forward_flow": True})
    to_x = chain(cloud, "to x", {"type": "accept", "match_return_flow": True}, {"type": "drop"})
    cloud.topo.update(
        Port, x.port_id, {"inbound_filter_id": from_x.id, "outbound_filter_id": to_x.id}
    )
    cloud.settle()
    # o1's MAC is known (o1 spoke), so x's packet leaves by o1 only.
    cloud.send(o1, udp(o1, 0xFFFF_FFFF_FFFF, o1.ip, 7, 7))
    return GroupEdge(h1, h2, x, o1, o2, group)


def _connect_and_reply(cloud: Cloud, e: GroupEdge) -> None:
    """x opens a connection by o1; its state reaches h2; o2 answers: x gets it."""
    # (A reply sent earlier would be flooded to o1 too, and its tracking would make x's
    # packet a return flow: the connection starts from x first.)
    cloud.send(e.x, udp(e.x, e.o1.mac, e.o1.ip, 40000, 53))
    (out,) = cloud.received(e.o1)
    assert udp_of(out) == ("10.0.0.12", 40000, "10.0.0.13", 53)
    key = ConnKey(17, e.x.ip, e.o1.ip, 40000, 53, e.group.id)  # keyed by the group
    deadline = time.monotonic() + 5
    while key not in e.h2.agent.flowstate.view.conntrack and time.monotonic() < deadline:
        time.sleep(0.005)
    assert key in e.h2.agent.flowstate.view.conntrack
    e.h2.agent.run_once(0)  # the received entry's tags
    reply = Ethernet(e.x.mac, e.o2.mac, ETH_TYPE_IPV4,
                     IPv4(e.o1.ip, e.x.ip, 17, Udp(53, 40000, b"answer"))).build()  # fmt: skip
    cloud.send(e.o2, reply)
    (back,) = cloud.received(e.x)
    assert udp_of(back) == ("10.0.0.13", 53, "10.0.0.12", 40000)


def test_a_stateful_port_group_shares_state_with_the_other_member_s_host(cloud: Cloud) -> None:
    """x (h1) is firewalled (replies only); its connection leaves by member o1 of a
    stateful group (h1), and the reply comes back by the other member o2 on h2: h2 knows
    the connection only because h1 sent it to the hosts of the group's members."""
    _connect_and_reply(cloud, _group_edge(cloud, ("o1", "o2")))


def test_a_reply_on_a_member_that_joined_before_the_last_compile_is_not_dropped(
    cloud: Cloud,
) -> None:
    """The same, with h2 holding a compiled topology from before o2 joined the group
    (its cache has the membership; the compile waits for the next packet or idle
    moment): o2's datapath zone is still its bridge's, where the group's connection is
    not, so the datapath calls the reply new. The miss path compiles before it reads
    the agent's state (zones follow, the connection is written): a reply, forwarded."""
    e = _group_edge(cloud, ("o1",))
    e.h2.agent.simulator.prepare()  # h2 compiled: o2 is its bridge's, zone and all
    cloud.topo.add_port_group_port(e.group.id, e.o2.port_id)
    cloud.settle()  # h2's cache has the membership; nothing compiles it yet
    members = getattr(e.h2.agent.cache.get("port_groups", e.group.id), "port_ids", [])
    assert e.o2.port_id in members and e.group.id not in e.h2.agent.kernel_ct.device_zone
    _connect_and_reply(cloud, e)


def test_snat_port_exhaustion_is_a_clean_counted_drop(cloud: Cloud, caplog: Any) -> None:
    e = Edge(cloud)
    one_port = [{"address_from": "203.0.113.1", "address_to": "203.0.113.1",
                 "port_from": 20000, "port_to": 20000}]  # fmt: skip
    e.filters(
        pre=[{"type": "rev_snat", "in_ports": [e.uplink.id]}],
        post=[{"type": "snat", "out_ports": [e.uplink.id], "nw_src_address": "10.0.0.0",
               "nw_src_length": 24, "nat_targets": one_port}],
    )  # fmt: skip
    e.resolve()
    (first,) = _through_arp(e, e.out(40000))
    assert udp_of(first)[:2] == ("203.0.113.1", 20000)
    registry = e.h.agent.metrics.registry
    assert not registry.get_sample_value("tessera_agent_snat_exhausted_total")
    with caplog.at_level("WARNING"):
        cloud.send(e.vm, e.out(40001))  # the only port is taken: dropped, not crashed
    assert cloud.received(e.ext) == []
    assert registry.get_sample_value("tessera_agent_snat_exhausted_total") == 1
    assert "SNAT exhausted" in caplog.text
    # The first connection still works both ways.
    cloud.send(e.ext, e.to_public("203.0.113.1", 20000))
    assert [udp_of(f) for f in cloud.received(e.vm)] == [("203.0.113.9", 53, "10.0.0.5", 40000)]


def test_the_first_reply_s_flow_survives_the_state_it_was_decided_with(cloud: Cloud) -> None:
    """The state h1 pushed arrives on h2 with tags to invalidate (flows decided without
    it). Applied after the first reply was simulated, they removed that reply's new flow
    too, so the connection's next segment missed again (a FIN then bypassed the flow's
    TCP flags). They are applied before the simulation: one miss per direction."""
    port = _free_udp_port()
    h1 = cloud.host("h1", "127.0.0.23", flowstate_port=port)
    h2 = cloud.host("h2", "127.0.0.24", flowstate_port=port)
    e = _snat_edge(cloud, h1, h2)
    (first,) = _through_arp(e, e.out(40000))
    _src, sport, _dst, _dport = udp_of(first)
    deadline = time.monotonic() + 5
    while len(h2.agent.flowstate.table) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    registry = h2.agent.metrics.registry
    before = registry.get_sample_value("tessera_agent_misses_total") or 0.0
    for _ in range(3):  # no run_once in between: the tags wait until the reply misses
        cloud.send(e.ext, e.to_public("203.0.113.1", sport))
        (back,) = cloud.received(e.vm)
        assert udp_of(back) == ("203.0.113.9", 53, "10.0.0.5", 40000)
    assert (registry.get_sample_value("tessera_agent_misses_total") or 0.0) - before == 1
    assert not registry.get_sample_value("tessera_agent_flows_invalidated_total")
