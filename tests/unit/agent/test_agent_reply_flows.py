"""Reply flows: the first packet of a same-host conversation installs its reply's flow.

Real agents on fake datapaths. What matters: the reply then crosses without a miss and
arrives exactly as a simulated reply would; nothing is guessed across hosts, for packets
that do not open a conversation, or where the guess would have to learn something.
"""

from __future__ import annotations

import pytest
from agent_harness import Cloud, Host, Vm
from typer.testing import CliRunner

from tessera.agent import cli as agent_cli
from tessera.datapath.base import packet_key
from tessera.model import Route
from tessera.packet import ETH_TYPE_IPV4, Ethernet, Icmp, IPv4, Tcp
from tessera.packet.addr import ip_from_str, mac_from_str


def _misses(h: Host) -> float:
    return h.agent.metrics.misses._value.get()


def _reply_flows(h: Host) -> float:
    return h.agent.metrics.reply_flows._value.get()


def _pair(
    cloud: Cloud, *, two_hosts: bool = False, reply_flows: bool = True
) -> tuple[Host, Host, Vm, Vm]:
    h = cloud.host("h1", "198.18.0.1", reply_flows=reply_flows)
    h2 = cloud.host("h2", "198.18.0.2") if two_hosts else h
    br = cloud.bridge()
    vm1 = cloud.vm(h, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(h2, br, "tap2", "02:00:00:00:00:02", "10.0.0.2")
    cloud.settle()
    return h, h2, vm1, vm2


def _learn(cloud: Cloud, *vms: Vm) -> None:
    """Each VM speaks once (to a MAC nobody has): the bridge learns where it is."""
    for vm in vms:
        cloud.send(vm, vm.frame(0x02_00_00_00_99_99))


def _forget_flows(h: Host) -> None:
    """Remove every flow, as an invalidation would: the next packet misses."""
    for d in h.agent.flows.clear():
        h.dp.delete(d.match)


def _tcp(src: Vm, dst: Vm, flags: int, sport: int = 40000, dport: int = 80) -> bytes:
    segment = Tcp(sport, dport, seq=1, ack=0, flags=flags, window=1000, payload=b"")
    return Ethernet(dst.mac, src.mac, ETH_TYPE_IPV4, IPv4(src.ip, dst.ip, 6, segment)).build()


def _ping(src: Vm, dst: Vm, icmp_type: int) -> bytes:
    icmp = Icmp(icmp_type, 0, 7, 1, b"ping")
    return Ethernet(dst.mac, src.mac, ETH_TYPE_IPV4, IPv4(src.ip, dst.ip, 1, icmp)).build()


def test_an_echo_request_installs_the_reply_flow_and_the_reply_never_misses(
    cloud: Cloud,
) -> None:
    h, _, vm1, vm2 = _pair(cloud)
    _learn(cloud, vm1, vm2)
    cloud.send(vm1, _ping(vm1, vm2, 8))
    assert len(cloud.received(vm2)) == 1
    assert _reply_flows(h) == 1
    misses = _misses(h)
    reply = _ping(vm2, vm1, 0)
    cloud.send(vm2, reply)
    assert cloud.received(vm1) == [reply]  # the flow delivered it, unchanged
    assert _misses(h) == misses
    flow = h.agent.flows.lookup(packet_key(h.number(vm2.port_id), reply))
    assert flow is not None and {vm1.port_id, vm2.port_id} <= flow.tags


def test_a_syn_installs_the_syn_ack_flow(cloud: Cloud) -> None:
    h, _, vm1, vm2 = _pair(cloud)
    _learn(cloud, vm1, vm2)
    cloud.send(vm1, _tcp(vm1, vm2, 0x02))
    misses = _misses(h)
    cloud.send(vm2, _tcp(vm2, vm1, 0x12, sport=80, dport=40000))
    assert len(cloud.received(vm1)) == 1 and _misses(h) == misses


def test_packets_that_open_nothing_install_no_reply_flow(cloud: Cloud) -> None:
    h, _, vm1, vm2 = _pair(cloud)
    _learn(cloud, vm1, vm2)
    for frame in (_ping(vm1, vm2, 0), _tcp(vm1, vm2, 0x10), _tcp(vm1, vm2, 0x12)):
        _forget_flows(h)
        misses = _misses(h)
        cloud.send(vm1, frame)
        assert len(cloud.received(vm2)) == 1 and _misses(h) == misses + 1
        assert _reply_flows(h) == 0 and len(h.agent.flows) == 1


def test_no_reply_flow_across_hosts(cloud: Cloud) -> None:
    h, h2, vm1, vm2 = _pair(cloud, two_hosts=True)
    _learn(cloud, vm1, vm2)
    cloud.send(vm1, _ping(vm1, vm2, 8))
    assert len(cloud.received(vm2)) == 1
    assert _reply_flows(h) == 0 and _reply_flows(h2) == 0


def test_an_agent_told_not_to_guess_lets_every_reply_miss(cloud: Cloud) -> None:
    h, _, vm1, vm2 = _pair(cloud, reply_flows=False)
    _learn(cloud, vm1, vm2)
    cloud.send(vm1, _ping(vm1, vm2, 8))
    misses = _misses(h)
    cloud.send(vm2, _ping(vm2, vm1, 0))
    assert len(cloud.received(vm1)) == 1
    assert _misses(h) == misses + 1 and _reply_flows(h) == 0
    assert h.agent.status()["reply_flows"] == 0


@pytest.mark.parametrize(("args", "expected"), [([], True), (["--no-reply-flows"], False)])
def test_the_agent_command_passes_reply_flows_on(
    monkeypatch: pytest.MonkeyPatch, args: list[str], expected: bool
) -> None:
    seen: dict[str, object] = {}
    monkeypatch.setattr(agent_cli, "run_agent", lambda **kw: seen.update(kw))
    result = CliRunner().invoke(
        agent_cli.app, ["--host-id", "5d0c8f5e-4a39-4c4e-9d6b-2f3c1a7e9b10", *args]
    )
    assert result.exit_code == 0, result.output
    assert seen["reply_flows"] is expected


def test_a_reply_that_would_teach_a_mac_is_left_to_miss(cloud: Cloud) -> None:
    """vm2's MAC is unknown: the request floods (to vm2 alone) and the guessed reply
    would teach the bridge vm2's port. Learning is left to the real reply."""
    h, _, vm1, vm2 = _pair(cloud)
    _learn(cloud, vm1)
    cloud.send(vm1, _ping(vm1, vm2, 8))
    assert len(cloud.received(vm2)) == 1 and _reply_flows(h) == 0
    misses = _misses(h)
    cloud.send(vm2, _ping(vm2, vm1, 0))
    assert len(cloud.received(vm1)) == 1 and _misses(h) == misses + 1


def test_a_routed_reply_flow_decrements_ttl_like_the_simulation(cloud: Cloud) -> None:
    h = cloud.host("h1", "198.18.0.1")
    left, right = cloud.bridge("left"), cloud.bridge("right")
    rt = cloud.router()
    gw1, gw2 = mac_from_str("02:7e:00:00:00:01"), mac_from_str("02:7e:00:00:00:02")
    rp1 = cloud.router_port(rt, "10.0.1.1/24", "02:7e:00:00:00:01")
    rp2 = cloud.router_port(rt, "10.0.2.1/24", "02:7e:00:00:00:02")
    for rp, br, net in ((rp1, left, "10.0.1.0"), (rp2, right, "10.0.2.0")):
        cloud.topo.link(rp.id, cloud.bridge_port(br).id)
        cloud.topo.create(
            Route(router_id=rt.id, dst_network_addr=net, dst_network_length=24, next_hop_port=rp.id)
        )
    vm1 = cloud.vm(h, left, "tap1", "02:00:00:00:01:01", "10.0.1.2")
    vm2 = cloud.vm(h, right, "tap2", "02:00:00:00:02:02", "10.0.2.2")
    cloud.settle()
    # Each way once, answering the router's ARP requests: it knows both VMs then.
    cloud.send(vm1, vm1.ping_to(gw1, vm2.ip))
    cloud.send(vm2, vm2.arp_reply(gw2, ip_from_str("10.0.2.1")))
    assert len(cloud.received(vm2)) == 1
    cloud.send(vm2, _routed_ping(vm2, gw2, vm1, 0))
    cloud.send(vm1, vm1.arp_reply(gw1, ip_from_str("10.0.1.1")))
    assert len(cloud.received(vm1)) == 1
    _forget_flows(h)
    before = _reply_flows(h)
    cloud.send(vm1, _routed_ping(vm1, gw1, vm2, 8))
    assert len(cloud.received(vm2)) == 1 and _reply_flows(h) == before + 1
    misses = _misses(h)
    cloud.send(vm2, _routed_ping(vm2, gw2, vm1, 0))
    (out,) = cloud.received(vm1)
    eth = Ethernet.parse(out)
    assert eth.src == gw1 and eth.dst == vm1.mac
    assert isinstance(eth.payload, IPv4) and eth.payload.ttl == 63
    assert _misses(h) == misses


def _routed_ping(src: Vm, gw: int, dst: Vm, icmp_type: int) -> bytes:
    icmp = Icmp(icmp_type, 0, 7, 1, b"ping")
    return Ethernet(gw, src.mac, ETH_TYPE_IPV4, IPv4(src.ip, dst.ip, 1, icmp)).build()
