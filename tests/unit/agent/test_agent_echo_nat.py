"""ICMP echo through the agent, with fake datapaths executing the installed flows: pings
through dynamic SNAT, a floating IP and a conntrack firewall are keyed by their echo id,
so after the first packet (each direction) the datapath forwards them with no miss; and
two VMs on different hosts pinging one external address with one id through one SNAT
address both get their replies (SNAT gives each echo its own id)."""

from __future__ import annotations

import time

from agent_harness import Cloud, Host, Vm
from test_agent_stateful import (
    GW_MAC,
    SNAT_TARGET,
    UPLINK_MAC,
    Edge,
    _free_udp_port,
    _snat_edge,
    chain,
)

from tessera.model import Bridge, Port
from tessera.packet import ETH_TYPE_IPV4, Ethernet, Icmp, IPv4
from tessera.packet.addr import ip_from_str, ip_to_str, mac_from_str
from tessera.simulation.flowstate import ConnKey

ECHO_REQUEST, ECHO_REPLY = 8, 0


def echo(src: Vm, dst_mac: int | str, dst_ip: str, ident: int, kind: int = ECHO_REQUEST,
         seq: int = 1) -> bytes:  # fmt: skip
    mac = mac_from_str(dst_mac) if isinstance(dst_mac, str) else dst_mac
    packet = IPv4(src.ip, ip_from_str(dst_ip), 1, Icmp(kind, 0, ident, seq, b"ping"))
    return Ethernet(mac, src.mac, ETH_TYPE_IPV4, packet).build()


def echo_of(frame: bytes) -> tuple[str, str, int, int, int]:
    """(src ip, dst ip, type, id, seq) of a delivered echo."""
    ip = Ethernet.parse(frame).payload
    assert isinstance(ip, IPv4) and isinstance(ip.payload, Icmp)
    icmp = ip.payload
    assert icmp.build()[2:4] == icmp.checksum.to_bytes(2, "big"), "bad ICMP checksum"
    return ip_to_str(ip.src), ip_to_str(ip.dst), icmp.type, icmp.ident, icmp.seq


def misses(h: Host) -> float:
    return h.agent.metrics.registry.get_sample_value("tessera_agent_misses_total") or 0.0


def answer(cloud: Cloud, ext: Vm, request: bytes) -> None:
    """The external VM answers a delivered echo request (see `cloud.received`)."""
    src, dst, _type, ident, seq = echo_of(request)
    reply = IPv4(ip_from_str(dst), ip_from_str(src), 1, Icmp(ECHO_REPLY, 0, ident, seq, b"ping"))
    cloud.send(ext, Ethernet(mac_from_str(UPLINK_MAC), ext.mac, ETH_TYPE_IPV4, reply).build())


def _first_out(e: Edge, frame: bytes) -> bytes:
    """Send from the VM; answer the router's ARP for the external VM if it asks."""
    c = e.cloud
    c.send(e.vm, frame)
    got = [f for f in c.received(e.ext) if Ethernet.parse(f).dst != 0xFFFF_FFFF_FFFF]
    if not got:
        c.send(e.ext, e.ext.arp_reply(mac_from_str(UPLINK_MAC), ip_from_str("203.0.113.1")))
        c.send(e.vm, frame)
        got = c.received(e.ext)
    (out,) = got
    return out


def test_a_ping_through_snat_runs_on_datapath_flows_after_its_first_packets(
    cloud: Cloud,
) -> None:
    e = _snat_edge(cloud)
    out = _first_out(e, echo(e.vm, GW_MAC, "203.0.113.9", 7))
    src, dst, kind, new_id, seq = echo_of(out)
    assert (src, dst, kind, seq) == ("203.0.113.1", "203.0.113.9", ECHO_REQUEST, 1)
    assert 20000 <= new_id <= 20127  # from the leased block, not the VM's id
    answer(cloud, e.ext, out)
    (back,) = cloud.received(e.vm)
    assert echo_of(back) == ("203.0.113.9", "10.0.0.5", ECHO_REPLY, 7, 1)
    # Both directions are cached, keyed by the echo id: no more misses.
    before = misses(e.h)
    for seq in (2, 3, 4):
        cloud.send(e.vm, echo(e.vm, GW_MAC, "203.0.113.9", 7, seq=seq))
        (request,) = cloud.received(e.ext)
        assert echo_of(request) == ("203.0.113.1", "203.0.113.9", ECHO_REQUEST, new_id, seq)
        answer(cloud, e.ext, request)
        assert [echo_of(f) for f in cloud.received(e.vm)] == [
            ("203.0.113.9", "10.0.0.5", ECHO_REPLY, 7, seq)
        ]
    assert misses(e.h) == before
    # Another id is another connection: a new binding and its own flows.
    cloud.send(e.vm, echo(e.vm, GW_MAC, "203.0.113.9", 8))
    (other,) = cloud.received(e.ext)
    assert echo_of(other)[3] not in (7, 8, new_id) and misses(e.h) == before + 1


