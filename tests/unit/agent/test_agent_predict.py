"""Predicted reply flows (`tessera.agent.predict`): a new connection whose reply enters
on this host gets the reply's flow with its forward flow, so its first reply is
forwarded by the datapath (no second miss) and translated exactly as a miss would have
done; replies that are not safely predictable miss as before."""

from __future__ import annotations

from typing import Any

import pytest
from agent_harness import Cloud, Host, Vm
from test_agent_stateful import (
    GW_MAC,
    SNAT_TARGET,
    UPLINK_MAC,
    Edge,
    _through_arp,
    chain,
    udp,
    udp_of,
)

from tessera.agent.predict import asks_reply, reply_frame
from tessera.model import Port
from tessera.packet import ETH_TYPE_IPV4, Ethernet, Icmp, IPv4, Tcp
from tessera.packet.addr import ip_from_str, ip_to_str, mac_from_str
from tessera.simulation.flowstate import ConnKey


def misses(h: Host) -> float:
    return h.agent.metrics.registry.get_sample_value("tessera_agent_misses_total") or 0.0


def predictions(h: Host, result: str) -> float:
    value = h.agent.metrics.registry.get_sample_value(
        "tessera_agent_reply_predictions_total", {"result": result}
    )
    return value or 0.0


def tcp(src: Vm, dst_mac: int, dst_ip: int, sport: int, dport: int, flags: int) -> bytes:
    packet = IPv4(src.ip, dst_ip, 6, Tcp(sport, dport, seq=7, flags=flags))
    return Ethernet(dst_mac, src.mac, ETH_TYPE_IPV4, packet).build()


def tcp_of(frame: bytes) -> tuple[str, int, str, int, int]:
    ip = Ethernet.parse(frame).payload
    assert isinstance(ip, IPv4) and isinstance(ip.payload, Tcp)
    t = ip.payload
    return ip_to_str(ip.src), t.src_port, ip_to_str(ip.dst), t.dst_port, t.flags


def firewalled(cloud: Cloud, h: Host) -> tuple[Vm, Vm]:
    """Client c and server s on one bridge on `h`; c's port tracks what c starts and lets
    only the replies back in. s has spoken (an ARP request), so the bridge knows it."""
    br = cloud.bridge()
    c = cloud.vm(h, br, "tap-c", "02:00:00:00:00:0c", "10.0.0.12")
    s = cloud.vm(h, br, "tap-s", "02:00:00:00:00:0d", "10.0.0.13")
    out = chain(cloud, "from c", {"type": "accept", "match_forward_flow": True})
    back = chain(cloud, "to c", {"type": "accept", "match_return_flow": True}, {"type": "drop"})
    cloud.topo.update(Port, c.port_id, {"inbound_filter_id": out.id, "outbound_filter_id": back.id})
    cloud.settle()
    cloud.send(s, s.arp_request(c.ip))
    cloud.received(c)
    return c, s


SYN, SYN_ACK, ACK = 0x02, 0x12, 0x10


def test_a_tcp_connection_through_a_conntrack_firewall_misses_once(cloud: Cloud) -> None:
    h = cloud.host("h1", "198.18.0.1")
    c, s = firewalled(cloud, h)
    br_id = cloud.topo.get(Port, c.port_id).device_id
    before = misses(h)
    cloud.send(c, tcp(c, s.mac, s.ip, 40000, 80, SYN))
    (syn,) = cloud.received(s)
    assert tcp_of(syn) == ("10.0.0.12", 40000, "10.0.0.13", 80, SYN)
    assert misses(h) == before + 1 and predictions(h, "installed") == 1
    # The SYN-ACK, and the ACKs after it, run on the predicted flow: no second miss.
    for flags in (SYN_ACK, ACK):
        cloud.send(s, tcp(s, c.mac, c.ip, 80, 40000, flags))
        assert [tcp_of(f) for f in cloud.received(c)] == [
            ("10.0.0.13", 80, "10.0.0.12", 40000, flags)
        ]
    assert misses(h) == before + 1
    # The datapath tracks the connection (its replies are replies there), and the agent
    # holds it too, alive while the datapath uses it.
    key = ConnKey(6, c.ip, s.ip, 40000, 80, br_id)
    fs = h.agent.flowstate
    zone = h.agent.kernel_ct.zone(br_id)
    assert (zone, 6, c.ip, s.ip, 40000, 80) in h.dp.ct_entries()
    assert fs.table.lookup(key) is not None
    # It was decided on the datapath's answer: a new connection from s is still dropped.
    cloud.send(s, tcp(s, c.mac, c.ip, 81, 40001, SYN))
    assert cloud.received(c) == []
    # And the flows serve c's next connections whole: no miss at all.
    before = misses(h)
    cloud.send(c, tcp(c, s.mac, s.ip, 40002, 80, SYN))
    assert len(cloud.received(s)) == 1
    cloud.send(s, tcp(s, c.mac, c.ip, 80, 40002, SYN_ACK))
    assert len(cloud.received(c)) == 1
    assert misses(h) == before


