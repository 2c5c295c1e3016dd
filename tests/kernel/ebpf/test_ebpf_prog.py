"""The C program, run in the kernel on hand-built frames (BPF_PROG_TEST_RUN).

Frames enter as if on a port mapped to in_port 7 (see conftest.probe).
"""

from __future__ import annotations

import ipaddress
import struct
import time

import pytest

from support.ebpf import DEVICES
from support.rawframes import (
    ETH_P_ARP,
    ETH_P_IP,
    arp,
    eth,
    icmp_echo,
    ip_header_ok,
    ipv4,
    udp,
    untag,
)
from tessera.datapath.base import (
    DecTtl,
    Drop,
    Output,
    OutputTunnel,
    SetEthDst,
    SetEthSrc,
    ToUserspace,
)
from tessera.datapath.ebpf.layout import FLOW_FRAG_FIRST, FLOW_FRAG_LATER, FlowKey, Stat
from tessera.packet.addr import ip_from_str, mac_from_str

from .conftest import TEST_PORT, Probe

pytestmark = pytest.mark.root

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
VM_A, VM_B, ROUTER = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:ee:01"


def udp_frame(dst_mac: str = VM_B, dst_ip: str = "10.0.0.2", ttl: int = 64, **kw: int) -> bytes:
    return eth(
        dst_mac, VM_A, ETH_P_IP, ipv4("10.0.0.1", dst_ip, 17, udp(1000, 2000), ttl=ttl, **kw)
    )


L2 = FlowKey.mask_of(["in_port", "eth_dst"])


def l2_key(dst_mac: str = VM_B) -> FlowKey:
    return FlowKey.make(in_port=TEST_PORT, eth_dst=dst_mac)


# --- key extraction -------------------------------------------------------------------


def test_key_of_udp(probe: Probe) -> None:
    frame = udp_frame(tos=0x10, ttl=33)
    assert probe.run("probe_key", frame).retval == TC_ACT_OK
    key = probe.out().key
    assert key == FlowKey.make(
        in_port=TEST_PORT, eth_src=VM_A, eth_dst=VM_B, eth_type=ETH_P_IP,
        ip_src="10.0.0.1", ip_dst="10.0.0.2", ip_proto=17, ip_tos=0x10, ip_ttl=33,
        tp_src=1000, tp_dst=2000,
    )  # fmt: skip
    assert probe.out().l3_off == 14


def test_key_of_icmp_arp_fragments_and_tags(probe: Probe) -> None:
    probe.run("probe_key", eth(VM_B, VM_A, ETH_P_IP, ipv4("10.0.0.1", "10.0.0.2", 1, icmp_echo())))
    k = probe.out().key
    assert (k.ip_proto, k.tp_src, k.tp_dst) == (1, 8, 0)

    probe.run(
        "probe_key",
        eth(
            "ff:ff:ff:ff:ff:ff",
            VM_A,
            ETH_P_ARP,
            arp(1, VM_A, "10.0.0.1", "00:00:00:00:00:00", "10.0.0.2"),
        ),
    )
    k = probe.out().key
    a, b = (int(ipaddress.IPv4Address(x)) for x in ("10.0.0.1", "10.0.0.2"))
    assert (k.eth_type, k.ip_proto, k.ip_src, k.ip_dst) == (ETH_P_ARP, 1, a, b)

    probe.run("probe_key", udp_frame(frag_off=0x2000))  # MF, offset 0
    assert (probe.out().key.ip_frag, probe.out().key.tp_dst) == (FLOW_FRAG_FIRST, 2000)
    probe.run("probe_key", udp_frame(frag_off=0x0010))  # a later fragment: no ports
    assert (probe.out().key.ip_frag, probe.out().key.tp_dst) == (FLOW_FRAG_LATER, 0)

    # A tenant tag in band (test run) and in skb metadata (mark) read the same.
    inner = ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2))
    probe.run("probe_key", eth(VM_B, VM_A, ETH_P_IP, inner, vlan=100))
    in_band = probe.out()
    probe.run("probe_key", eth(VM_B, VM_A, ETH_P_IP, inner), mark=100)
    in_meta = probe.out()
    assert in_band.key == in_meta.key
    assert (in_band.key.vlan_id, in_band.key.eth_type, in_band.key.tp_dst) == (100, ETH_P_IP, 2)
    assert (in_band.l3_off, in_meta.l3_off) == (18, 14)


