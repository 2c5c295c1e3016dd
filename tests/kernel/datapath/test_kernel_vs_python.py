"""The kernel program and the Python model of it agree, on random frames.

Two differential properties, the ones a flow cache lives by:

1. Keys. The agent installs a megaflow keyed by what `FlowMatch.from_frame` (through
   `datapath.base.packet_key`) extracted from the missed frame; the kernel looks it up
   with what `extract_key()` in tessera_dp.c extracts. For every frame the packet
   strategies draw, the two keys must be equal field for field — a flow whose key the
   kernel computes differently is never hit. The kernel's side is read with
   BPF_PROG_TEST_RUN (key_probe.c), with a tenant tag in band and in skb metadata.
2. Flows. A frame enters a small virtual network (two bridges, a router, a VM on another
   host); the simulation decides, `agent.translate` turns the result into a datapath
   flow exactly as the agent does, and the flow is installed in the fake and in the eBPF
   datapath on real veths. The frame, and the same frame with TTL 1, must then do the
   same in both: the same bytes out of the same ports and tunnels, the same misses.

The CI variants are derandomized (a fixed sequence of examples: CI never fails on a new
draw; 400 frames per key property, 40 flows), the same every run, so that more would only
repeat them; the `slow` variants (`HYPOTHESIS_PROFILE=explore`) draw 20,000 frames and
600 flows at random.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from kdp_harness import REMOTE_IP, Harness, Seen
from kdp_probe import PROBE_PORT, KeyProbe

from support.explore import explore_only
from support.packet_strategies import ethernets, icmps, tcps, udps
from tessera.agent.translate import PortLocation, translate
from tessera.datapath.base import Drop, Flow, Match, packet_key
from tessera.datapath.ebpf.layout import FlowKey
from tessera.datapath.ebpf_backend import packed_key
from tessera.packet import (
    ALL_FIELDS,
    ETH_TYPE_IPV4,
    PROTO_ICMP,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    Ethernet,
    Field,
    FlowMatch,
    Icmp,
    IPv4,
    Tcp,
    ip_from_str,
    mac_from_str,
)
from tessera.simulation import Verdict, simulate
from unit.simulation.sim_topo import NOW, Topo, mac

pytestmark = pytest.mark.root

CI_KEYS = settings(derandomize=True, max_examples=400, deadline=None, database=None)
SLOW_KEYS = settings(max_examples=20_000, deadline=None)
CI_FLOWS = settings(
    derandomize=True, max_examples=40, deadline=None, database=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)  # fmt: skip
SLOW_FLOWS = settings(
    max_examples=600, deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)  # fmt: skip


# -- 1. keys ---------------------------------------------------------------------------


def python_key(frame: bytes) -> FlowKey:
    """What the agent keys a flow by, as the kernel's `struct flow_key`."""
    key, _mask = packed_key(Match(int(ALL_FIELDS), packet_key(PROBE_PORT, frame)))
    return FlowKey.from_buffer_copy(key)


def check_key(probe: KeyProbe, eth: Ethernet, tag_in_metadata: bool) -> None:
    frame = eth.build()
    want = python_key(frame).fields()
    assert probe.key(frame).fields() == want, frame.hex()
    if tag_in_metadata and eth.vlan_id:  # VID 0 has no metadata form in the probe
        untagged = dataclasses.replace(eth, vlan_id=None, vlan_pcp=0).build()
        assert probe.key(untagged, tag_in_metadata=eth.vlan_id).fields() == want, frame.hex()


frames = ethernets()


@CI_KEYS
@given(frames, st.booleans())
def test_the_kernel_extracts_the_key_python_extracts(
    key_probe: KeyProbe, eth: Ethernet, tag_in_metadata: bool
) -> None:
    check_key(key_probe, eth, tag_in_metadata)


@pytest.mark.slow
@explore_only("20,000 random frames through the key extraction")
@SLOW_KEYS
@given(frames, st.booleans())
def test_the_kernel_extracts_the_key_python_extracts_many(
    key_probe: KeyProbe, eth: Ethernet, tag_in_metadata: bool
) -> None:
    check_key(key_probe, eth, tag_in_metadata)