def test_a_udp_reply_and_a_ping_reply_are_predicted(cloud: Cloud) -> None:
    h = cloud.host("h1", "198.18.0.1")
    c, s = firewalled(cloud, h)
    start = misses(h)
    for frame in (udp(c, s.mac, s.ip, 40000, 53), c.ping_to(s.mac, s.ip)):
        cloud.send(c, frame)
        assert len(cloud.received(s)) == 1
    # The flows of the UDP exchange are keyed on the datapath's answer ("new from c",
    # "a reply"), not on the ports: the ping rides on them, its reply too.
    assert predictions(h, "installed") == 1 and misses(h) == start + 1
    before = misses(h)
    echo_reply = IPv4(s.ip, c.ip, 1, Icmp(0, 0, 7, 1, b"ping"))
    for frame in (udp(s, c.mac, c.ip, 53, 40000),
                  Ethernet(c.mac, s.mac, ETH_TYPE_IPV4, echo_reply).build()):  # fmt: skip
        cloud.send(s, frame)
        assert len(cloud.received(c)) == 1
    assert misses(h) == before


def plain(cloud: Cloud, h: Host) -> tuple[Vm, Vm]:
    """Client c and server s on one bridge on `h`, no filter at all; s has spoken."""
    br = cloud.bridge()
    c = cloud.vm(h, br, "tap-c", "02:00:00:00:00:0c", "10.0.0.12")
    s = cloud.vm(h, br, "tap-s", "02:00:00:00:00:0d", "10.0.0.13")
    cloud.settle()
    cloud.send(s, s.arp_request(c.ip))
    cloud.received(c)
    return c, s


def all_predictions(h: Host) -> float:
    results = ("installed", "remote", "unsupported", "covered", "unclean", "not_loaded")
    return sum(predictions(h, r) for r in (*results, "error"))


@pytest.mark.parametrize("kind", ["ping", "syn"])
def test_without_connection_state_a_ping_or_a_syn_still_misses_once(
    cloud: Cloud, kind: str
) -> None:
    """No firewall, no state: the echo request or SYN asks for a reply all the same,
    and that reply rides on the predicted flow."""
    h = cloud.host("h1", "198.18.0.1")
    c, s = plain(cloud, h)
    before = misses(h)
    if kind == "ping":
        out = c.ping_to(s.mac, s.ip)
        back = Ethernet(c.mac, s.mac, ETH_TYPE_IPV4,
                        IPv4(s.ip, c.ip, 1, Icmp(0, 0, 7, 1, b"ping"))).build()  # fmt: skip
    else:
        out = tcp(c, s.mac, s.ip, 40000, 80, SYN)
        back = tcp(s, c.mac, c.ip, 80, 40000, SYN_ACK)
    cloud.send(c, out)
    assert len(cloud.received(s)) == 1
    assert predictions(h, "installed") == 1 and misses(h) == before + 1
    cloud.send(s, back)
    assert cloud.received(c) == [back]
    assert misses(h) == before + 1


def test_without_connection_state_udp_and_replies_are_not_predicted(cloud: Cloud) -> None:
    """A stateless UDP packet may well be one way (a stream, a flood), and a SYN-ACK or
    an echo reply is itself the answer: no prediction is even tried."""
    h = cloud.host("h1", "198.18.0.1")
    c, s = plain(cloud, h)
    echo_reply = IPv4(c.ip, s.ip, 1, Icmp(0, 0, 7, 1, b"pong"))
    for frame in (
        udp(c, s.mac, s.ip, 40000, 53),
        tcp(c, s.mac, s.ip, 40000, 80, SYN_ACK),
        Ethernet(s.mac, c.mac, ETH_TYPE_IPV4, echo_reply).build(),
    ):
        cloud.send(c, frame)
        assert len(cloud.received(s)) == 1
    assert all_predictions(h) == 0
    before = misses(h)
    cloud.send(s, udp(s, c.mac, c.ip, 53, 40000))
    assert len(cloud.received(c)) == 1
    assert misses(h) == before + 1