def test_truncated_frame_still_gets_a_key(probe: Probe) -> None:
    frame = udp_frame()[: 14 + 20 + 2]  # half a UDP header
    assert probe.run("probe_key", frame).retval == TC_ACT_OK
    k = probe.out().key
    assert (k.ip_proto, k.tp_src, k.tp_dst) == (17, 0, 0)
    # (the test run itself insists on a whole IPv4 header, so cut an ARP)
    frame = eth(VM_B, VM_A, ETH_P_ARP, arp(1, VM_A, "10.0.0.1", VM_B, "10.0.0.2"))[:24]
    assert probe.run("probe_key", frame).retval == TC_ACT_OK
    k = probe.out().key
    assert (k.eth_type, k.ip_proto, k.ip_src) == (ETH_P_ARP, 0, 0)


# --- actions --------------------------------------------------------------------------


def test_hit_rewrites_macs_decrements_ttl_and_fixes_checksum(probe: Probe) -> None:
    probe.maps.flows.install(
        l2_key(),
        L2,
        [
            SetEthSrc(mac_from_str(ROUTER)),
            SetEthDst(mac_from_str("02:00:00:00:00:0c")),
            DecTtl(),
            Output(42),
        ],
        DEVICES,
    )
    frame = udp_frame(ttl=64)
    res = probe.run("probe_port_ingress", frame)
    assert res.retval == TC_ACT_REDIRECT
    out = res.data
    assert out[:6] == bytes.fromhex("02000000000c") and out[6:12] == bytes.fromhex("02000000ee01")
    assert out[14 + 8] == 63
    assert ip_header_ok(out)
    # Only the MACs, the TTL and the checksum changed.
    changed = [i for i in range(len(frame)) if frame[i] != out[i]]
    assert all(i < 12 or i in (22, 24, 25) for i in changed)
    assert probe.maps.stats.read()[Stat.HIT] == 1


def test_dec_ttl_by_n_and_expiry_goes_to_the_agent(probe: Probe) -> None:
    probe.maps.flows.install(l2_key(), L2, [DecTtl(3), Output(42)], DEVICES)
    res = probe.run("probe_port_ingress", udp_frame(ttl=10))
    assert res.retval == TC_ACT_REDIRECT and res.data[22] == 7 and ip_header_ok(res.data)
    # TTL would reach 0: the simulation must answer (ICMP time exceeded).
    res = probe.run("probe_port_ingress", udp_frame(ttl=3))
    vid, untagged = untag(res.data)
    assert res.retval == TC_ACT_REDIRECT and vid == TEST_PORT
    assert untagged == udp_frame(ttl=3)


def test_miss_is_tagged_with_the_port_and_redirected(probe: Probe) -> None:
    frame = udp_frame()
    res = probe.run("probe_port_ingress", frame)
    assert res.retval == TC_ACT_REDIRECT
    vid, untagged = untag(res.data)
    assert vid == TEST_PORT and untagged == frame
    assert probe.maps.stats.read()[Stat.MISS] == 1


def test_miss_of_arp_is_tagged_too(probe: Probe) -> None:
    frame = eth(
        "ff:ff:ff:ff:ff:ff",
        VM_A,
        ETH_P_ARP,
        arp(1, VM_A, "10.0.0.1", "00:00:00:00:00:00", "10.0.0.2"),
    )
    res = probe.run("probe_port_ingress", frame)
    assert res.retval == TC_ACT_REDIRECT and untag(res.data) == (TEST_PORT, frame)


def test_miss_of_a_tenant_tagged_frame_puts_the_port_tag_outside(probe: Probe) -> None:
    frame = udp_frame()
    res = probe.run("probe_port_ingress", frame, mark=100)  # tenant VID 100 in metadata
    out = probe.out()
    assert res.retval == TC_ACT_REDIRECT
    assert out.vlan_present and out.vlan_tci & 0xFFF == TEST_PORT  # outer: the port
    assert untag(res.data) == (100, frame)  # inner: the tenant tag, in band


