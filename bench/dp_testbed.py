"""The datapath benchmark's test bed: two hosts, three VMs, both modes' devices.

The addresses, MACs, port numbers and VNIs every section uses, the flows the bench writes
into the pinned maps the way the agent would, and `Testbed`, which cables it all and
switches the VM ports between the Linux bridge (baseline) and ``port_ingress`` (tessera).
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from common import (
    BenchError,
    Lab,
    Pinger,
)

from tessera.datapath.base import (
    Action,
    DecTtl,
    Output,
    OutputTunnel,
    SetEthDst,
    SetEthSrc,
)
from tessera.datapath.ebpf.layout import FlowKey, Stat
from tessera.datapath.ebpf.loader import EbpfFastPath, LoadError
from tessera.lab.sandbox import cable_vm
from tessera.packet.addr import ip_from_str, mac_from_str

PREFIX = "tsrb"
UNDERLAY_1, UNDERLAY_2 = "198.18.0.1", "198.18.0.2"
UNDERLAY_MTU = 1600
MAC_A, MAC_B, MAC_C = "02:00:00:0b:00:0a", "02:00:00:0b:00:0b", "02:00:00:0b:00:0c"
IP_A, IP_B, IP_C = "10.77.0.1", "10.77.0.2", "10.77.0.3"
PORT_A, PORT_B, PORT_C = 1, 2, 1  # datapath port numbers (A, B on h1; C on h2)
VNI_A, VNI_C = 0x10001, 0x10003  # the ports' tunnel keys
BASE_VNI = 4242  # the baseline's plain VXLAN segment
BASE_VXLAN_PORT = 4790  # the baseline's UDP port; vx0 (tessera) keeps 4789

L2_MASK = ["in_port", "eth_dst"]
ROUTED_MASK = ["in_port", "eth_dst", "eth_type", "ip_dst"]


def ip_int(addr: str) -> int:
    return int(ipaddress.IPv4Address(addr))


@dataclass(frozen=True)
class FlowSpec:
    key: FlowKey
    mask: FlowKey
    actions: tuple[Action, ...]


class Testbed:
    """Two hosts, three VMs, both modes' devices; ``mode`` switches the VM ports."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.h1, self.h2 = lab.netns("h1"), lab.netns("h2")
        self.va, self.vb, self.vc = lab.netns("va"), lab.netns("vb"), lab.netns("vc")
        self.fp1 = EbpfFastPath(lab.pin_dir("h1"), self.h1.path)
        self.fp2 = EbpfFastPath(lab.pin_dir("h2"), self.h2.path)
        lab.cleanups += [self.fp1.close, self.fp2.close]
        self.mode = ""
        self.ports = {
            "tap-a": (self.h1, self.fp1),
            "tap-b": (self.h1, self.fp1),
            "tap-c": (self.h2, self.fp2),
        }
        self._underlay()
        cable_vm(self.h1, "tap-a", self.va, MAC_A, f"{IP_A}/24")
        cable_vm(self.h1, "tap-b", self.vb, MAC_B, f"{IP_B}/24")
        cable_vm(self.h2, "tap-c", self.vc, MAC_C, f"{IP_C}/24")
        # Static neighbours: ARP is the agent's job, not the fast path's, and both
        # modes must carry exactly the same traffic.
        for vm in (self.va, self.vb, self.vc):
            for ip, mac in ((IP_A, MAC_A), (IP_B, MAC_B), (IP_C, MAC_C)):
                vm.ip("neigh", "replace", ip, "lladdr", mac, "dev", "eth0", "nud", "permanent")
        for host, local, remote in (
            (self.h1, UNDERLAY_1, UNDERLAY_2),
            (self.h2, UNDERLAY_2, UNDERLAY_1),
        ):
            host.ip("link", "add", "br0", "type", "bridge", "stp_state", "0")
            host.ip(
                "link",
                "add",
                "vxb",
                "type",
                "vxlan",
                "id",
                str(BASE_VNI),
                "local",
                local,
                "remote",
                remote,
                "dstport",
                str(BASE_VXLAN_PORT),
            )
            host.ip("link", "set", "vxb", "master", "br0")
            host.ip("link", "set", "vxb", "up")
            host.ip("link", "set", "br0", "up")
            host.ip("link", "add", "vx0", "type", "vxlan", "external", "dstport", "4789")
            host.ip("link", "set", "vx0", "up")
        # Miss path on h1: miss0 is the datapath end, miss1 the (bench's) agent end.
        self.h1.ip("link", "add", "miss0", "type", "veth", "peer", "name", "miss1")
        self.h1.ip("link", "set", "miss0", "up")
        self.h1.ip("link", "set", "miss1", "up")
        self.idx: dict[str, int] = {}
        self._fast_path()

    def _underlay(self) -> None:
        self.h1.ip("link", "add", "u1", "type", "veth", "peer", "name", "u2", "netns", self.h2.name)
        for ns, dev, addr in ((self.h1, "u1", UNDERLAY_1), (self.h2, "u2", UNDERLAY_2)):
            ns.ip("addr", "add", f"{addr}/24", "dev", dev)
            ns.ip("link", "set", dev, "mtu", str(UNDERLAY_MTU), "up")

    def _fast_path(self) -> None:
        try:
            self.fp1.load()
            self.fp2.load()
        except LoadError as e:
            raise BenchError(f"cannot load the eBPF fast path: {e}") from None
        for name, (ns, _fp) in self.ports.items():
            self.idx[name] = ns.ifindex(name)
        self.fp1.set_vxlan_device("vx0")
        self.fp2.set_vxlan_device("vx0")
        self.fp1.set_miss_device("miss0")
        self.fp1.maps.vni_ports.set(VNI_A, self.idx["tap-a"], peer=True)
        self.fp2.maps.vni_ports.set(VNI_C, self.idx["tap-c"], peer=True)
        self.fp1.maps.ports.set(self.idx["tap-a"], PORT_A)
        self.fp1.maps.ports.set(self.idx["tap-b"], PORT_B)
        self.fp2.maps.ports.set(self.idx["tap-c"], PORT_C)
        # h1's local ports, both delivered with bpf_redirect_peer (h2 only tunnels).
        self.devices = {PORT_A: (self.idx["tap-a"], True), PORT_B: (self.idx["tap-b"], True)}
        self.h1_flows = self.flows_h1()
        self.h2_flows = self.flows_h2()
        self.install()

    def flows_h1(self) -> list[FlowSpec]:
        """A<->B routed-style on h1 (what a router hop costs), A->C through the tunnel."""
        routed = FlowKey.mask_of(ROUTED_MASK)
        l2 = FlowKey.mask_of(L2_MASK)
        return [
            FlowSpec(
                FlowKey.make(in_port=PORT_A, eth_dst=MAC_B, eth_type=0x800, ip_dst=ip_int(IP_B)),
                routed,
                (
                    SetEthSrc(mac_from_str(MAC_A)),
                    SetEthDst(mac_from_str(MAC_B)),
                    DecTtl(),
                    Output(PORT_B),
                ),
            ),
            FlowSpec(
                FlowKey.make(in_port=PORT_B, eth_dst=MAC_A, eth_type=0x800, ip_dst=ip_int(IP_A)),
                routed,
                (
                    SetEthSrc(mac_from_str(MAC_B)),
                    SetEthDst(mac_from_str(MAC_A)),
                    DecTtl(),
                    Output(PORT_A),
                ),
            ),
            FlowSpec(
                FlowKey.make(in_port=PORT_A, eth_dst=MAC_C),
                l2,
                (OutputTunnel(VNI_C, ip_from_str(UNDERLAY_2)),),
            ),
        ]

    def flows_h2(self) -> list[FlowSpec]:
        l2 = FlowKey.mask_of(L2_MASK)
        return [
            FlowSpec(
                FlowKey.make(in_port=PORT_C, eth_dst=MAC_A),
                l2,
                (OutputTunnel(VNI_A, ip_from_str(UNDERLAY_1)),),
            )
        ]

    def install(self) -> None:
        for f in self.h1_flows:
            self.fp1.maps.flows.install(f.key, f.mask, f.actions, self.devices)
        for f in self.h2_flows:
            self.fp2.maps.flows.install(f.key, f.mask, f.actions, {})

    def set_mode(self, mode: str) -> None:
        if mode == self.mode:
            return
        for name, (ns, fp) in self.ports.items():
            if mode == "baseline":
                fp.detach(name)
                ns.ip("link", "set", name, "master", "br0")
            else:
                ns.ip("link", "set", name, "nomaster")
                fp.attach(name, "port_ingress")
        self.mode = mode
        self.wait_reachable()

    def wait_reachable(self) -> None:
        pinger = Pinger(self.va)
        try:
            for dst in (IP_B, IP_C):
                deadline = time.monotonic() + 5
                while pinger.ping(dst, timeout=0.2) is None:
                    if time.monotonic() > deadline:
                        raise BenchError(f"{self.mode}: VM A cannot reach {dst}")
        finally:
            pinger.close()

    def stats(self) -> dict[str, dict[Stat, int]]:
        return {"h1": self.fp1.maps.stats.read(), "h2": self.fp2.maps.stats.read()}
