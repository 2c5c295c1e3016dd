"""A load balancer through agents on fake datapaths: the client's host chooses the member
and pushes the bindings (and the sticky entry) to the member's host, whose agent
translates the reply back; later packets stay in the datapath; an INACTIVE member, set in
the NSDB, gets no new connection while its established one goes on."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Sequence

from agent_harness import Cloud, Host, Vm

from tessera.agent.tags import tags_of_change
from tessera.model import LoadBalancer, Pool, PoolMember, Route, Vip
from tessera.packet import ETH_TYPE_IPV4, Ethernet, IPv4, Tcp
from tessera.packet.addr import ip_from_str, ip_to_str, mac_from_str
from tessera.packet.tcp import ACK, SYN
from tessera.simulation.flowstate import STICKY_TIMEOUT
from tessera.simulation.tags import lb_member_tag

GW_MAC = "02:7e:00:00:00:01"
UPLINK_MAC = "02:7e:00:00:00:02"
VIP = "203.0.113.100"


class First:
    """The first candidate, always: which member a connection gets is then known."""

    def pick(self, weights: Sequence[int]) -> int:
        return 0


def tcp(src: Vm, dst_mac: str, dst_ip: str, sport: int, dport: int, flags: int = SYN) -> bytes:
    packet = IPv4(src.ip, ip_from_str(dst_ip), 6, Tcp(sport, dport, flags=flags))
    return Ethernet(mac_from_str(dst_mac), src.mac, ETH_TYPE_IPV4, packet).build()


def tcp_of(frame: bytes) -> tuple[str, int, str, int]:
    ip = Ethernet.parse(frame).payload
    assert isinstance(ip, IPv4) and isinstance(ip.payload, Tcp)
    return ip_to_str(ip.src), ip.payload.src_port, ip_to_str(ip.dst), ip.payload.dst_port


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Site:
    """The client 203.0.113.9 on h1 (bound to the router's uplink); members 10.0.0.5 and
    10.0.0.6 on h2 behind the router; VIP 203.0.113.100:80 -> port 8080, SOURCE_IP."""

    def __init__(self, cloud: Cloud, h1: Host, h2: Host) -> None:
        self.cloud = c = cloud
        br = c.bridge()
        rt = c.router()
        rp = c.router_port(rt, "10.0.0.1/24", GW_MAC)
        uplink = c.router_port(rt, "203.0.113.1/24", UPLINK_MAC)
        c.topo.link(rp.id, c.bridge_port(br).id)
        for port, net in ((rp, "10.0.0.0"), (uplink, "203.0.113.0")):
            c.topo.create(
                Route(router_id=rt.id, dst_network_addr=net, dst_network_length=24,
                      next_hop_port=port.id)
            )  # fmt: skip
        self.members = [
            c.vm(h2, br, f"tap-m{i}", f"02:00:00:00:00:0{5 + i}", f"10.0.0.{5 + i}")
            for i in range(2)
        ]
        c.topo.bind(h1.host_id, uplink.id, "tap-client")
        self.client = Vm(uplink.id, mac_from_str("02:00:00:00:00:99"),
                         ip_from_str("203.0.113.9"), h1)  # fmt: skip
        self.lb = c.topo.create(LoadBalancer(router_id=rt.id))
        self.pool = c.topo.create(Pool(load_balancer_id=self.lb.id))
        self.member_objs = [
            c.topo.create(PoolMember(pool_id=self.pool.id, address=f"10.0.0.{5 + i}",
                                     protocol_port=8080))
            for i in range(2)
        ]  # fmt: skip
        self.vip = c.topo.create(
            Vip(load_balancer_id=self.lb.id, pool_id=self.pool.id, address=VIP,
                protocol_port=80, session_persistence="SOURCE_IP")
        )  # fmt: skip
        # A picker's index is into the candidates in member id order.
        order = sorted(range(2), key=lambda i: self.member_objs[i].id)
        self.a, self.b = order  # `First` picks members[a] while it is a candidate
        c.settle()
        # The router learns every MAC (each answers its ARP request).
        for m in self.members:
            c.send(m, m.arp_reply(mac_from_str(GW_MAC), ip_from_str("10.0.0.1")))
        c.send(self.client, self.client.arp_reply(mac_from_str(UPLINK_MAC),
                                                  ip_from_str("203.0.113.1")))  # fmt: skip

    def connect(self, sport: int, flags: int = SYN) -> list[tuple[str, int, str, int]]:
        """The client's segment to the VIP: what each member received, by member."""
        self.cloud.send(self.client, tcp(self.client, UPLINK_MAC, VIP, sport, 80, flags))
        return [tcp_of(f) for m in self.members for f in self.cloud.received(m)]

    def reply(self, n: int, sport: int, flags: int = SYN | ACK) -> list[tuple[str, int, str, int]]:
        m = self.members[n]
        self.cloud.send(m, tcp(m, GW_MAC, "203.0.113.9", 8080, sport, flags))
        return [tcp_of(f) for f in self.cloud.received(self.client)]


def _wait_for(host: Host, count: int) -> None:
    table = host.agent.flowstate.table  # type: ignore[union-attr]
    deadline = time.monotonic() + 5
    while len(table) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    host.agent.run_once(0)


def test_a_vip_connection_across_hosts_and_an_inactive_member(cloud: Cloud) -> None:
    port = _free_udp_port()
    h1 = cloud.host("h1", "127.0.0.31", flowstate_port=port)
    h2 = cloud.host("h2", "127.0.0.32", flowstate_port=port)
    h1.agent.simulator.picker = First()  # type: ignore[attr-defined]
    s = Site(cloud, h1, h2)

    a, b = s.a, s.b
    ma, mb = f"10.0.0.{5 + a}", f"10.0.0.{5 + b}"
    assert s.connect(40000) == [("203.0.113.9", 40000, ma, 8080)]
    _wait_for(h2, 3)
    fs2 = h2.agent.flowstate
    assert fs2 is not None
    kinds = {t.entry.key.kind: t for t in fs2.table.snapshot()}  # type: ignore[union-attr]
    assert sorted(kinds) == ["fwd_dnat", "rev_dnat", "sticky_dnat"]
    assert kinds["sticky_dnat"].timeout == STICKY_TIMEOUT
    assert kinds["fwd_dnat"].timeout < STICKY_TIMEOUT

    # The member's reply, simulated on h2, is translated back from the VIP.
    assert s.reply(a, 40000) == [(VIP, 80, "203.0.113.9", 40000)]
    # Both directions now run on kernel flows.
    misses = [h.agent.metrics.registry.get_sample_value("tessera_agent_misses_total")
              for h in (h1, h2)]  # fmt: skip
    assert s.connect(40000, ACK) == [("203.0.113.9", 40000, ma, 8080)]
    assert s.reply(a, 40000, ACK) == [(VIP, 80, "203.0.113.9", 40000)]
    assert misses == [h.agent.metrics.registry.get_sample_value("tessera_agent_misses_total")
                      for h in (h1, h2)]  # fmt: skip

    # Sticky: the client's next connection goes to the same member, without a choice.
    h1.agent.simulator.picker = None  # type: ignore[attr-defined]  # would raise if asked
    assert s.connect(40001) == [("203.0.113.9", 40001, ma, 8080)]

    # The health service marks the member INACTIVE: new connections go to the other ...
    h1.agent.simulator.picker = First()  # type: ignore[attr-defined]
    cloud.topo.set_status(PoolMember, s.member_objs[a].id, "INACTIVE")
    cloud.settle()
    assert s.connect(40002) == [("203.0.113.9", 40002, mb, 8080)]
    # ... while the established one keeps its member, both ways.
    assert s.connect(40000, ACK) == [("203.0.113.9", 40000, ma, 8080)]
    assert s.reply(a, 40000, ACK) == [(VIP, 80, "203.0.113.9", 40000)]


def test_what_a_load_balancer_change_invalidates() -> None:
    router, lb_id, pool_id = (str(uuid.uuid4()) for _ in range(3))
    lb = LoadBalancer(router_id=router)
    assert tags_of_change(None, lb) == {lb.id, router}
    vip = Vip(load_balancer_id=lb_id, pool_id=pool_id, address=VIP, protocol_port=80)
    assert tags_of_change(vip, vip.model_copy(update={"admin_state_up": False})) == {
        vip.id, lb_id, pool_id,
    }  # fmt: skip
    member = PoolMember(pool_id=pool_id, address="10.0.0.5", protocol_port=8080)
    address_tag = lb_member_tag(ip_from_str("10.0.0.5"))
    # A status change reaches the flows that chose in the pool, not every reply's.
    assert tags_of_change(member, member.model_copy(update={"status": "INACTIVE"})) == {
        member.id, pool_id,
    }  # fmt: skip
    # A member appearing, going or moving: the flows from its address(es) too.
    assert tags_of_change(None, member) == {member.id, pool_id, address_tag}
    moved = member.model_copy(update={"address": "10.0.0.6"})
    assert tags_of_change(member, moved) == {
        member.id, pool_id, address_tag, lb_member_tag(ip_from_str("10.0.0.6")),
    }  # fmt: skip
