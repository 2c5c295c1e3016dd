"""Issue 11's router behaviours: learning from ARP requests that reach it through a
bridge, ignoring ARP from outside a port's network, "administratively prohibited" from a
router or router port that is down, and routed flows keyed on "TTL above the hops"
instead of the exact TTL."""

from __future__ import annotations

from sim_topo import NOW, Topo, arp_rep, arp_req, ip, mac, parse, ping, tcp
from test_sim_router import GW1, GW2, _icmp_of, two_subnets

from tessera.packet import Arp, Field, IPv4, icmp, mac_from_str
from tessera.simulation import ArpLearned, EmittedPacket, ExpiryClass, Output, Verdict
from tessera.simulation.arp import ARP_LIFETIME

# -- ARP: learning from requests, and only from the port's network ----------------------


def test_a_vm_asking_for_its_gateway_is_learned_and_then_reached_without_arp() -> None:
    n = two_subnets()
    res = n.t.send(n.vm2, arp_req(mac(2), "10.0.2.5", "10.0.2.1"))
    assert res.verdict is Verdict.CONSUMED
    (reply,) = res.emitted
    assert reply.port_id == n.vm2.id and reply.kind == "arp_reply"
    answer = parse(reply.frame).payload
    assert isinstance(answer, Arp) and answer.sender_mac == GW2 and answer.target_mac == mac(2)
    learned = ArpLearned(n.router.id, ip("10.0.2.5"), mac(2), NOW + ARP_LIFETIME)
    assert learned in res.state_updates
    # The agent writes it; then the router reaches the VM without an ARP of its own.
    n.t.learn_arp(n.router, "10.0.2.5", mac(2), learned.expiry)
    res = n.t.send(n.vm1, tcp(mac(1), GW1, "10.0.1.5", "10.0.2.5"))
    assert res.verdict is Verdict.FORWARD and res.emitted == ()
    assert res.outputs == (Output(n.vm2.id, eth_src=GW2, eth_dst=mac(2), ttl_dec=1),)


def test_arp_request_from_outside_the_port_network_is_neither_answered_nor_learned() -> None:
    n = two_subnets()
    res = n.t.send(n.vm2, arp_req(mac(2), "10.0.1.5", "10.0.2.1"))
    assert res.emitted == ()
    assert not any(isinstance(u, ArpLearned) for u in res.state_updates)
    assert res.verdict is Verdict.DROP and "outside the port's network" in (res.drop_reason or "")


def test_arp_reply_from_outside_the_port_network_teaches_nothing() -> None:
    t = Topo()
    r = t.router()
    uplink = t.router_port(r, "192.0.2.1/24", "02:aa:00:00:00:09")
    me = mac_from_str("02:aa:00:00:00:09")
    res = t.send(uplink, arp_rep(mac(1), "198.51.100.7", me, "192.0.2.1"))
    assert res.verdict is Verdict.DROP and res.state_updates == ()


def test_router_arp_records_every_field_it_decides_on() -> None:
    """Issue 11's counterexample: sender = target = the port's address is learned (a
    gratuitous request), the same request from another network is dropped, so the
    sender address must be in the mask (and the result is never cached anyway: the
    answer carries the asker's MAC from the ARP body)."""
    t = Topo()
    r = t.router()
    port = t.router_port(r, "10.0.0.1/24", "02:aa:00:00:00:01")
    t.route(r, "10.0.0.0/24", port)
    same = t.send(port, arp_req(mac(1), "10.0.0.1", "10.0.0.1"))
    other = t.send(port, arp_req(mac(1), "10.0.1.5", "10.0.0.1"))
    assert same.verdict is Verdict.CONSUMED and other.verdict is Verdict.DROP
    for res in (same, other):
        needed = Field.ETH_DST | Field.ETH_TYPE | Field.IP_PROTO | Field.IP_SRC
        assert res.match.mask & needed == needed
        assert res.expiry is ExpiryClass.UNCACHED
    assert same.match.mask & Field.IP_DST


def test_a_bridge_answers_for_its_dhcp_hosts_but_sends_router_arp_to_the_router() -> None:
    """A DHCP server address is still answered by the bridge, without learning."""
    t = Topo()
    br = t.bridge()
    vm = t.bridge_port(br)
    rt = t.router()
    rp = t.router_port(rt, "10.0.0.1/24", "02:aa:00:00:00:01")
    t.link(t.bridge_port(br), rp)
    host = {"mac_addr": "02:00:00:00:00:07", "ip_addr": "10.0.0.7"}
    t.dhcp_subnet(br, "10.0.0.0/24", hosts=[host])
    res = t.send(vm, arp_req(mac(1), "10.0.0.5", "10.0.0.7"))
    assert res.verdict is Verdict.CONSUMED
    assert not any(isinstance(u, ArpLearned) for u in res.state_updates)


# -- administratively prohibited -----------------------------------------------------------


def _prohibited_from(res_emitted: tuple[EmittedPacket, ...], port_id: str, source: str) -> None:
    (error,) = res_emitted
    assert error.port_id == port_id and error.kind == "icmp_error"
    message = _icmp_of(error.frame)
    assert (message.type, message.code) == (icmp.DEST_UNREACHABLE, icmp.ADMIN_PROHIBITED)
    packet = parse(error.frame).payload
    assert isinstance(packet, IPv4) and packet.src == ip(source)