def _transport_cut_short(eth: Ethernet) -> bool:
    """An IPv4 first (or only) fragment whose transport header the IP length leaves out:
    bytes after it would be read as ports by the kernel (see the test below)."""
    ip = eth.payload
    return (
        isinstance(ip, IPv4) and not ip.frag_offset and isinstance(ip.payload, bytes)
        and ip.proto in (PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_SCTP)
    )  # fmt: skip


@CI_KEYS
@given(frames.filter(lambda e: not _transport_cut_short(e)), st.binary(min_size=1, max_size=24))
def test_trailing_padding_does_not_change_the_key(
    key_probe: KeyProbe, eth: Ethernet, padding: bytes
) -> None:
    """Short frames are padded to 60 bytes on real wires (and not always with zeros):
    fields come from the headers as their lengths say, never from the padding."""
    frame = eth.build() + padding
    assert key_probe.key(frame).fields() == python_key(frame).fields(), frame.hex()


def test_padding_after_a_cut_short_transport_header_is_not_read(key_probe: KeyProbe) -> None:
    # A first fragment carrying no ICMP byte at all, padded (with non-zero bytes).
    packet = IPv4(ip_from_str("10.13.1.5"), ip_from_str("10.13.1.6"), PROTO_ICMP, b"",
                  more_fragments=True)  # fmt: skip
    frame = Ethernet(mac(2), mac(1), ETH_TYPE_IPV4, packet).build() + b"\x08\x01" + bytes(24)
    assert key_probe.key(frame).fields() == python_key(frame).fields()


echoes = st.builds(
    Icmp, type=st.sampled_from([0, 8]), code=st.integers(0, 255), ident=st.integers(0, 0xFFFF),
    seq=st.integers(0, 0xFFFF), payload=st.binary(max_size=16),
)  # fmt: skip


@CI_KEYS
@given(echoes, st.integers(0, 4095), st.booleans())
def test_the_echo_id_is_in_the_key_of_an_echo_request_or_reply(
    key_probe: KeyProbe, echo: Icmp, vlan: int, first_fragment: bool
) -> None:
    """Echoes are rare among random ICMP types: draw them on purpose (NAT and conntrack
    flows of pings are keyed by the id, so a kernel that read it otherwise never hits)."""
    packet = IPv4(ip_from_str("10.13.1.5"), ip_from_str("10.13.1.6"), PROTO_ICMP, echo,
                  more_fragments=first_fragment)  # fmt: skip
    eth = Ethernet(mac(2), mac(1), ETH_TYPE_IPV4, packet, vlan or None)
    assert python_key(eth.build()).icmp_id == echo.ident
    check_key(key_probe, eth, tag_in_metadata=True)


@pytest.mark.parametrize(
    ("l4", "icmp_id"),
    [
        (bytes.fromhex("0800ffff1234"), 0x1234),  # a first fragment with just the id
        (bytes.fromhex("0000ffff12"), 0),  # the id cut short
        (bytes.fromhex("0300ffff12340000"), 0),  # not an echo: its bytes are no id
        (bytes.fromhex("0d00ffff12340000"), 0),  # a timestamp request has an id: not keyed
    ],
)
def test_the_echo_id_is_taken_only_whole_and_only_from_an_echo(
    key_probe: KeyProbe, l4: bytes, icmp_id: int
) -> None:
    packet = IPv4(ip_from_str("10.13.1.5"), ip_from_str("10.13.1.6"), PROTO_ICMP, l4,
                  more_fragments=True)  # fmt: skip
    frame = Ethernet(mac(2), mac(1), ETH_TYPE_IPV4, packet).build() + b"\xab" * 8  # padding
    assert python_key(frame).icmp_id == icmp_id
    assert key_probe.key(frame).fields() == python_key(frame).fields(), frame.hex()