def test_the_predicted_reply_of_dynamic_snat_is_translated_back(cloud: Cloud) -> None:
    e = Edge(cloud)  # the VM and the "external" VM on one host
    e.filters(
        pre=[{"type": "rev_snat", "in_ports": [e.uplink.id]}],
        post=[{"type": "snat", "out_ports": [e.uplink.id], "nw_src_address": "10.0.0.0",
               "nw_src_length": 24, "nat_targets": SNAT_TARGET}],
    )  # fmt: skip
    e.resolve()
    (first,) = _through_arp(e, e.out(40000))
    src, sport, _dst, _dport = udp_of(first)
    assert src == "203.0.113.1" and predictions(e.h, "installed") == 1
    before = misses(e.h)
    cloud.send(e.ext, e.to_public("203.0.113.1", sport))
    (back,) = cloud.received(e.vm)
    assert udp_of(back) == ("203.0.113.9", 53, "10.0.0.5", 40000)
    frame = Ethernet.parse(back)
    assert (frame.src, frame.dst) == (mac_from_str(GW_MAC), e.vm.mac)
    assert misses(e.h) == before
    # Another public port of the same address is not the connection's: dropped.
    cloud.send(e.ext, e.to_public("203.0.113.1", 20127 if sport != 20127 else 20126))
    assert cloud.received(e.vm) == []


def test_the_predicted_reply_of_a_port_forward_is_reverse_translated(cloud: Cloud) -> None:
    """DNAT 203.0.113.1:8080 to the VM's port 80 (a stateful translation: a floating IP
    is stateless, each way its own forward flow): the VM's first reply leaves from the
    public address and port without missing."""
    e = Edge(cloud)
    e.filters(
        pre=[{"type": "dnat", "in_ports": [e.uplink.id], "nw_dst_address": "203.0.113.1",
              "nw_dst_length": 32, "tp_dst": {"start": 8080, "end": 8080},
              "fragment_policy": "header",
              "nat_targets": [{"address_from": "10.0.0.5", "address_to": "10.0.0.5",
                               "port_from": 80, "port_to": 80}]}],
        post=[{"type": "rev_dnat", "out_ports": [e.uplink.id]}],
    )  # fmt: skip
    e.resolve()
    cloud.send(e.ext, e.to_public("203.0.113.1", 8080, sport=5555))
    (inbound,) = cloud.received(e.vm)
    assert udp_of(inbound) == ("203.0.113.9", 5555, "10.0.0.5", 80)
    assert predictions(e.h, "installed") == 1
    before = misses(e.h)
    cloud.send(e.vm, udp(e.vm, mac_from_str(GW_MAC), e.ext.ip, 80, 5555))
    (out,) = cloud.received(e.ext)
    assert udp_of(out) == ("203.0.113.1", 8080, "203.0.113.9", 5555)
    frame = Ethernet.parse(out)
    assert (frame.src, frame.dst) == (mac_from_str(UPLINK_MAC), e.ext.mac)
    assert misses(e.h) == before


def test_a_reply_entering_on_another_host_is_not_predicted_here(cloud: Cloud) -> None:
    h1 = cloud.host("h1", "198.18.0.1")
    h2 = cloud.host("h2", "198.18.0.2")
    br = cloud.bridge()
    c = cloud.vm(h1, br, "tap-c", "02:00:00:00:00:0c", "10.0.0.12")
    s = cloud.vm(h2, br, "tap-s", "02:00:00:00:00:0d", "10.0.0.13")
    out = chain(cloud, "from c", {"type": "accept", "match_forward_flow": True})
    cloud.topo.update(Port, c.port_id, {"inbound_filter_id": out.id})
    cloud.settle()
    cloud.send(s, s.arp_request(c.ip))
    cloud.received(c)
    cloud.send(c, udp(c, s.mac, s.ip, 40000, 53))
    assert len(cloud.received(s)) == 1
    assert predictions(h1, "remote") == 1 and predictions(h1, "installed") == 0


