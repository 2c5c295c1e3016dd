"""How a TCP connection's state ends, through the agent on fake datapaths that execute
the installed flows: after the first packet the kernel forwards everything, and the
FIN or RST it saw (the flow's `tcp_flags`) shortens the entries the flow carries, never
while the flow still forwards; the owner's expiry withdraws the copies it pushed to
another host, which ends them once nothing there uses them."""

from __future__ import annotations

import socket
import time
from typing import Any

from agent_harness import Cloud, Host, Vm
from test_agent_stateful import GW_MAC, UPLINK_MAC, _snat_edge, chain

from tessera.agent.agent import SWEEP
from tessera.agent.flowstate.entry import TCP_FIN_TIMEOUT, TCP_RST_TIMEOUT
from tessera.model import Port
from tessera.packet import ETH_TYPE_IPV4, Ethernet, IPv4, Tcp
from tessera.packet.addr import ip_from_str, mac_from_str
from tessera.simulation.flowstate import ConnKey

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


def tcp(src: Vm, dst_mac: int, dst_ip: int, sport: int, dport: int, flags: int) -> bytes:
    segment = Tcp(sport, dport, seq=1, ack=1, flags=flags, payload=b"x")
    return Ethernet(dst_mac, src.mac, ETH_TYPE_IPV4, IPv4(src.ip, dst_ip, 6, segment)).build()


def rows(host: Host) -> list[dict[str, Any]]:
    """What `tessera conntrack` would list for the host."""
    return list(host.agent.flowstate.report()["entries"])


def firewalled_pair(cloud: Cloud) -> tuple[Host, Vm, Vm, ConnKey]:
    """B may open TCP connections to A; towards B only their replies pass. B's
    connection to A:80 is set up (SYN, SYN-ACK), so both directions have kernel flows."""
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
    for vm, other in ((a, b), (b, a)):  # the bridge learns both MACs: no flood flows
        cloud.send(vm, vm.arp_request(other.ip))
    cloud.send(b, tcp(b, a.mac, a.ip, 40000, 80, SYN))
    assert len(cloud.received(a)) == 1
    cloud.send(a, tcp(a, b.mac, b.ip, 80, 40000, SYN | ACK))
    assert len(cloud.received(b)) == 1
    return h, a, b, ConnKey(6, b.ip, a.ip, 40000, 80, br.id)


def test_a_fin_through_the_kernel_flow_closes_the_entry_but_never_while_it_talks(
    cloud: Cloud,
) -> None:
    h, a, b, key = firewalled_pair(cloud)
    misses = h.agent.metrics.registry.get_sample_value("tessera_agent_misses_total")
    cloud.tick(SWEEP)
    (row,) = rows(h)
    assert row["state"] == "established" and row["timeout"] == 600.0
    # B closes: the FIN goes through B's installed flow, not through the agent.
    cloud.send(b, tcp(b, a.mac, a.ip, 40000, 80, FIN | ACK))
    assert len(cloud.received(a)) == 1
    assert h.agent.metrics.registry.get_sample_value("tessera_agent_misses_total") == misses
    cloud.tick(SWEEP)
    (row,) = rows(h)
    assert (row["state"], row["timeout"]) == ("closing", TCP_FIN_TIMEOUT)
    # A, half-closed, still sends for twice the close timeout: the entry stays, and so
    # its replies keep passing the firewall.
    for _ in range(int(2 * TCP_FIN_TIMEOUT / 10)):
        cloud.tick(10.0)
        cloud.send(a, tcp(a, b.mac, b.ip, 80, 40000, ACK))
        assert len(cloud.received(b)) == 1
    assert key in h.agent.flowstate.view.conntrack
    # Then both sides are quiet: the entry goes one close timeout later, and A's next
    # segment is a new inbound connection, dropped.
    quiet = 0.0
    while quiet < TCP_FIN_TIMEOUT - SWEEP:
        cloud.tick(SWEEP)  # the agent's timers, as often as they run
        quiet += SWEEP
        assert key in h.agent.flowstate.view.conntrack
    cloud.tick(2 * SWEEP)
    assert key not in h.agent.flowstate.view.conntrack and rows(h) == []
    cloud.send(a, tcp(a, b.mac, b.ip, 80, 40000, ACK))
    assert cloud.received(b) == []


