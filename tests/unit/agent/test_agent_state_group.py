"""A router's uplinks on two hosts in one stateful port group (MidoNet's ECMP uplinks),
through agents on fake datapaths exchanging flow state over real UDP: dynamic SNAT
keys its bindings by the router, not by the group, yet the reply entering by the other
uplink's host must find them there. (The lab test with real VMs is
tests/system/lab/test_lab_stateful_group.py.)"""

from __future__ import annotations

import socket
import time

from agent_harness import Cloud, Vm

from tessera.model import Chain, PortGroup, Route, Router, Rule
from tessera.packet import ETH_TYPE_IPV4, Ethernet, IPv4, Udp
from tessera.packet.addr import ip_from_str, ip_to_str, mac_from_str

GW_MAC = "02:7e:00:00:00:01"
A_MAC = "02:7e:00:00:00:0a"
B_MAC = "02:7e:00:00:00:0b"
SNAT = [{"address_from": "203.0.113.150", "address_to": "203.0.113.150",
         "port_from": 20000, "port_to": 20127}]  # fmt: skip


def _udp(
    src: Vm, dst_mac: str, dst_ip: str, sport: int, dport: int, src_ip: int | None = None
) -> bytes:
    packet = IPv4(src_ip or src.ip, ip_from_str(dst_ip), 17, Udp(sport, dport, b"hello"))
    return Ethernet(mac_from_str(dst_mac), src.mac, ETH_TYPE_IPV4, packet).build()


def _udp_of(frame: bytes) -> tuple[str, int, str, int]:
    ip = Ethernet.parse(frame).payload
    assert isinstance(ip, IPv4) and isinstance(ip.payload, Udp)
    return ip_to_str(ip.src), ip.payload.src_port, ip_to_str(ip.dst), ip.payload.dst_port


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_snat_binding_reaches_the_host_of_the_other_uplink_of_a_stateful_group(
    cloud: Cloud,
) -> None:
    port = _free_udp_port()
    h1 = cloud.host("h1", "127.0.0.41", flowstate_port=port)
    h2 = cloud.host("h2", "127.0.0.42", flowstate_port=port)
    br = cloud.bridge()
    rt = cloud.router()
    gw = cloud.router_port(rt, "10.0.0.1/24", GW_MAC)
    a = cloud.router_port(rt, "203.0.113.1/28", A_MAC)
    b = cloud.router_port(rt, "203.0.113.17/28", B_MAC)
    cloud.topo.link(gw.id, cloud.bridge_port(br).id)
    for p, net, length in ((gw, "10.0.0.0", 24), (a, "203.0.113.0", 28), (b, "203.0.113.16", 28)):
        cloud.topo.create(
            Route(router_id=rt.id, dst_network_addr=net, dst_network_length=length,
                  next_hop_port=p.id)
        )  # fmt: skip
    group = cloud.topo.create(PortGroup(name="uplinks", stateful=True))
    for member in (a, b):
        cloud.topo.add_port_group_port(group.id, member.id)
    vm = cloud.vm(h1, br, "tap-vm", "02:00:00:00:00:05", "10.0.0.5")
    cloud.topo.bind(h1.host_id, a.id, "tap-a")
    cloud.topo.bind(h2.host_id, b.id, "tap-b")
    ext_a = Vm(a.id, mac_from_str("02:00:00:00:00:a2"), ip_from_str("203.0.113.2"), h1)
    ext_b = Vm(b.id, mac_from_str("02:00:00:00:00:b2"), ip_from_str("203.0.113.18"), h2)
    pre = cloud.topo.create(Chain(name="pre"))
    cloud.topo.create(Rule(chain_id=pre.id, position=1, type="rev_snat", in_ports=[a.id, b.id]))
    post = cloud.topo.create(Chain(name="post"))
    cloud.topo.create(
        Rule(chain_id=post.id, position=1, type="snat", out_ports=[a.id, b.id],
             nw_src_address="10.0.0.0", nw_src_length=24, nat_targets=SNAT)  # type: ignore[arg-type]
    )  # fmt: skip
    cloud.topo.update(Router, rt.id, {"inbound_filter_id": pre.id, "outbound_filter_id": post.id})
    cloud.settle()
    # The router learns the VM's MAC and extA's; extB's router-side MAC is B's.
    cloud.send(vm, vm.arp_reply(mac_from_str(GW_MAC), ip_from_str("10.0.0.1")))
    cloud.send(ext_a, ext_a.arp_reply(mac_from_str(A_MAC), ip_from_str("203.0.113.1")))

    cloud.send(vm, _udp(vm, GW_MAC, "203.0.113.2", 40000, 53))
    (out,) = cloud.received(ext_a)
    src, sport, dst, _ = _udp_of(out)
    assert (src, dst) == ("203.0.113.150", "203.0.113.2")
    # h1 sent the bindings to h2, B's host, though the packet left by A (on h1).
    deadline = time.monotonic() + 5
    while len(h2.agent.flowstate.table) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert {t.entry.key.kind for t in h2.agent.flowstate.table.snapshot()} == {  # type: ignore[union-attr]
        "fwd_snat",
        "rev_snat",
    }
    h2.agent.run_once(0)  # the received state's tags
    # The server's reply comes back by B, on h2: translated back to the VM.
    server = ip_from_str("203.0.113.2")
    cloud.send(ext_b, _udp(ext_b, B_MAC, "203.0.113.150", 53, sport, src_ip=server))
    (back,) = cloud.received(vm)
    assert _udp_of(back) == ("203.0.113.2", 53, "10.0.0.5", 40000)