@pytest.mark.parametrize("why", ["drop", "learn"])
def test_a_reply_whose_simulation_is_not_clean_is_not_predicted(cloud: Cloud, why: str) -> None:
    """drop: the server's port drops what it sends (the prediction would be a drop flow);
    learn: the bridge has never seen the server (the prediction would teach its MAC, a
    fact only a real packet may teach)."""
    h = cloud.host("h1", "198.18.0.1")
    br = cloud.bridge()
    c = cloud.vm(h, br, "tap-c", "02:00:00:00:00:0c", "10.0.0.12")
    s = cloud.vm(h, br, "tap-s", "02:00:00:00:00:0d", "10.0.0.13")
    fields: dict[str, Any] = {
        "inbound_filter_id": chain(cloud, "c", {"type": "accept", "match_forward_flow": True}).id
    }
    cloud.topo.update(Port, c.port_id, fields)
    if why == "drop":
        cloud.topo.update(
            Port, s.port_id, {"inbound_filter_id": chain(cloud, "s", {"type": "drop"}).id}
        )
    cloud.settle()
    cloud.send(c, udp(c, s.mac, s.ip, 40000, 53))
    assert len(cloud.received(s)) == 1
    assert predictions(h, "unclean") == 1 and predictions(h, "installed") == 0
    assert not [m for m in h.flows() if m.in_port == h.number(s.port_id)]
    before = misses(h)
    cloud.send(s, udp(s, c.mac, c.ip, 53, 40000))
    assert misses(h) == before + 1  # the real reply is simulated as before
    assert len(cloud.received(c)) == (0 if why == "drop" else 1)


def test_reply_frame_swaps_addresses_and_keeps_checksums_valid() -> None:
    a = Vm("p", 0x020000000001, ip_from_str("10.0.0.1"), None)  # type: ignore[arg-type]
    frame = tcp(a, 0x020000000002, ip_from_str("10.0.0.2"), 1234, 80, SYN)
    reply = reply_frame(frame)
    assert reply is not None
    eth = Ethernet.parse(reply)
    ip = eth.payload
    assert (eth.src, eth.dst) == (0x020000000002, 0x020000000001)
    assert isinstance(ip, IPv4) and isinstance(ip.payload, Tcp)
    assert (ip_to_str(ip.src), ip.payload.src_port) == ("10.0.0.2", 80)
    packet = IPv4(ip.src, ip.dst, 6, Tcp(80, 1234, seq=7, flags=SYN))
    rebuilt = Ethernet(eth.dst, eth.src, ETH_TYPE_IPV4, packet).build()
    assert rebuilt == reply  # a freshly built (checksummed) packet is byte for byte equal
    ping = a.ping_to(0x020000000002, ip_from_str("10.0.0.2"))
    echo = reply_frame(ping)
    answer = IPv4(ip_from_str("10.0.0.2"), a.ip, 1, Icmp(0, 0, 7, 1, b"ping"))
    expect = Ethernet(0x020000000001, 0x020000000002, ETH_TYPE_IPV4, answer).build()
    assert echo == expect
    assert reply_frame(a.arp_request(ip_from_str("10.0.0.2"))) is None


def test_asks_reply_knows_an_echo_request_and_a_syn_only() -> None:
    a = Vm("p", 0x020000000001, ip_from_str("10.0.0.1"), None)  # type: ignore[arg-type]
    b_mac, b_ip = 0x020000000002, ip_from_str("10.0.0.2")
    assert asks_reply(a.ping_to(b_mac, b_ip))
    assert asks_reply(tcp(a, b_mac, b_ip, 1234, 80, SYN))
    assert not asks_reply(tcp(a, b_mac, b_ip, 1234, 80, SYN_ACK))
    assert not asks_reply(tcp(a, b_mac, b_ip, 1234, 80, ACK))
    assert not asks_reply(udp(a, b_mac, b_ip, 1234, 53))
    assert not asks_reply(a.arp_request(b_ip))
    syn = tcp(a, b_mac, b_ip, 1234, 80, SYN)
    assert not asks_reply(syn[:40])  # cut short inside the TCP header
    fragment = bytearray(syn)
    fragment[20] |= 0x20  # more fragments
    assert not asks_reply(bytes(fragment))
