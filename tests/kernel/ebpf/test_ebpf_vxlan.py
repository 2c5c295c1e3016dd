"""Two hosts over a VXLAN underlay: tunnel output on one, tunnel_rx on the other.

    ns A -- tap-a [host 1] vx0 ~~ u1 198.18.0.1 ==== u2 198.18.0.2 ~~ vx0 [host 2] tap-b -- ns B

The VNI is the destination port's tunnel key; the receiving host only
delivers (vni_ports), no flow lookup.  Underlay MTU 1600 so a 1500-byte VM
frame plus 50 bytes of VXLAN never fragments.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.ebpf import remove_pins
from tessera.datapath.base import OutputTunnel
from tessera.datapath.ebpf.layout import FlowKey, Stat
from tessera.datapath.ebpf.loader import EbpfFastPath
from tessera.lab.sandbox import Sandbox, SandboxFactory, cable_vm
from tessera.packet.addr import ip_from_str

from .conftest import BPFFS
from .nets import ping, tcp_echo_server, tcp_roundtrip

pytestmark = [pytest.mark.root, pytest.mark.system]

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
IP_A, IP_B = "10.0.0.1", "10.0.0.2"
UNDERLAY_1, UNDERLAY_2 = "198.18.0.1", "198.18.0.2"
VNI_A, VNI_B = 0x10001, 0x10002  # the ports' global tunnel keys
L2 = FlowKey.mask_of(["in_port", "eth_dst"])


@dataclass
class TwoHosts:
    h1: Sandbox
    h2: Sandbox
    a: Sandbox
    b: Sandbox
    fp1: EbpfFastPath
    fp2: EbpfFastPath


def _host(ns: Sandbox, fp: EbpfFastPath, underlay_if: str, tap: str, port: int, vni: int) -> None:
    ns.ip("link", "set", underlay_if, "mtu", "1600", "up")
    ns.ip("link", "add", "vx0", "type", "vxlan", "external", "dstport", "4789")
    ns.ip("link", "set", "vx0", "up")
    fp.load()
    tap_ifindex = fp.bind_port(tap, port)
    fp.set_vxlan_device("vx0")
    fp.maps.vni_ports.set(vni, tap_ifindex, peer=True)


@pytest.fixture
def hosts(netns_factory: SandboxFactory, obj_cache: Path) -> Iterator[TwoHosts]:
    h1, h2, a, b = (netns_factory(r) for r in ("h1", "h2", "va", "vb"))
    h1.ip("link", "add", "u1", "type", "veth", "peer", "name", "u2", "netns", h2.name)
    h1.ip("addr", "add", f"{UNDERLAY_1}/24", "dev", "u1")
    h2.ip("addr", "add", f"{UNDERLAY_2}/24", "dev", "u2")
    cable_vm(h1, "tap-a", a, MAC_A, f"{IP_A}/24")
    cable_vm(h2, "tap-b", b, MAC_B, f"{IP_B}/24")
    a.ip("neigh", "replace", IP_B, "lladdr", MAC_B, "dev", "eth0", "nud", "permanent")
    b.ip("neigh", "replace", IP_A, "lladdr", MAC_A, "dev", "eth0", "nud", "permanent")
    pins = [BPFFS / f"tst-{secrets.token_hex(4)}" for _ in range(2)]
    fp1 = EbpfFastPath(pins[0], h1.path, cache_dir=obj_cache)
    fp2 = EbpfFastPath(pins[1], h2.path, cache_dir=obj_cache)
    try:
        _host(h1, fp1, "u1", "tap-a", 1, VNI_A)
        _host(h2, fp2, "u2", "tap-b", 1, VNI_B)
        yield TwoHosts(h1, h2, a, b, fp1, fp2)
    finally:
        fp1.close()
        fp2.close()
        netns_factory.cleanup()
        for p in pins:
            remove_pins(p)


def test_ping_and_tcp_over_vxlan(hosts: TwoHosts) -> None:
    assert ping(hosts.a, IP_B, timeout=0.3) is None  # no flows yet
    # Host 1's simulation: A -> B is port VNI_B on host 2; and the way back.
    hosts.fp1.maps.flows.install(
        FlowKey.make(in_port=1, eth_dst=MAC_B),
        L2,
        [OutputTunnel(VNI_B, ip_from_str(UNDERLAY_2))],
        {},
    )
    hosts.fp2.maps.flows.install(
        FlowKey.make(in_port=1, eth_dst=MAC_A),
        L2,
        [OutputTunnel(VNI_A, ip_from_str(UNDERLAY_1))],
        {},
    )
    rtts = [ping(hosts.a, IP_B, timeout=1.0) for _ in range(3)]
    assert all(r is not None for r in rtts), rtts
    assert hosts.fp2.maps.stats.read()[Stat.TUNNEL_RX] >= 3

    payload = bytes(range(256)) * 1024  # 256 KiB: full-size segments through the tunnel
    with tcp_echo_server(hosts.b, IP_B, 5202):
        got, _ = tcp_roundtrip(hosts.a, IP_B, 5202, payload)
    assert got == payload

    # An unknown VNI is dropped on the receiving host, not delivered.
    hosts.fp2.maps.vni_ports.delete(VNI_B)
    assert ping(hosts.a, IP_B, timeout=0.3) is None
    assert hosts.fp2.maps.stats.read()[Stat.TUNNEL_RX_UNKNOWN] >= 1
