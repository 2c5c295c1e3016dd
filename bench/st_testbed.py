"""The stateful benchmark's test bed: two tessera hosts with real agents, and beside
them a Linux router doing nftables masquerade, with the same kind of VM namespaces.

    tessera (agents, eBPF datapath; ZooKeeper and the API inside h1):
      va 10.0.0.10  SNAT client        -+                      +- vc  10.0.0.30 LAN server
      vb 10.0.0.20  plain client        +- [h1] 198.18.0.1 ==== 198.18.0.2 [h2]
      vp 10.0.0.40  per-connection flows|                      +- ext 203.0.113.9/25, on the
      vf 10.0.0.50  firewalled client  -+                         router's uplink
      lan bridge -- router r (10.0.0.1 | 203.0.113.1 uplink)
      SNAT 10.0.0.10 -> 203.0.113.150-157:1024-65535 on the uplink; rev_snat coming in

    baseline (no tessera): bva 10.0.0.10 -- [bh1: router, nft masquerade on u1]
                           198.19.0.1 ==== 198.19.0.2 [bh2: router] -- bext 203.0.113.9/25

Why separate baseline hosts rather than the same ones: a NAT ruleset in a namespace
turns on connection tracking for every packet of that namespace, tessera's VXLAN
traffic included, which would slow tessera down by the baseline's own cost. The
baseline's NAT lives only in bh1, a namespace this run made.

vp's port reads the L4 ports in its filters (accept-all rules with ``tp_src`` /
``tp_dst`` ranges) so that each of its connections misses on both hosts like a SNAT
connection does, but creates no state: the reference for what the state itself costs.
vf's port carries the conntrack firewall of the lab tests (its connections tracked,
towards it only ARP and return flows).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

from common import BenchError, Lab, Netns, Pinger, wait_for
from dp_agent import AgentHost, Agents
from dp_testbed import UNDERLAY_1, UNDERLAY_2, UNDERLAY_MTU

from tessera.lab.sandbox import cable_vm

PREFIX = "tsrs"
LAN_GW, EXT_GW = "10.0.0.1", "203.0.113.1"
EXT_IP = "203.0.113.9"
VC_IP = "10.0.0.30"
SNAT_FROM, SNAT_TO = "203.0.113.150", "203.0.113.157"
BASE_U1, BASE_U2 = "198.19.0.1", "198.19.0.2"
# name: (host role, address, MAC)
VMS: dict[str, tuple[str, str, str]] = {
    "va": ("h1", "10.0.0.10", "02:00:00:0c:00:0a"),
    "vb": ("h1", "10.0.0.20", "02:00:00:0c:00:0b"),
    "vp": ("h1", "10.0.0.40", "02:00:00:0c:00:0d"),
    "vf": ("h1", "10.0.0.50", "02:00:00:0c:00:0f"),
    "vc": ("h2", VC_IP, "02:00:00:0c:00:0c"),
    "ext": ("h2", EXT_IP, "02:00:00:0c:00:e0"),
}

NFT_RULESET = """table ip tsrs_bench {
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 10.0.0.0/24 oifname "u1" masquerade
  }
}
"""


def nft_missing() -> str | None:
    if shutil.which("nft") is None:
        return "nft not found (Debian: apt-get install nftables)"
    return None


def _underlay(a: Netns, b: Netns, ip_a: str, ip_b: str) -> None:
    a.ip("link", "add", "u1", "type", "veth", "peer", "name", "u2", "netns", b.name)
    for ns, dev, addr in ((a, "u1", ip_a), (b, "u2", ip_b)):
        ns.ip("addr", "add", f"{addr}/24", "dev", dev)
        ns.ip("link", "set", dev, "mtu", str(UNDERLAY_MTU), "up")


def _vm(host: Netns, vm: Netns, tap: str, mac: str, cidr: str, gw: str) -> None:
    cable_vm(host, tap, vm, mac, cidr)
    vm.ip("route", "add", "default", "via", gw)


class Baseline:
    """bva -> bh1 (router + masquerade) -> underlay -> bh2 (router) -> bext."""

    def __init__(self, lab: Lab) -> None:
        self.h1, self.h2 = lab.netns("bh1"), lab.netns("bh2")
        self.client, self.server = lab.netns("bva"), lab.netns("bext")
        _underlay(self.h1, self.h2, BASE_U1, BASE_U2)
        _vm(self.h1, self.client, "tap-a", VMS["va"][2], f"{VMS['va'][1]}/24", LAN_GW)
        _vm(self.h2, self.server, "tap-x", VMS["ext"][2], f"{EXT_IP}/25", EXT_GW)
        self.h1.ip("addr", "add", f"{LAN_GW}/24", "dev", "tap-a")
        self.h2.ip("addr", "add", f"{EXT_GW}/25", "dev", "tap-x")
        self.h1.ip("route", "add", "203.0.113.0/24", "via", BASE_U2)
        for ns in (self.h1, self.h2):
            ns.sysctl("net.ipv4.ip_forward", "1")
        self.nat = nft_missing() is None
        if self.nat:
            proc = subprocess.run(
                self.h1.argv("nft", "-f", "-"),
                input=NFT_RULESET,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if proc.returncode != 0:
                raise BenchError(f"nft in {self.h1.name}: {proc.stderr.strip()[:200]}")
            # Without the masquerade bext has no way back to bva: nothing to measure.
            ping_until(self.client, EXT_IP, "baseline: bva cannot reach bext")


def ping_until(ns: Netns, dst: str, what: str, timeout: float = 60.0) -> None:
    pinger = Pinger(ns)
    try:
        wait_for(what, lambda: pinger.ping(dst, timeout=0.3) is not None, timeout, every=0.1)
    finally:
        pinger.close()


class Tessera(Agents):
    """The VMs of the module doc on two agent hosts, the router, NAT and filters."""

    def __init__(self, lab: Lab, log: Callable[[str], None]) -> None:
        h1, h2 = lab.netns("h1"), lab.netns("h2")
        super().__init__(lab, h1, h2, log)
        _underlay(h1, h2, UNDERLAY_1, UNDERLAY_2)
        self.vms: dict[str, Netns] = {}
        by_role = {"h1": h1, "h2": h2}
        for name, (role, ip, mac) in VMS.items():
            vm = lab.netns(name)
            gw, length = (EXT_GW, 25) if name == "ext" else (LAN_GW, 24)
            _vm(by_role[role], vm, f"tap-{name}", mac, f"{ip}/{length}", gw)
            self.vms[name] = vm

    def host(self, role: str) -> AgentHost:
        return next(h for h in self.hosts if h.role == role)

    def misses(self) -> dict[str, int]:
        return {h.role: int(self.status(h)["misses"]) for h in self.hosts}

    # -- the topology, through the API -------------------------------------------------

    def _chain(self, name: str, *rules: dict[str, Any]) -> str:
        chain: str = self.http.post("/chains", {"name": f"{self.lab.prefix}-{name}"})["id"]
        for position, fields in enumerate(rules, 1):
            self.http.post(f"/chains/{chain}/rules", {"position": position, **fields})
        return chain

    def _put(self, path: str, fields: dict[str, Any]) -> None:
        self.http.put(path, {**self.http.get(path), **fields})

    def topology(self) -> None:
        api = self.http
        lan = api.post("/bridges", {"name": f"{self.lab.prefix}-lan"})["id"]
        r = api.post("/routers", {"name": f"{self.lab.prefix}-r"})["id"]
        gw = api.post(
            f"/routers/{r}/ports",
            {"port_address": LAN_GW, "network_address": "10.0.0.0", "network_length": 24},
        )["id"]
        uplink = api.post(
            f"/routers/{r}/ports",
            {"port_address": EXT_GW, "network_address": "203.0.113.0", "network_length": 24},
        )["id"]
        for port, prefix in ((gw, "10.0.0.0"), (uplink, "203.0.113.0")):
            api.post(
                f"/routers/{r}/routes",
                {
                    "src_network_addr": "0.0.0.0", "src_network_length": 0,
                    "dst_network_addr": prefix, "dst_network_length": 24,
                    "type": "Normal", "next_hop_port": port, "weight": 100,
                },
            )  # fmt: skip
        interior = api.post(f"/bridges/{lan}/ports", {})["id"]
        api.post(f"/ports/{interior}/link", {"peer_id": gw})
        pool = [{"address_from": SNAT_FROM, "address_to": SNAT_TO,
                 "port_from": 1024, "port_to": 65535}]  # fmt: skip
        pre = self._chain("pre", {"type": "rev_snat", "in_ports": [uplink]})
        post = self._chain(
            "post",
            {"type": "snat", "out_ports": [uplink], "nw_src_address": VMS["va"][1],
             "nw_src_length": 32, "nat_targets": pool},
        )  # fmt: skip
        self._put(f"/routers/{r}", {"inbound_filter_id": pre, "outbound_filter_id": post})
        ports = {}
        for name, (role, _ip, _mac) in VMS.items():
            bridge_side = name != "ext"
            ports[name] = uplink if not bridge_side else api.post(f"/bridges/{lan}/ports", {})["id"]
            api.post(
                f"/hosts/{self.host(role).host_id}/ports",
                {"port_id": ports[name], "interface_name": f"tap-{name}"},
            )
        every = {"start": 1, "end": 65535}
        from_vp = self._chain("from-vp", {"type": "accept", "tp_src": every})
        to_vp = self._chain("to-vp", {"type": "accept", "tp_dst": every})
        self._put(
            f"/ports/{ports['vp']}", {"inbound_filter_id": from_vp, "outbound_filter_id": to_vp}
        )
        from_vf = self._chain("from-vf", {"type": "accept", "match_forward_flow": True})
        to_vf = self._chain(
            "to-vf",
            {"type": "accept", "dl_type": 0x0806},
            {"type": "accept", "match_return_flow": True},
            {"type": "drop"},
        )
        self._put(
            f"/ports/{ports['vf']}", {"inbound_filter_id": from_vf, "outbound_filter_id": to_vf}
        )
        for name, dst in (("va", EXT_IP), ("vb", EXT_IP), ("vp", EXT_IP), ("vf", VC_IP),
                          ("vb", VC_IP)):  # fmt: skip
            self.check_agents()
            ping_until(self.vms[name], dst, f"tessera: {name} cannot reach {dst}")
        self.log("topology up: every client reaches its server through the agents")


def settle(seconds: float) -> None:
    """A pause between measurements: the agents' background work (sweeps, saves) and
    the last measurement's stragglers should not land on the next one."""
    time.sleep(seconds)