def test_an_8021ad_tagged_frame_has_the_same_key(key_probe: KeyProbe) -> None:
    inner = Ethernet(mac(2), mac(1), ETH_TYPE_IPV4, IPv4(1, 2, PROTO_TCP, Tcp(1, 2))).build()
    frame = inner[:12] + bytes.fromhex("88a80064") + inner[12:]  # S-tag, VID 100
    assert key_probe.key(frame).fields() == python_key(frame).fields()


# -- 2. flows from a simulation ----------------------------------------------------------

GW1, GW2 = mac_from_str("02:aa:00:00:0d:01"), mac_from_str("02:aa:00:00:0d:02")
REMOTE_VNI = 555


class Network:
    """vm1, vm2 (local ports 1, 2) and vmr (on host h2, by tunnel) on the left bridge;
    vm3 (local port 3) on the right one; a router between the two subnets; two mirrors
    (see below), so that flows also make copies, before and after rewrites."""

    def __init__(self) -> None:
        t = self.t = Topo()
        left, right, r = t.bridge("left"), t.bridge("right"), t.router("r")
        vm1, vm2, vmr, link_l = (t.bridge_port(left) for _ in range(4))
        vm3, link_r = t.bridge_port(right), t.bridge_port(right)
        rp1 = t.router_port(r, "10.13.1.1/24", "02:aa:00:00:0d:01")
        rp2 = t.router_port(r, "10.13.2.1/24", "02:aa:00:00:0d:02")
        t.link(link_l, rp1)
        t.link(link_r, rp2)
        t.route(r, "10.13.1.0/24", rp1)
        t.route(r, "10.13.2.0/24", rp2)
        self.vm_ip = {1: "10.13.1.5", 2: "10.13.1.6", 3: "10.13.2.5", 4: "10.13.1.7"}
        for n, (port, bridge) in enumerate(
            ((vm1, left), (vm2, left), (vm3, right), (vmr, left)), start=1
        ):
            t.learn_mac(bridge, mac(n), port)
            t.learn_arp(r, self.vm_ip[n], mac(n))
        # Mirrors: vm1's TCP copied as it enters to vmr (by tunnel), everything the
        # router sends copied as it leaves (rewritten) to vm2.
        tcp_in = t.mirror(vmr, {"nw_proto": PROTO_TCP})
        routed = t.mirror(vm2)
        t.set(vm1, inbound_mirror_ids=[tcp_in.id])
        t.set(r, outbound_mirror_ids=[routed.id])
        self.port_id = {1: vm1.id, 2: vm2.id, 3: vm3.id}
        self.where = {
            vm1.id: PortLocation(local=1, host_id="h1"),
            vm2.id: PortLocation(local=2, host_id="h1"),
            vm3.id: PortLocation(local=3, host_id="h1"),
            vmr.id: PortLocation(vni=REMOTE_VNI, remote_ip=REMOTE_IP, host_id="h2"),
        }
        self.snapshot = t.snapshot()

    def flow(self, port: int, frame: bytes) -> Flow | None:
        """The flow the agent would install for `frame` missed on local `port`, None when
        it would install none (`agent.upcall.UpcallHandler.desired_flow`)."""
        result = simulate(self.snapshot, FlowMatch.from_frame(self.port_id[port], frame), frame,
                          NOW)  # fmt: skip
        if not result.cacheable or result.verdict is Verdict.HOLD or result.emitted:
            return None
        actions = []
        outputs = result.outputs if result.verdict is Verdict.FORWARD else ()
        outputs = (*outputs, *(c.output for c in result.mirrored))
        if outputs:
            t = translate(outputs, result.match, self.where.get)
            if t.extra_mask:
                result.match.record(Field(t.extra_mask))
            actions = t.actions
        result.match.record(Field.IN_PORT)
        return Flow(Match.from_flow_match(result.match, port), tuple(actions) or (Drop(),))


NET = Network()
_L4 = {PROTO_TCP: tcps, PROTO_UDP: udps, PROTO_ICMP: icmps}


