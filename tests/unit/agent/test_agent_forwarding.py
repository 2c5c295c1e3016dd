"""The agent's decisions, asked as behaviour: where does this packet come out?

Real agents (cache, simulation, upcall, flow table) on fake datapaths that execute the
installed flows; the NSDB is in memory. Every test sends frames into VM ports.
"""

from __future__ import annotations

from agent_harness import BROADCAST, Cloud

from tessera.datapath.base import Output, OutputTunnel, packet_key
from tessera.model import Route
from tessera.nsdb import tables
from tessera.packet import Ethernet, Icmp, IPv4
from tessera.packet.addr import ip_from_str, mac_from_str


def test_a_broadcast_floods_the_bridge_and_a_learned_mac_gets_unicast(cloud: Cloud) -> None:
    h = cloud.host("h1", "198.18.0.1")
    br = cloud.bridge()
    vm1 = cloud.vm(h, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(h, br, "tap2", "02:00:00:00:00:02", "10.0.0.2")
    vm3 = cloud.vm(h, br, "tap3", "02:00:00:00:00:03", "10.0.0.3")
    cloud.settle()

    cloud.send(vm1, vm1.arp_request(vm2.ip))
    assert len(cloud.received(vm2)) == 1 and len(cloud.received(vm3)) == 1
    assert cloud.received(vm1) == []

    cloud.send(vm2, vm2.arp_reply(vm1.mac, vm1.ip))  # vm1 is known now: unicast
    assert len(cloud.received(vm1)) == 1 and cloud.received(vm3) == []

    cloud.send(vm1, vm1.frame(vm2))
    assert len(cloud.received(vm2)) == 1 and cloud.received(vm3) == []
    # Learned MACs reach the NSDB (through the writer's queue).
    macs = cloud.admin.state_get(tables.mac_table(br.id))
    assert macs[tables.mac_key(0, "02:00:00:00:00:01")] == vm1.port_id
    assert macs[tables.mac_key(0, "02:00:00:00:00:02")] == vm2.port_id


def test_after_the_first_packet_the_flow_forwards_without_a_miss(cloud: Cloud) -> None:
    h = cloud.host("h1", "198.18.0.1")
    br = cloud.bridge()
    vm1 = cloud.vm(h, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(h, br, "tap2", "02:00:00:00:00:02", "10.0.0.2")
    cloud.settle()
    cloud.send(vm2, vm2.frame(vm1))  # learn vm2
    cloud.send(vm1, vm1.frame(vm2))
    misses = h.agent.metrics.misses._value.get()
    for sport in (1000, 1001, 1002):  # other L4 ports: the megaflow did not read them
        cloud.send(vm1, vm1.frame(vm2, sport=sport))
        assert len(cloud.received(vm2)) == 1
    assert h.agent.metrics.misses._value.get() == misses
    flow = h.agent.flows.lookup(packet_key(h.number(vm1.port_id), vm1.frame(vm2)))
    assert flow is not None
    assert flow.flow.actions == (Output(h.number(vm2.port_id)),)
    stats = h.dp.stats(flow.match)
    assert stats is not None and stats.packets == 4  # the first packet was reinjected
    assert {br.id, vm1.port_id, vm2.port_id} <= flow.tags


def test_two_hosts_reach_each_other_through_the_tunnel(cloud: Cloud) -> None:
    a = cloud.host("a", "198.18.0.1")
    b = cloud.host("b", "198.18.0.2")
    br = cloud.bridge()
    vm1 = cloud.vm(a, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(b, br, "tap1", "02:00:00:00:00:02", "10.0.0.2")
    cloud.settle()
    cloud.send(vm1, vm1.arp_request(vm2.ip))
    assert len(cloud.received(vm2)) == 1
    tunnel = [s for s in a.dp.sent if s.vni is not None]
    assert [(s.vni, s.remote_ip) for s in tunnel] == [
        (b.agent.cache.get("ports", vm2.port_id).tunnel_key, ip_from_str("198.18.0.2"))
    ]
    cloud.send(vm2, vm2.arp_reply(vm1.mac, vm1.ip))
    assert len(cloud.received(vm1)) == 1
    # b learned vm2 and told the NSDB; a sees it: unicast now, no flood.
    cloud.send(vm1, vm1.frame(vm2))
    flow = a.agent.flows.lookup(packet_key(a.number(vm1.port_id), vm1.frame(vm2)))
    assert (
        flow is not None
        and len(flow.flow.actions) == 1
        and isinstance(flow.flow.actions[0], OutputTunnel)
    )
    assert len(cloud.received(vm2)) == 1


def test_bridges_are_isolated(cloud: Cloud) -> None:
    h = cloud.host("h1", "198.18.0.1")
    red, blue = cloud.bridge("red"), cloud.bridge("blue")
    vm1 = cloud.vm(h, red, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(h, blue, "tap2", "02:00:00:00:00:02", "10.0.0.2")
    cloud.settle()
    cloud.send(vm1, vm1.arp_request(vm2.ip))
    cloud.send(vm1, vm1.frame(vm2))
    assert cloud.received(vm2) == []


def _routed(cloud: Cloud):  # type: ignore[no-untyped-def]
    h = cloud.host("h1", "198.18.0.1")
    h2 = cloud.host("h2", "198.18.0.2")
    left, right = cloud.bridge("left"), cloud.bridge("right")
    rt = cloud.router()
    rp1 = cloud.router_port(rt, "10.0.1.1/24", "02:7e:00:00:00:01")
    rp2 = cloud.router_port(rt, "10.0.2.1/24", "02:7e:00:00:00:02")
    for rp, br in ((rp1, left), (rp2, right)):
        bp = cloud.bridge_port(br)
        cloud.topo.link(rp.id, bp.id)
    for rp, net in ((rp1, "10.0.1.0"), (rp2, "10.0.2.0")):
        cloud.topo.create(
            Route(router_id=rt.id, dst_network_addr=net, dst_network_length=24, next_hop_port=rp.id)
        )
    vm1 = cloud.vm(h, left, "tap1", "02:00:00:00:01:01", "10.0.1.2")
    vm2 = cloud.vm(h2, right, "tap1", "02:00:00:00:02:02", "10.0.2.2")
    cloud.settle()
    return h, h2, rt, vm1, vm2


def test_the_router_answers_arp_and_ping_on_its_port_address(cloud: Cloud) -> None:
    _h, _h2, _rt, vm1, _vm2 = _routed(cloud)
    gw_ip, gw_mac = ip_from_str("10.0.1.1"), mac_from_str("02:7e:00:00:00:01")
    cloud.send(vm1, vm1.arp_request(gw_ip))
    (reply,) = cloud.received(vm1)
    arp = Ethernet.parse(reply).payload
    assert arp.op == 2 and arp.sender_ip == gw_ip and arp.sender_mac == gw_mac  # type: ignore[union-attr]
    cloud.send(vm1, vm1.ping_to(gw_mac, gw_ip))
    (echo,) = cloud.received(vm1)
    ip = Ethernet.parse(echo).payload
    assert isinstance(ip, IPv4) and isinstance(ip.payload, Icmp) and ip.payload.type == 0


def test_routing_across_hosts_holds_for_arp_then_forwards_with_ttl_decremented(
    cloud: Cloud,
) -> None:
    _h, h2, _rt, vm1, vm2 = _routed(cloud)
    gw_mac = mac_from_str("02:7e:00:00:00:01")
    cloud.send(vm1, vm1.udp_to(gw_mac, vm2.ip, ttl=10))
    # Held: the router asks for vm2's MAC first, nothing reaches vm2 but the request.
    (request,) = cloud.received(vm2)
    arp = Ethernet.parse(request).payload
    assert Ethernet.parse(request).dst == BROADCAST and arp.target_ip == vm2.ip  # type: ignore[union-attr]
    cloud.send(vm2, vm2.arp_reply(mac_from_str("02:7e:00:00:00:02"), ip_from_str("10.0.2.1")))
    # The held packet left with the reply's arrival (delivered in that same settle).
    delivered = [f for f in h2.dp.sent if f.port == h2.number(vm2.port_id)]
    assert len(delivered) == 1
    eth = Ethernet.parse(delivered[0].frame)
    assert isinstance(eth.payload, IPv4)
    assert eth.src == mac_from_str("02:7e:00:00:00:02") and eth.dst == vm2.mac
    assert eth.payload.ttl == 9
    # Later packets use the installed flow.
    cloud.send(vm1, vm1.udp_to(gw_mac, vm2.ip, ttl=10, sport=1000))
    assert len(cloud.received(vm2)) == 1


def test_ttl_one_through_a_router_gets_time_exceeded(cloud: Cloud) -> None:
    _h, _h2, _rt, vm1, vm2 = _routed(cloud)
    gw_mac = mac_from_str("02:7e:00:00:00:01")
    cloud.send(vm1, vm1.udp_to(gw_mac, vm2.ip, ttl=1))
    (error,) = cloud.received(vm1)
    ip = Ethernet.parse(error).payload
    assert isinstance(ip, IPv4) and isinstance(ip.payload, Icmp)
    assert ip.payload.type == 11 and ip.src == ip_from_str("10.0.1.1")


def test_an_unanswered_arp_ends_in_host_unreachable(cloud: Cloud) -> None:
    _h, _h2, _rt, vm1, _vm2 = _routed(cloud)
    gw_mac = mac_from_str("02:7e:00:00:00:01")
    cloud.send(vm1, vm1.udp_to(gw_mac, ip_from_str("10.0.2.99")))
    assert cloud.received(vm1) == []
    for _ in range(20):
        cloud.tick(0.25)
    errors = [
        Ethernet.parse(s.frame).payload
        for s in vm1.host.dp.sent
        if s.port == vm1.host.number(vm1.port_id)
    ]
    assert any(isinstance(ip, IPv4) and isinstance(ip.payload, Icmp) and ip.payload.type == 3
               for ip in errors)  # fmt: skip


def test_ttl_one_on_an_installed_flow_gets_time_exceeded_and_the_flow_stays(
    cloud: Cloud,
) -> None:
    _h, h2, _rt, vm1, vm2 = _routed(cloud)
    gw_mac = mac_from_str("02:7e:00:00:00:01")
    cloud.send(vm1, vm1.udp_to(gw_mac, vm2.ip))
    cloud.send(vm2, vm2.arp_reply(mac_from_str("02:7e:00:00:00:02"), ip_from_str("10.0.2.1")))
    cloud.send(vm1, vm1.udp_to(gw_mac, vm2.ip, ttl=30))
    assert len(cloud.received(vm2)) == 1
    flows = vm1.host.flows()
    # The flow does not split by TTL: its kernel TTL check sends this one up.
    cloud.send(vm1, vm1.udp_to(gw_mac, vm2.ip, ttl=1))
    (error,) = cloud.received(vm1)
    ip = Ethernet.parse(error).payload
    assert isinstance(ip, IPv4) and isinstance(ip.payload, Icmp) and ip.payload.type == 11
    assert cloud.received(vm2) == []
    assert vm1.host.flows() == flows
    cloud.send(vm1, vm1.udp_to(gw_mac, vm2.ip, ttl=30))
    assert len(cloud.received(vm2)) == 1
    assert h2 is vm2.host