def test_miss_without_a_miss_device_drops(probe: Probe) -> None:
    probe.maps.config.set(miss_ifindex=0)
    assert probe.run("probe_port_ingress", udp_frame()).retval == TC_ACT_SHOT
    assert probe.maps.stats.read()[Stat.MISS_FAILED] == 1


def test_unknown_port_drops(probe: Probe) -> None:
    probe.maps.ports.delete(1)
    assert probe.run("probe_port_ingress", udp_frame()).retval == TC_ACT_SHOT
    assert probe.maps.stats.read()[Stat.UNKNOWN_PORT] == 1


def test_drop_action_and_empty_action_list(probe: Probe) -> None:
    probe.maps.flows.install(l2_key(), L2, [Drop()], DEVICES)
    probe.maps.flows.install(l2_key(VM_A), L2, [], DEVICES)
    assert probe.run("probe_port_ingress", udp_frame()).retval == TC_ACT_SHOT
    assert probe.run("probe_port_ingress", udp_frame(dst_mac=VM_A)).retval == TC_ACT_SHOT
    stats = probe.maps.stats.read()
    assert (stats[Stat.DROP], stats[Stat.HIT], stats[Stat.MISS]) == (2, 2, 0)


def test_to_userspace_is_a_miss(probe: Probe) -> None:
    probe.maps.flows.install(l2_key(), L2, [ToUserspace()], DEVICES)
    res = probe.run("probe_port_ingress", udp_frame())
    assert res.retval == TC_ACT_REDIRECT and untag(res.data)[0] == TEST_PORT


def test_counters_increment(probe: Probe) -> None:
    probe.maps.flows.install(l2_key(), L2, [Output(42)], DEVICES)
    frame = udp_frame()
    before = time.monotonic_ns()
    for _ in range(3):
        probe.run("probe_port_ingress", frame)
    after = time.monotonic_ns()
    entry = probe.maps.flows.get(l2_key(), L2)
    assert entry is not None
    assert (entry.packets, entry.bytes) == (3, 3 * len(frame))
    assert before <= entry.last_used_ns <= after


def test_mask_selection_first_matching_mask_wins(probe: Probe) -> None:
    flows = probe.maps.flows
    l3 = FlowKey.mask_of(["in_port", "eth_dst", "ip_dst"])
    flows.install(
        l2_key(VM_B), L2, [SetEthSrc(mac_from_str("02:00:00:00:01:01")), Output(11)], DEVICES
    )
    flows.install(
        FlowKey.make(in_port=TEST_PORT, eth_dst=ROUTER, ip_dst="10.0.1.5"),
        l3,
        [SetEthSrc(mac_from_str("02:00:00:00:01:02")), Output(12)],
        DEVICES,
    )
    assert flows.masks.active() == {0: L2, 1: l3}

    res = probe.run("probe_port_ingress", udp_frame(VM_B, "10.0.1.5"))  # matches slot 0
    assert res.data[6:12] == bytes.fromhex("020000000101")
    res = probe.run("probe_port_ingress", udp_frame(ROUTER, "10.0.1.5"))  # only slot 1
    assert res.data[6:12] == bytes.fromhex("020000000102")
    res = probe.run("probe_port_ingress", udp_frame(ROUTER, "10.0.1.6"))  # neither
    assert untag(res.data)[0] == TEST_PORT

    # A partial (prefix) mask: 10.0.1.0/24 via the router.
    flows.clear()
    prefix = FlowKey.mask_of({"in_port": ..., "eth_dst": ..., "ip_dst": 0xFFFFFF00})
    flows.install(
        FlowKey.make(in_port=TEST_PORT, eth_dst=ROUTER, ip_dst="10.0.1.0"),
        prefix,
        [Output(13)],
        DEVICES,
    )
    assert probe.run("probe_port_ingress", udp_frame(ROUTER, "10.0.1.77")).retval == TC_ACT_REDIRECT
    assert probe.maps.stats.read()[Stat.HIT] == 3


def test_tunnel_output_sets_the_tunnel_key(probe: Probe) -> None:
    probe.maps.config.set(vxlan_ifindex=55)
    probe.maps.flows.install(
        l2_key(), L2, [OutputTunnel(vni=5001, remote_ip=ip_from_str("198.18.0.2"))], DEVICES
    )
    res = probe.run("probe_port_ingress", udp_frame())
    out = probe.out()
    assert res.retval == TC_ACT_REDIRECT
    assert out.tunnel_ok and out.tunnel_id == 5001
    assert ipaddress.IPv4Address(out.remote_ipv4) == ipaddress.IPv4Address("198.18.0.2")
    assert out.tunnel_ttl == 64


