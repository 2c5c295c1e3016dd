"""A flow made for one kind of fragment serves, in the kernel, only the packets its
simulation decided: the fragment kind (`ip_frag`: none, first, later) is in the mask of
every flow a `fragment_policy` decided, and the kernel keys packets by it as Python does.

For each policy, on a bridge port's filter (bridged traffic) and on a router's inbound
filter (routed traffic), a drop rule for ICMP or TCP; a frame of each kind (unfragmented,
first fragment, later fragment) is simulated, its flow installed in the fake and in the
eBPF datapath, and all three kinds are sent through both: they must do the same in
both, and a kind the simulation decides differently must miss (go to the agent) rather
than take the installed flow's answer. A first fragment the router drops is answered
"fragmentation needed" and makes no flow (the agent installs none for a result that
emitted a packet), so a drop flow made for an unfragmented packet must not swallow it.
"""

from __future__ import annotations

import pytest
from kdp_harness import Harness

from tessera.agent.translate import PortLocation, translate
from tessera.datapath.base import Drop, Flow, Match
from tessera.packet import (
    ETH_TYPE_IPV4,
    PROTO_ICMP,
    PROTO_TCP,
    Ethernet,
    Field,
    FlowMatch,
    Icmp,
    IPv4,
    Tcp,
    icmp,
    ip_from_str,
    mac_from_str,
)
from tessera.simulation import SimulationResult, Verdict, simulate
from unit.simulation.sim_topo import NOW, Topo, mac

pytestmark = pytest.mark.root

GW1 = mac_from_str("02:aa:00:00:0f:01")
KINDS = ("none", "first", "later")
POLICIES = ("any", "header", "nonheader", "unfragmented")


class FragNet:
    """vm1, vm2 (local ports 1, 2) on the left bridge, vm3 (local port 3) on the right
    one, a router between them; the drop rule on vm1's port or on the router."""

    def __init__(self, where: str, policy: str, proto: int) -> None:
        t = Topo()
        left, right, r = t.bridge("left"), t.bridge("right"), t.router("r")
        vm1, vm2, link_l = (t.bridge_port(left) for _ in range(3))
        vm3, link_r = t.bridge_port(right), t.bridge_port(right)
        rp1 = t.router_port(r, "10.15.1.1/24", "02:aa:00:00:0f:01")
        rp2 = t.router_port(r, "10.15.2.1/24", "02:aa:00:00:0f:02")
        t.link(link_l, rp1)
        t.link(link_r, rp2)
        t.route(r, "10.15.1.0/24", rp1)
        t.route(r, "10.15.2.0/24", rp2)
        for n, (port, bridge, addr) in enumerate(
            ((vm1, left, "10.15.1.5"), (vm2, left, "10.15.1.6"), (vm3, right, "10.15.2.5")),
            start=1,
        ):
            t.learn_mac(bridge, mac(n), port)
            t.learn_arp(r, addr, mac(n))
        chain = t.chain()
        t.rule(chain, "drop", dl_type=ETH_TYPE_IPV4, nw_proto=proto, fragment_policy=policy)
        if where == "port":
            t.set(vm1, inbound_filter_id=chain.id)
            self.dst_mac, self.dst_ip = mac(2), "10.15.1.6"  # bridged
        else:
            t.set(r, inbound_filter_id=chain.id)
            self.dst_mac, self.dst_ip = GW1, "10.15.2.5"  # routed
        self.vm1 = vm1.id
        self.proto = proto
        self.where = {
            vm1.id: PortLocation(local=1, host_id="h1"),
            vm2.id: PortLocation(local=2, host_id="h1"),
            vm3.id: PortLocation(local=3, host_id="h1"),
        }
        self.snapshot = t.snapshot()

    def frame(self, kind: str) -> bytes:
        src, dst = ip_from_str("10.15.1.5"), ip_from_str(self.dst_ip)
        l4: Icmp | Tcp
        if self.proto == PROTO_ICMP:
            l4 = Icmp(icmp.ECHO_REQUEST, 0, 7, 1, b"x" * 32)
        else:
            l4 = Tcp(40000, 80)
        if kind == "later":
            packet = IPv4(src, dst, self.proto, b"\x00" * 24, frag_offset=185)
        else:
            packet = IPv4(src, dst, self.proto, l4, more_fragments=kind == "first")
        return Ethernet(self.dst_mac, mac(1), ETH_TYPE_IPV4, packet).build()

    def simulate(self, frame: bytes) -> SimulationResult:
        return simulate(self.snapshot, FlowMatch.from_frame(self.vm1, frame), frame, NOW)

    def flow(self, frame: bytes) -> Flow | None:
        """The flow the agent would install (`UpcallHandler.desired_flow`), or None."""
        result = self.simulate(frame)
        if not result.cacheable or result.verdict is Verdict.HOLD or result.emitted:
            return None
        actions = []
        if result.verdict is Verdict.FORWARD:
            t = translate(result.outputs, result.match, self.where.get)
            if t.extra_mask:
                result.match.record(Field(t.extra_mask))
            actions = t.actions
        result.match.record(Field.IN_PORT)
        return Flow(Match.from_flow_match(result.match, 1), tuple(actions) or (Drop(),))

    def decision(self, frame: bytes) -> tuple[object, ...]:
        r = self.simulate(frame)
        return r.verdict, r.outputs, r.emitted


@pytest.mark.parametrize("proto", [PROTO_ICMP, PROTO_TCP], ids=["icmp", "tcp"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("where", ["port", "router"])
def test_a_flow_serves_only_the_fragment_kinds_its_simulation_decided(
    fake_harness: Harness, ebpf_harness: Harness, where: str, policy: str, proto: int
) -> None:
    net = FragNet(where, policy, proto)
    frames = {kind: net.frame(kind) for kind in KINDS}
    decisions = {kind: net.decision(frames[kind]) for kind in KINDS}
    installed = 0
    for made_for in KINDS:
        flow = net.flow(frames[made_for])
        if flow is None:
            assert where == "router" and made_for == "first", "only frag-needed makes none"
            continue
        installed += 1
        for h in (fake_harness, ebpf_harness):
            h.reset()
            h.dp.install(flow)
        for kind in KINDS:
            want = fake_harness.exchange(1, frames[kind])
            got = ebpf_harness.exchange(1, frames[kind], expect=want.count())
            assert got == want, (made_for, kind, flow)
            if kind == made_for:
                assert not want.misses, "the flow must serve its own frame"
            elif decisions[kind] != decisions[made_for]:
                assert want.misses and not want.outputs, (made_for, kind, flow)
    assert installed >= 2