@st.composite
def vm_frames(draw: st.DrawFn) -> tuple[int, bytes]:
    """(local port, frame): what VMs send — to a neighbour, through the router (to a VM
    here or on the other host), broadcast or to an unknown MAC, now and then anything —
    with the odd stranger's source MAC, a tenant tag and any TTL."""
    port = draw(st.sampled_from([1, 2, 3]))
    left = port != 3
    src = draw(st.sampled_from([mac(port)] * 4 + [mac(9)]))
    kind = draw(st.sampled_from(["bridged", "routed", "routed", "flood", "any"]))
    ttl = draw(st.sampled_from([2, 64]) | st.integers(0, 255))
    if kind == "bridged":
        dst = draw(st.sampled_from([mac(1), mac(2), mac(4)] if left else [mac(3)]))
        ip_dst = draw(st.sampled_from(list(NET.vm_ip.values())))
    elif kind == "routed":
        dst = GW1 if left else GW2
        ip_dst = draw(st.sampled_from(["10.13.2.5"] if left else ["10.13.1.5", "10.13.1.7"]))
        ttl = draw(st.integers(2, 255))  # TTL 1 is tried on the installed flow
    elif kind == "flood":
        dst = draw(st.sampled_from([0xFFFF_FFFF_FFFF, mac(0x42)]))
        ip_dst = draw(st.sampled_from(list(NET.vm_ip.values())))
    else:
        dst = draw(st.sampled_from([mac(1), mac(2), mac(3), mac(4), GW1, GW2, mac(0x42)]))
        ip_dst = draw(st.sampled_from([*NET.vm_ip.values(), "10.13.1.1", "8.8.8.8"]))
    proto = draw(st.sampled_from(sorted(_L4)))
    l4: Tcp | Icmp = draw(_L4[proto])  # type: ignore[assignment]
    vlan = draw(st.sampled_from([None] * 6 + [0, 7]))
    packet = IPv4(ip_from_str(NET.vm_ip[port]), ip_from_str(ip_dst), proto, l4, ttl=ttl,
                  tos=draw(st.sampled_from([0, 0x10])))  # fmt: skip
    return port, Ethernet(dst, src, ETH_TYPE_IPV4, packet, vlan_id=vlan).build()


def with_ttl(frame: bytes, ttl: int) -> bytes:
    eth = Ethernet.parse(frame)
    assert isinstance(eth.payload, IPv4)
    return dataclasses.replace(eth, payload=dataclasses.replace(eth.payload, ttl=ttl)).build()


def check_flow(fake: Harness, ebpf: Harness, port: int, frame: bytes) -> None:
    flow = NET.flow(port, frame)
    assume(flow is not None)
    assert flow is not None
    for h in (fake, ebpf):
        h.reset()
        h.dp.install(flow)
    want = fake.exchange(port, frame)
    stats = fake.dp.stats(flow.match)
    assert stats is not None and stats.packets == 1, "the flow must serve its own frame"
    assert ebpf.exchange(port, frame, expect=want.count()) == want, flow
    event(_kind(want))
    expiring = with_ttl(frame, 1)
    want = fake.exchange(port, expiring)
    assert ebpf.exchange(port, expiring, expect=want.count()) == want, flow
    event(f"TTL 1: {_kind(want)}")


def _kind(seen: Seen) -> str:
    """What a frame did, coarsely: to see in the statistics that all kinds were tried."""
    if seen.misses:
        return "to the agent"
    if not seen.outputs:
        return "dropped"
    tunnels = sum(1 for where, _ in seen.outputs if where[0] == "tunnel")
    return f"{len(seen.outputs)} output(s), {tunnels} by tunnel"


@CI_FLOWS
@given(vm_frames())
def test_a_simulated_flow_does_in_the_kernel_what_it_does_in_the_fake(
    fake_harness: Harness, ebpf_harness: Harness, sent: tuple[int, bytes]
) -> None:
    check_flow(fake_harness, ebpf_harness, *sent)


@pytest.mark.slow
@explore_only("hundreds of random simulated flows")
@SLOW_FLOWS
@given(vm_frames())
def test_a_simulated_flow_does_in_the_kernel_what_it_does_in_the_fake_many(
    fake_harness: Harness, ebpf_harness: Harness, sent: tuple[int, bytes]
) -> None:
    check_flow(fake_harness, ebpf_harness, *sent)