def test_an_rst_ends_the_connection_within_seconds(cloud: Cloud) -> None:
    h, a, b, key = firewalled_pair(cloud)
    cloud.send(a, tcp(a, b.mac, b.ip, 80, 40000, RST | ACK))  # A refuses, by its flow
    assert len(cloud.received(b)) == 1
    cloud.tick(SWEEP)
    (row,) = rows(h)
    assert (row["state"], row["timeout"]) == ("reset", TCP_RST_TIMEOUT)
    cloud.tick(TCP_RST_TIMEOUT)
    assert key not in h.agent.flowstate.view.conntrack
    cloud.send(a, tcp(a, b.mac, b.ip, 80, 40000, ACK))
    assert cloud.received(b) == []


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(condition: Any, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return bool(condition())


def test_the_owner_s_expiry_withdraws_the_copies_it_pushed(cloud: Cloud) -> None:
    """VM on h1 SNATed to an external VM bound on h2 (real UDP between the agents): h1
    creates the bindings and pushes them to h2, where the reply enters. When the VM's
    RST closes the connection, h1's entries go and h2's copies follow — the one the
    reply's flow reads only once that flow is idle."""
    port = _free_udp_port()
    h1 = cloud.host("h1", "127.0.0.41", flowstate_port=port)
    h2 = cloud.host("h2", "127.0.0.42", flowstate_port=port)
    e = _snat_edge(cloud, h1, h2)
    gw, uplink = mac_from_str(GW_MAC), mac_from_str(UPLINK_MAC)
    cloud.send(e.vm, tcp(e.vm, gw, e.ext.ip, 40000, 80, SYN))
    got = cloud.received(e.ext)
    if got and Ethernet.parse(got[0]).dst == 0xFFFF_FFFF_FFFF:  # the router's ARP
        cloud.send(e.ext, e.ext.arp_reply(uplink, ip_from_str("203.0.113.1")))
    assert _wait(lambda: len(h2.agent.flowstate.table) == 2)
    h2.agent.run_once(0)
    (binding,) = [r for r in rows(h2) if r["kind"] == "rev_snat"]
    assert binding["origin"] == h1.host_id
    (fwd,) = [r for r in rows(h1) if r["kind"] == "fwd_snat"]
    assert fwd["origin"] is None and fwd["shared_with"] == ["127.0.0.42"]
    public_port = fwd["nat"]["port"]
    reply = tcp(e.ext, uplink, ip_from_str("203.0.113.1"), 80, public_port, SYN | ACK)
    cloud.send(e.ext, reply)
    assert len(cloud.received(e.vm)) == 1  # translated back on h2, by h1's binding
    # The VM resets the connection through its flow on h1.
    cloud.send(e.vm, tcp(e.vm, gw, e.ext.ip, 40000, 80, RST))
    assert len(cloud.received(e.ext)) == 1
    cloud.clock.advance(SWEEP)
    h1.agent.run_once(0)  # h1 sees the RST in its flow's stats
    assert {r["state"] for r in rows(h1)} == {"reset"}
    cloud.clock.advance(TCP_RST_TIMEOUT)
    h2.agent.run_once(0)  # h2's sweep runs now: its next one is SWEEP away
    h1.agent.run_once(0)  # h1's entries expire: the removal goes to h2
    assert rows(h1) == [] and h1.agent.flowstate.snat.leases()[0][2] == 0
    metrics = h2.agent.metrics.registry

    def removals(result: str) -> float:
        v = metrics.get_sample_value("tessera_agent_flowstate_removals_total", {"result": result})
        return v or 0.0

    assert _wait(lambda: removals("dropped") + removals("released") == 2)
    # The forward binding had no flow on h2: gone at once. The reverse one is read by
    # the reply's flow, kept for it; that flow was used SWEEP + 5 s ago, past the
    # released copy's timeout: h2 lets it go as soon as its agent thread runs, without
    # waiting for its next sweep (seconds away with many flows: meanwhile the idle flow
    # would translate the first reply of a new connection given the same SNAT port).
    assert (removals("dropped"), removals("released")) == (1, 1)
    h2.agent.run_once(0)
    assert rows(h2) == []
    # The reply's flow was invalidated with it: a late segment is judged anew (no
    # binding: not translated to the VM).
    cloud.send(e.ext, reply)
    assert cloud.received(e.vm) == []


def test_a_reset_seen_only_at_the_peer_closes_the_owner_s_entries(cloud: Cloud) -> None:
    """The external server refuses the VM's connection: its RST enters on h2 (where the
    server is) and is delivered to the VM by VNI, so h1's flows never see it. h2 tells
    h1, whose bindings (and SNAT port) go within seconds instead of ten minutes."""
    port = _free_udp_port()
    h1 = cloud.host("h1", "127.0.0.51", flowstate_port=port)
    h2 = cloud.host("h2", "127.0.0.52", flowstate_port=port)
    e = _snat_edge(cloud, h1, h2)
    gw, uplink = mac_from_str(GW_MAC), mac_from_str(UPLINK_MAC)
    cloud.send(e.vm, tcp(e.vm, gw, e.ext.ip, 40000, 80, SYN))
    got = cloud.received(e.ext)
    if got and Ethernet.parse(got[0]).dst == 0xFFFF_FFFF_FFFF:
        cloud.send(e.ext, e.ext.arp_reply(uplink, ip_from_str("203.0.113.1")))
    assert _wait(lambda: len(h2.agent.flowstate.table) == 2)
    h2.agent.run_once(0)
    (fwd,) = [r for r in rows(h1) if r["kind"] == "fwd_snat"]
    public_port = fwd["nat"]["port"]
    refused = tcp(e.ext, uplink, ip_from_str("203.0.113.1"), 80, public_port, RST | ACK)
    cloud.send(e.ext, refused)
    assert len(cloud.received(e.vm)) == 1
    cloud.clock.advance(SWEEP)
    h2.agent.run_once(0)  # h2's reply flow saw the RST: its copy is closing, h1 is told
    assert [r["state"] for r in rows(h2) if r["kind"] == "rev_snat"] == ["reset"]
    registry = h1.agent.metrics.registry

    def noted() -> float:
        v = registry.get_sample_value("tessera_agent_flowstate_closes_total", {"result": "noted"})
        return v or 0.0

    assert _wait(lambda: noted() == 1)
    # The whole connection on h1 (the bindings its forward flow carries) is reset, then
    # gone, its SNAT port free; and h2's copies are withdrawn.
    assert sorted((r["kind"], r["state"]) for r in rows(h1)) == [
        ("fwd_snat", "reset"),
        ("rev_snat", "reset"),
    ]
    cloud.clock.advance(TCP_RST_TIMEOUT + SWEEP)
    h1.agent.run_once(0)
    assert rows(h1) == [] and h1.agent.flowstate.snat.leases()[0][2] == 0
    cloud.clock.advance(SWEEP)
    assert _wait(lambda: (h2.agent.run_once(0), rows(h2))[1] == [])
