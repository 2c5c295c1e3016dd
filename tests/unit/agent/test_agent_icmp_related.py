"""ICMP errors about NATed connections through the agent, on fake datapaths: the error
is simulated, translated (outer address and quoted packet) and sent by the agent, also
through a tunnel to another host, and no kernel flow is installed for it; a conntrack
firewall lets it in as related."""

from __future__ import annotations

import time

from agent_harness import Cloud, Vm
from test_agent_stateful import (
    UPLINK_MAC,
    Edge,
    _free_udp_port,
    _snat_edge,
    _through_arp,
    chain,
    udp_of,
)

from tessera.model import Port
from tessera.packet import ETH_TYPE_IPV4, Ethernet, IPv4
from tessera.packet.addr import ip_to_str
from tessera.packet.builders import icmp_error_for
from tessera.packet.checksum import internet_checksum
from tessera.packet.icmp import Icmp, parse_quoted

GW_MAC = "02:7e:00:00:00:01"


def _unreachable(sender: Vm, to_mac: int, about: bytes) -> bytes:
    """`sender`'s port unreachable about the frame `about` it received."""
    packet = Ethernet.parse(about).payload
    assert isinstance(packet, IPv4)
    error = icmp_error_for(packet.build(), 3, 3, sender.ip)
    assert error is not None
    return Ethernet(to_mac, sender.mac, ETH_TYPE_IPV4, error).build()


def _error_of(frame: bytes) -> tuple[str, str, tuple[str, int, str, int]]:
    """(outer src, outer dst, quoted (src, sport, dst, dport)) with checksums checked."""
    raw = frame[14:]
    assert internet_checksum(raw[:20]) == 0 and internet_checksum(raw[20:]) == 0
    ip = Ethernet.parse(frame).payload
    assert isinstance(ip, IPv4) and isinstance(ip.payload, Icmp) and ip.payload.type == 3
    quote = ip.payload.payload
    assert internet_checksum(quote[:20]) == 0
    q = parse_quoted(quote)
    assert q is not None
    inner = (ip_to_str(q.src), q.sport, ip_to_str(q.dst), q.dport)
    return ip_to_str(ip.src), ip_to_str(ip.dst), inner


def _misses(e: Edge) -> float:
    value = e.h.agent.metrics.registry.get_sample_value("tessera_agent_misses_total")
    return value or 0.0


def test_an_error_about_a_snat_connection_reaches_the_firewalled_vm_on_another_host(
    cloud: Cloud,
) -> None:
    """The VM on h1 behind SNAT and a replies-only firewall; the external VM on h2. Its
    port unreachable enters on h2, is translated there and tunnelled to h1 by the agent."""
    port = _free_udp_port()
    h1 = cloud.host("h1", "127.0.0.41", flowstate_port=port)
    h2 = cloud.host("h2", "127.0.0.42", flowstate_port=port)
    e = _snat_edge(cloud, h1, h2)
    from_vm = chain(cloud, "from vm", {"type": "accept", "match_forward_flow": True})
    to_vm = chain(cloud, "to vm", {"type": "accept", "match_return_flow": True}, {"type": "drop"})
    cloud.topo.update(
        Port, e.vm.port_id, {"inbound_filter_id": from_vm.id, "outbound_filter_id": to_vm.id}
    )
    cloud.settle()
    (first,) = _through_arp(e, e.out(40000))
    src, sport, _dst, _dport = udp_of(first)
    assert src == "203.0.113.1"
    deadline = time.monotonic() + 5
    while len(h2.agent.flowstate.table) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    h2.agent.run_once(0)

    error = _unreachable(e.ext, _mac(UPLINK_MAC), first)
    installed = len(h2.agent.flows.snapshot())
    for _ in range(2):  # both simulated: no flow may answer for the quote
        cloud.send(e.ext, error)
        (got,) = cloud.received(e.vm)
        assert _error_of(got) == (
            "203.0.113.9", "10.0.0.5", ("10.0.0.5", 40000, "203.0.113.9", 53),
        )  # fmt: skip
    assert len(h2.agent.flows.snapshot()) == installed
    # An error about a port never bound is no reply: it stays out.
    stray = bytearray(first)
    stray[34:36] = (sport ^ 1).to_bytes(2, "big")
    cloud.send(e.ext, _unreachable(e.ext, _mac(UPLINK_MAC), _fix(bytes(stray))))
    assert cloud.received(e.vm) == []


def test_an_error_from_a_dnat_target_leaves_from_the_dnat_address(cloud: Cloud) -> None:
    e = Edge(cloud)
    dnat_ip = "203.0.113.60"
    e.filters(
        pre=[{"type": "dnat", "in_ports": [e.uplink.id], "nw_dst_address": dnat_ip,
              "nw_dst_length": 32,
              "nat_targets": [{"address_from": "10.0.0.5", "address_to": "10.0.0.5",
                               "port_from": 5353, "port_to": 5353}]}],
        post=[{"type": "rev_dnat", "out_ports": [e.uplink.id]}],
    )  # fmt: skip
    e.resolve()
    cloud.send(e.ext, e.to_public(dnat_ip, 53, sport=33000))
    (inbound,) = cloud.received(e.vm)
    assert udp_of(inbound) == ("203.0.113.9", 33000, "10.0.0.5", 5353)
    misses = _misses(e)
    cloud.send(e.vm, _unreachable(e.vm, _mac(GW_MAC), inbound))
    (got,) = cloud.received(e.ext)
    assert _error_of(got) == (dnat_ip, "203.0.113.9", ("203.0.113.9", 33000, dnat_ip, 53))
    cloud.send(e.vm, _unreachable(e.vm, _mac(GW_MAC), inbound))
    assert len(cloud.received(e.ext)) == 1
    assert _misses(e) == misses + 2  # each error went to the agent


def _mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def _fix(frame: bytes) -> bytes:
    """The frame with its IP and UDP checksums computed again (after a byte edit)."""
    return Ethernet.parse(frame).build()