def test_tunnel_output_without_a_device_is_an_error(probe: Probe) -> None:
    probe.maps.flows.install(
        l2_key(), L2, [OutputTunnel(vni=5001, remote_ip=ip_from_str("198.18.0.2"))], DEVICES
    )
    assert probe.run("probe_port_ingress", udp_frame()).retval == TC_ACT_SHOT
    assert probe.maps.stats.read()[Stat.ACTION_ERROR] == 1


def test_non_last_outputs_clone(probe: Probe) -> None:
    # The clone really goes out of the dummy device in the probe's namespace.
    probe.maps.flows.install(
        l2_key(),
        L2,
        [Output(probe.dummy_ifindex), SetEthSrc(mac_from_str(ROUTER)), Output(probe.dummy_ifindex)],
        DEVICES,
    )
    res = probe.run("probe_port_ingress", udp_frame())
    assert res.retval == TC_ACT_REDIRECT and res.data[6:12] == bytes.fromhex("02000000ee01")
    assert probe.maps.stats.read()[Stat.ACTION_ERROR] == 0
    # An output that is not last and is followed by nothing else drops the original.
    probe.maps.flows.install(
        l2_key(), L2, [Output(probe.dummy_ifindex), SetEthSrc(mac_from_str(ROUTER))], DEVICES
    )
    assert probe.run("probe_port_ingress", udp_frame()).retval == TC_ACT_SHOT


# --- inject ----------------------------------------------------------------------------


def tagged(port: int, frame: bytes) -> bytes:
    return frame[:12] + struct.pack("!HH", 0x8100, port) + frame[12:]


def test_inject_pops_the_tag_and_runs_the_flow(probe: Probe) -> None:
    probe.maps.flows.install(l2_key(), L2, [SetEthSrc(mac_from_str(ROUTER)), Output(42)], DEVICES)
    res = probe.run("probe_inject", tagged(TEST_PORT, udp_frame()))
    assert res.retval == TC_ACT_REDIRECT
    assert res.data == bytes.fromhex(VM_B.replace(":", "") + "02000000ee01") + udp_frame()[12:]
    assert probe.maps.stats.read()[Stat.INJECT_HIT] == 1


def test_inject_uses_the_tag_as_in_port(probe: Probe) -> None:
    probe.maps.flows.install(l2_key(), L2, [Output(42)], DEVICES)
    assert probe.run("probe_inject", tagged(TEST_PORT + 1, udp_frame())).retval == TC_ACT_SHOT
    assert probe.maps.stats.read()[Stat.INJECT_MISS] == 1


def test_inject_keeps_a_tenant_tag(probe: Probe) -> None:
    key = FlowKey.make(in_port=TEST_PORT, eth_dst=VM_B, vlan_id=100)
    probe.maps.flows.install(
        key, FlowKey.mask_of(["in_port", "eth_dst", "vlan_id"]), [Output(42)], DEVICES
    )
    inner = eth(VM_B, VM_A, ETH_P_IP, ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), vlan=100)
    assert probe.run("probe_inject", tagged(TEST_PORT, inner)).retval == TC_ACT_REDIRECT


def test_inject_miss_drops_instead_of_looping(probe: Probe) -> None:
    assert probe.run("probe_inject", tagged(TEST_PORT, udp_frame())).retval == TC_ACT_SHOT
    probe.maps.flows.install(l2_key(), L2, [ToUserspace()], DEVICES)
    assert probe.run("probe_inject", tagged(TEST_PORT, udp_frame())).retval == TC_ACT_SHOT
    stats = probe.maps.stats.read()
    assert (stats[Stat.INJECT_MISS], stats[Stat.MISS]) == (2, 0)


def test_inject_without_a_tag_drops(probe: Probe) -> None:
    assert probe.run("probe_inject", udp_frame()).retval == TC_ACT_SHOT
    assert probe.run("probe_inject", tagged(0, udp_frame())).retval == TC_ACT_SHOT
    assert probe.maps.stats.read()[Stat.INJECT_BAD_TAG] == 2