def test_a_down_router_answers_administratively_prohibited_from_the_ingress_port() -> None:
    n = two_subnets()
    n.t.set(n.router, admin_state_up=False)
    res = n.t.send(n.vm1, ping(mac(1), GW1, "10.0.1.5", "10.0.2.5"))
    assert res.verdict is Verdict.DROP
    _prohibited_from(res.emitted, n.vm1.id, "10.0.1.1")
    # Also for a ping to the router itself; never about a frame not sent to its MAC.
    res = n.t.send(n.vm1, ping(mac(1), GW1, "10.0.1.5", "10.0.1.1"))
    _prohibited_from(res.emitted, n.vm1.id, "10.0.1.1")
    res = n.t.send(n.vm1, tcp(mac(1), mac(9), "10.0.1.5", "10.0.1.9"))
    assert res.emitted == ()


def test_a_down_ingress_router_port_answers_administratively_prohibited() -> None:
    n = two_subnets()
    n.t.learn_arp(n.router, "10.0.2.5", mac(2))
    n.t.set(n.rp1, admin_state_up=False)
    res = n.t.send(n.vm1, ping(mac(1), GW1, "10.0.1.5", "10.0.2.5"))
    assert res.verdict is Verdict.DROP and res.outputs == ()
    _prohibited_from(res.emitted, n.vm1.id, "10.0.1.1")
    # ARP gets nothing from a down port: no ICMP about ARP, no answer.
    res = n.t.send(n.vm1, arp_req(mac(1), "10.0.1.5", "10.0.1.1"))
    assert res.emitted == () and res.state_updates[1:] == ()


def test_a_down_exterior_router_port_answers_from_its_own_address() -> None:
    t = Topo()
    r = t.router()
    uplink = t.router_port(r, "192.0.2.1/24", "02:aa:00:00:00:09", admin_state_up=False)
    res = t.send(uplink, ping(mac(1), mac_from_str("02:aa:00:00:00:09"), "192.0.2.50", "10.9.9.9"))
    _prohibited_from(res.emitted, uplink.id, "192.0.2.1")


def test_a_down_egress_router_port_answers_from_the_ingress_port() -> None:
    n = two_subnets()
    n.t.learn_arp(n.router, "10.0.2.5", mac(2))
    n.t.set(n.rp2, admin_state_up=False)
    res = n.t.send(n.vm1, ping(mac(1), GW1, "10.0.1.5", "10.0.2.5"))
    assert res.verdict is Verdict.DROP and res.outputs == ()
    _prohibited_from(res.emitted, n.vm1.id, "10.0.1.1")


# -- TTL: a bound, not a key ------------------------------------------------------------------


def test_a_routed_flow_is_not_keyed_on_the_exact_ttl() -> None:
    n = two_subnets()
    n.t.learn_arp(n.router, "10.0.2.5", mac(2))
    results = [n.t.send(n.vm1, tcp(mac(1), GW1, "10.0.1.5", "10.0.2.5", ttl=t)) for t in (64, 9)]
    for res in results:
        assert res.verdict is Verdict.FORWARD and res.expiry is ExpiryClass.NORMAL
        assert not res.match.mask & Field.IP_TTL
        assert res.match.ttl_floor == 1
        assert res.outputs[0].ttl_dec == 1  # the datapath's decrement guards the bound
    assert results[0].match.masked_key() == results[1].match.masked_key()


def test_ttl_expired_is_keyed_on_the_exact_ttl() -> None:
    n = two_subnets()
    n.t.learn_arp(n.router, "10.0.2.5", mac(2))
    res = n.t.send(n.vm1, tcp(mac(1), GW1, "10.0.1.5", "10.0.2.5", ttl=1))
    assert res.match.mask & Field.IP_TTL and res.match.ttl_floor == 0


def test_two_routers_need_a_ttl_above_two() -> None:
    t = Topo()
    r1, r2 = t.router("r1"), t.router("r2")
    ext = t.router_port(r1, "192.0.2.1/24", "02:aa:00:00:00:10")
    a = t.router_port(r1, "10.255.0.1/30", "02:aa:00:00:00:11")
    b = t.router_port(r2, "10.255.0.2/30", "02:aa:00:00:00:12")
    out = t.router_port(r2, "10.9.0.1/24", "02:aa:00:00:00:13")
    t.link(a, b)
    t.route(r1, "10.9.0.0/24", a, gw="10.255.0.2")
    t.route(r2, "10.9.0.0/24", out)
    t.learn_arp(r2, "10.9.0.5", mac(5))
    frame = tcp(mac(1), mac_from_str("02:aa:00:00:00:10"), "192.0.2.50", "10.9.0.5", ttl=3)
    res = t.send(ext, frame)
    assert res.outputs[0].ttl_dec == 2
    assert not res.match.mask & Field.IP_TTL and res.match.ttl_floor == 2


def test_a_drop_after_the_ttl_check_is_keyed_on_the_ttl() -> None:
    """No output, so no decrement would send a low TTL to the agent: key the TTL."""
    n = two_subnets()
    n.t.route(n.router, "8.8.0.0/16", None, type="BlackHole")
    res = n.t.send(n.vm1, tcp(mac(1), GW1, "10.0.1.5", "8.8.8.8"))
    assert res.verdict is Verdict.DROP and res.expiry is ExpiryClass.ERROR
    assert res.match.mask & Field.IP_TTL