def test_a_ping_to_a_floating_ip_runs_on_datapath_flows(cloud: Cloud) -> None:
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
    ping = echo(e.ext, UPLINK_MAC, fip, 0x4242)
    cloud.send(e.ext, ping)
    (inbound,) = cloud.received(e.vm)
    assert echo_of(inbound) == ("203.0.113.9", "10.0.0.5", ECHO_REQUEST, 0x4242, 1)
    before = misses(e.h)
    cloud.send(e.ext, ping)
    assert len(cloud.received(e.vm)) == 1 and misses(e.h) == before


def test_a_conntrack_firewall_lets_echo_replies_in_from_datapath_flows(cloud: Cloud) -> None:
    h = cloud.host("h1", "198.18.0.1")
    br = cloud.bridge()
    a = cloud.vm(h, br, "tap-a", "02:00:00:00:00:0a", "10.0.0.10")
    b = cloud.vm(h, br, "tap-b", "02:00:00:00:00:0b", "10.0.0.11")
    from_b = chain(cloud, "from b", {"type": "accept", "match_forward_flow": True})
    to_b = chain(cloud, "to b", {"type": "accept", "match_return_flow": True}, {"type": "drop"})
    cloud.topo.update(
        Port, b.port_id, {"inbound_filter_id": from_b.id, "outbound_filter_id": to_b.id}
    )
    cloud.settle()
    cloud.send(a, echo(a, b.mac, "10.0.0.11", 5))  # A may not ping B
    assert cloud.received(b) == []
    cloud.send(b, echo(b, a.mac, "10.0.0.10", 9))
    assert len(cloud.received(a)) == 1
    assert ConnKey(1, b.ip, a.ip, 9, 9, br.id) in h.agent.flowstate.view.conntrack
    reply = echo(a, b.mac, "10.0.0.11", 9, ECHO_REPLY)
    cloud.send(a, reply)
    assert len(cloud.received(b)) == 1
    before = misses(h)
    for _ in range(3):
        cloud.send(b, echo(b, a.mac, "10.0.0.10", 9))
        cloud.send(a, reply)
        assert len(cloud.received(b)) == 1
    assert misses(h) == before
    # A reply with another id belongs to no connection: still dropped.
    cloud.send(a, echo(a, b.mac, "10.0.0.11", 10, ECHO_REPLY))
    assert cloud.received(b) == []


def test_two_vms_on_two_hosts_ping_one_address_with_one_id_through_one_snat_address(
    cloud: Cloud,
) -> None:
    """Before, an echo kept its id through SNAT: two agents could not both bind
    (address, id), and the second VM's pings were dropped as exhausted."""
    port = _free_udp_port()
    h1 = cloud.host("h1", "127.0.0.41", flowstate_port=port)
    h2 = cloud.host("h2", "127.0.0.42", flowstate_port=port)
    e = Edge(cloud, h1, h1)  # the VM and the uplink (external VM) on h1
    e.filters(
        pre=[{"type": "rev_snat", "in_ports": [e.uplink.id]}],
        post=[{"type": "snat", "out_ports": [e.uplink.id], "nw_src_address": "10.0.0.0",
               "nw_src_length": 24, "nat_targets": SNAT_TARGET}],
    )  # fmt: skip
    e.resolve()
    bridge_id = cloud.topo.get(Port, e.vm.port_id).device_id
    vm2 = cloud.vm(h2, cloud.topo.get(Bridge, bridge_id), "tap-vm2", "02:00:00:00:00:06",
                   "10.0.0.6")  # fmt: skip
    cloud.settle()
    cloud.send(vm2, vm2.arp_reply(mac_from_str(GW_MAC), ip_from_str("10.0.0.1")))
    out1 = _first_out(e, echo(e.vm, GW_MAC, "203.0.113.9", 7))
    cloud.send(vm2, echo(vm2, GW_MAC, "203.0.113.9", 7))
    (out2,) = cloud.received(e.ext)
    ids = (echo_of(out1)[3], echo_of(out2)[3])
    assert echo_of(out1)[0] == echo_of(out2)[0] == "203.0.113.1"
    assert ids[0] != ids[1] and all(20000 <= i <= 20127 for i in ids)
    # h2's binding reaches h1 (where the replies enter) before its packet left.
    deadline = time.monotonic() + 5
    while len(h1.agent.flowstate.table) < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    h1.agent.run_once(0)
    answer(cloud, e.ext, out1)
    assert [echo_of(f)[1:4] for f in cloud.received(e.vm)] == [("10.0.0.5", ECHO_REPLY, 7)]
    assert cloud.received(vm2) == []
    answer(cloud, e.ext, out2)
    assert [echo_of(f)[1:4] for f in cloud.received(vm2)] == [("10.0.0.6", ECHO_REPLY, 7)]
    assert cloud.received(e.vm) == []
