"""The datapath benchmark: every tessera figure next to a same-run kernel baseline.

    sudo .venv/bin/python bench/datapath.py [--quick] [--json | --markdown]
        [--rounds N] [--seconds S] [--samples N] [--only throughput,miss,agent]

One run, one set of namespaces (``tsrb-<run id>-*``, removed at the end even on
failure or Ctrl-C):

    va --tap-a--+                                  +--tap-c-- vc
    vb --tap-b--+ [h1] u1 198.18.0.1 ==== 198.18.0.2 u2 [h2]
                  br0 + vxb (plain VXLAN)           br0 + vxb
                  vx0 (external, tunnel_rx)         vx0 (external, tunnel_rx)

The same VM veths are switched between two modes; each throughput figure is measured in
back-to-back pairs (baseline then tessera, next round the other way round), and the
ratio is the median of the per-pair ratios, so that the load other users put on the
machine hits both sides of a pair alike:

- **baseline**: the host ends of the VM veths are ports of a Linux bridge; across hosts
  that bridge holds a plain kernel VXLAN device (``vxb``) to the other host.
- **tessera**: the host ends leave the bridge and run ``port_ingress``; flows are written
  into the pinned maps through ``EbpfFastPath`` the way the agent writes them: on one
  host a routed-style flow (lookup -> MAC rewrite -> TTL -1 -> ``bpf_redirect_peer``),
  across hosts a bridged flow (lookup -> OUTPUT_TUNNEL, VNI = the remote port), delivered
  on the far side by ``tunnel_rx`` (``vni_ports`` -> ``bpf_redirect_peer``).

Then the miss path: a first packet whose flow was deleted goes to userspace and back.
``miss harness`` rows use a minimal in-bench handler (MissChannel -> FlowMap.install ->
reinject, no simulation): the floor the agent's upcall loop sits on. ``agent`` rows then
hand the same host and VM namespaces to real ``tessera agent`` processes (ZooKeeper and
the API service run inside h1), build a bridge through the API and measure first
packets, misses per second and invalidation; without a usable agent they read
"n/a: agent not available".

Figures are medians over rounds (throughput) or percentiles over samples (latency);
nothing here is asserted, it is measured and printed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    BENCH_ERRORS,
    BenchError,
    Lab,
    Netns,
    NetnsHttp,
    Pinger,
    Row,
    Throughput,
    Ticker,
    cpu_busy_fraction,
    iperf3,
    machine,
    median,
    percentile,
    render,
    render_markdown,
    rtts,
    signals_raise,
    tail,
    unix_json,
    wait_for,
)

from tessera.datapath.base import (
    Action,
    DecTtl,
    Drop,
    Output,
    OutputTunnel,
    SetEthDst,
    SetEthSrc,
)
from tessera.datapath.ebpf import bpf
from tessera.datapath.ebpf.layout import FlowKey, FlowLookupKey, Stat
from tessera.datapath.ebpf.loader import DEFAULT_CACHE_DIR, EbpfFastPath, LoadError
from tessera.datapath.ebpf.maps import FastPathMaps, StatsMap
from tessera.datapath.ebpf.netns import run_in_netns
from tessera.datapath.ebpf.upcall import MissChannel
from tessera.lab.sandbox import cable_vm
from tessera.nsdb.zkserver import ZookeeperError, ZookeeperServer
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


# --- throughput and steady latency ----------------------------------------------------


SCENARIOS = {
    "one host": ("vb", IP_B),
    "two hosts": ("vc", IP_C),
}
BASELINE_NAME = {"one host": "Linux bridge", "two hosts": "kernel VXLAN + bridge"}


def measure_modes(
    bed: Testbed, rounds: int, seconds: float, pings: int, log: Callable[[str], None]
) -> tuple[dict[tuple[str, str], list[Throughput]], dict[tuple[str, str], list[float]]]:
    tput: dict[tuple[str, str], list[Throughput]] = defaultdict(list)
    lat: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in range(rounds):
        for scen, (vm, ip) in SCENARIOS.items():
            # Back to back, in ABBA order: a pair shares the machine's load of the moment.
            order = ("baseline", "tessera") if r % 2 == 0 else ("tessera", "baseline")
            for mode in order:
                bed.set_mode(mode)
                server: Netns = getattr(bed, vm)
                t = iperf3(bed.lab, bed.va, server, ip, seconds)
                tput[(scen, mode)].append(t)
                log(
                    f"round {r + 1}/{rounds} {scen:9} {mode:8} {t.gbps:6.2f} Gbit/s "
                    f"retr {t.retransmits}"
                )
                pinger = Pinger(bed.va)
                try:
                    got, _lost = rtts(pinger, ip, pings)
                finally:
                    pinger.close()
                lat[(scen, mode)] += got
    return tput, lat


def throughput_rows(
    tput: dict[tuple[str, str], list[Throughput]], lat: dict[tuple[str, str], list[float]]
) -> list[Row]:
    rows = []
    for scen in SCENARIOS:
        b, t = tput[(scen, "baseline")], tput[(scen, "tessera")]
        goal = ">= 0.9" if scen == "two hosts" else ""
        flow = "2x MAC + TTL + redirect_peer" if scen == "one host" else "OUTPUT_TUNNEL + tunnel_rx"
        bg = [x.gbps for x in b]
        tg = [x.gbps for x in t]
        pairs = [y / x for x, y in zip(bg, tg, strict=True) if x > 0]
        rows.append(
            Row(
                "throughput",
                f"TCP VM->VM, {scen}, 1 stream (median of {len(bg)})",
                BASELINE_NAME[scen],
                median(bg),
                median(tg),
                "Gbit/s",
                goal=goal,
                note=(
                    f"{flow}; ratio = median of paired ratios "
                    f"{', '.join(f'{x:.2f}' for x in pairs)}; range base "
                    f"{min(bg):.1f}-{max(bg):.1f}, tessera {min(tg):.1f}-{max(tg):.1f}"
                ),
                samples={
                    "baseline": bg,
                    "tessera": tg,
                    "paired_ratio": pairs,
                    "retransmits_baseline": [float(x.retransmits) for x in b],
                    "retransmits_tessera": [float(x.retransmits) for x in t],
                },
                paired_ratio=median(pairs) if pairs else None,
            )
        )
    for scen in SCENARIOS:
        b_ms = [x * 1e3 for x in lat[(scen, "baseline")]]
        t_ms = [x * 1e3 for x in lat[(scen, "tessera")]]
        for p in (50, 99):
            rows.append(
                Row(
                    "latency",
                    f"ping RTT VM->VM, {scen}, p{p} (n={len(t_ms)})",
                    BASELINE_NAME[scen],
                    percentile(b_ms, p),
                    percentile(t_ms, p),
                    "ms",
                    note="steady: flows installed",
                )
            )
    return rows


# --- the miss path through a minimal userspace handler -----------------------------------


class MissHarness(threading.Thread):
    """Miss -> install the flow the bench knows for it -> reinject; no simulation.

    What the agent's upcall loop costs beyond this is the simulation and its
    bookkeeping; what this costs beyond a hit is the trip through the miss veth, an
    AF_PACKET socket and two bpf(2) map calls. Unknown destinations get a Drop flow
    (the misses/s measurement sends those).
    """

    def __init__(self, bed: Testbed) -> None:
        super().__init__(daemon=True)
        self.bed = bed
        self.flows = bed.fp1.maps.flows
        self.known = {(f.key.in_port, bytes(f.key.eth_dst)): f for f in bed.h1_flows}
        self.channel = MissChannel("miss1", bed.h1.path)
        self.drop_keys: list[FlowKey] = []
        self._halt = threading.Event()

    def run(self) -> None:
        l2 = FlowKey.mask_of(L2_MASK)
        while not self._halt.is_set():
            miss = self.channel.recv(timeout=0.1)
            if miss is None:
                continue
            dst = miss.frame[:6]
            spec = self.known.get((miss.port, dst))
            if spec is not None:
                self.flows.install(spec.key, spec.mask, spec.actions, self.bed.devices)
            else:
                key = FlowKey.make(in_port=miss.port, eth_dst=dst)
                self.flows.install(key, l2, (Drop(),), {})
                self.drop_keys.append(key)
            self.channel.reinject(miss)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)
        self.channel.close()
        l2 = FlowKey.mask_of(L2_MASK)
        for key in self.drop_keys:
            self.flows.delete(key, l2)


def first_packet(bed: Testbed, samples: int) -> tuple[list[float], list[float], int]:
    """Per sample: delete A<->B's flows (a real miss each way), ping (first), ping
    again (steady, same flows, same moment). Returns (first, steady, lost) in seconds."""
    bed.set_mode("tessera")
    ab = [f for f in bed.h1_flows if f.key.in_port in (PORT_A, PORT_B) and f.mask.ip_dst]
    first: list[float] = []
    steady: list[float] = []
    lost = 0
    pinger = Pinger(bed.va)
    try:
        for _ in range(samples):
            for f in ab:
                bed.fp1.maps.flows.delete(f.key, f.mask)
            r1 = pinger.ping(IP_B, timeout=1.0)
            r2 = pinger.ping(IP_B, timeout=1.0)
            if r1 is None or r2 is None:
                lost += 1
                bed.install()
                continue
            first.append(r1)
            steady.append(r2)
            time.sleep(0.002)
    finally:
        pinger.close()
        bed.install()
    return first, steady, lost


def _udp_frame(dst_mac: bytes, i: int) -> bytes:
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        28,
        i & 0xFFFF,
        0,
        64,
        17,
        0,
        socket.inet_aton(IP_A),
        socket.inet_aton("10.77.9.9"),
    )
    return (
        dst_mac
        + bytes.fromhex(MAC_A.replace(":", ""))
        + b"\x08\x00"
        + ip
        + struct.pack("!HHHH", 40000, 9, 8, 0)
    )


@dataclass(frozen=True)
class MissRate:
    per_second: float
    handled: int
    sent: int


def drive_misses(lab: Lab, vm: Netns, stats_pin: Path, count: int, tag: int) -> MissRate:
    """Time how fast a host's miss handler (the bench's harness or an agent) turns new
    flows around, with the load generated by a separate process inside ``vm``: in this
    process it would compete for the GIL with the harness it measures."""
    argv = vm.argv(
        sys.executable,
        __file__,
        "--drive-misses",
        str(stats_pin),
        "--count",
        str(count),
        "--tag",
        str(tag),
    )
    proc = lab.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        raise BenchError("the miss load generator did not finish in 90 s") from None
    finally:
        lab.stop(proc)
    try:
        doc = json.loads(out)
    except json.JSONDecodeError:
        raise BenchError(f"miss load generator: {err.decode(errors='replace')[-200:]}") from None
    return MissRate(doc["per_second"], doc["handled"], doc["sent"])


def drive_misses_here(stats_pin: Path, count: int, tag: int) -> MissRate:
    """The load generator (runs inside the VM's namespace): ``count`` frames out of
    eth0, each to a MAC never seen (a new flow), at most ``window`` unanswered.

    "Answered" is read from the kernel: the host's INJECT_HIT + INJECT_MISS counters
    count every packet userspace wrote back after handling its miss, so the handler is
    watched without being asked. The closed loop keeps the handler busy without
    overflowing the miss veth; frames lost anyway (no progress for 0.2 s) are written
    off so the loop cannot stall. Rate = answers / time from the first to the last."""
    window = 128
    fd = bpf.obj_get(stats_pin)
    stats = StatsMap(fd)

    def reinjected() -> int:
        st = stats.read()
        return st[Stat.INJECT_HIT] + st[Stat.INJECT_MISS]

    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    base = reinjected()
    sent = written_off = n_first = last_n = 0
    first_t = last_t = 0.0
    stalled_since = time.perf_counter()
    deadline = time.monotonic() + 60
    try:
        sock.bind(("eth0", 0))
        while time.monotonic() < deadline:
            n = reinjected() - base
            now = time.perf_counter()
            if n != last_n:
                if not first_t:
                    first_t, n_first = now, n
                last_t, last_n, stalled_since = now, n, now
            if sent >= count and (n >= sent - written_off or now - stalled_since > 0.3):
                break
            if sent < count and sent - n - written_off < window:
                for _ in range(min(16, count - sent)):
                    mac = bytes([0x02, tag, (sent >> 16) & 255, (sent >> 8) & 255, sent & 255, 1])
                    sock.send(_udp_frame(mac, sent))
                    sent += 1
                continue
            if now - stalled_since > 0.2:
                written_off = sent - n
                stalled_since = now
            time.sleep(0.0002)
    finally:
        sock.close()
        os.close(fd)
    busy = last_t - first_t
    rate = (last_n - n_first) / busy if busy > 0 else float("nan")
    return MissRate(rate, last_n, sent)


def miss_rows(
    bed: Testbed, samples: int, count: int, log: Callable[[str], None]
) -> tuple[list[Row], float]:
    harness = MissHarness(bed)
    harness.start()
    try:
        first, steady, lost = first_packet(bed, samples)
        log(f"miss harness: {len(first)} first-packet samples, {lost} lost")
        bed.set_mode("tessera")
        mr = drive_misses(bed.lab, bed.va, bed.fp1.map_dir / "stats", count, tag=0x99)
        log(f"miss harness: {mr.handled}/{mr.sent} misses handled, {mr.per_second:,.0f}/s")
    finally:
        harness.stop()
    f_ms = [x * 1e3 for x in first]
    s_ms = [x * 1e3 for x in steady]
    rows = []
    for p in (50, 99):
        extra = percentile(f_ms, p) - percentile(s_ms, p)
        rows.append(
            Row(
                "miss harness",
                f"first-packet RTT (2 misses), p{p} (n={len(f_ms)})",
                "steady RTT",
                percentile(s_ms, p),
                percentile(f_ms, p),
                "ms",
                note=f"extra {extra:.3f} ms; no simulation; {lost} lost",
                samples={"first_ms": f_ms, "steady_ms": s_ms} if p == 50 else {},
            )
        )
    rows.append(
        Row(
            "miss harness",
            "misses handled per second, one thread",
            "",
            None,
            mr.per_second,
            "/s",
            note=f"install Drop + reinject, {mr.handled}/{mr.sent} handled",
        )
    )
    return rows, mr.per_second


# --- the real agent -------------------------------------------------------------------


AGENT_METRICS = (
    "first-packet RTT, one host (2 misses on h1), p50",
    "first-packet RTT, one host (2 misses on h1), p99",
    "first-packet RTT, two hosts (miss on h1 + on h2), p50",
    "first-packet RTT, two hosts (miss on h1 + on h2), p99",
    "misses handled per second, one agent",
    "invalidation, API change -> flows gone from both agents' maps, p50",
    "invalidation, API change -> flows gone from both agents' maps, p99",
)
API_PORT = 8181
INVALIDATION_TIMEOUT = 2.0


def tessera_exe() -> Path:
    return Path(sys.executable).with_name("tessera")


def agent_available() -> str | None:
    """None when real agents can be run here, else why not (one line)."""
    for mod in (
        "tessera.agent.cli",
        "tessera.agent.agent",
        "tessera.api.server",
        "tessera.datapath.ebpf_backend",
    ):
        try:
            if importlib.util.find_spec(mod) is None:
                return f"{mod} is not importable"
        except ImportError:
            return f"{mod} is not importable"
    exe = tessera_exe()
    if not exe.exists():
        return f"{exe} is missing"
    for args in (("agent", "--help"), ("api", "serve", "--help")):
        try:
            rc = subprocess.run([str(exe), *args], capture_output=True, timeout=60).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        if rc != 0:
            return f"`tessera {' '.join(args[:-1])}` does not run"
    try:
        ZookeeperServer._java()
    except ZookeeperError as e:
        return str(e)
    return None


def na_agent_rows(why: str) -> list[Row]:
    return [Row("agent", m, "", None, None, "ms", note=why) for m in AGENT_METRICS]


@dataclass
class AgentHost:
    role: str
    ns: Netns
    underlay: str
    host_id: str
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    maps: FastPathMaps | None = None


class AgentBed:
    """The same host and VM namespaces, now served by real ``tessera agent`` processes.

    ZooKeeper and the API service run inside h1 on its underlay address (so h2's agent
    reaches them over the underlay, as a remote agent would); the bench talks to the API
    through a thread that entered h1. Agents keep their flows in
    /sys/fs/bpf/tessera/<host id>, which the bench reads directly to see a flow vanish.
    """

    def __init__(self, bed: Testbed, log: Callable[[str], None]) -> None:
        self.bed = bed
        self.lab = bed.lab
        self.log = log
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.lab.prefix}-"))
        self.lab.last.append(lambda: shutil.rmtree(self.tmp, ignore_errors=True))
        self.hosts = [
            AgentHost("h1", bed.h1, UNDERLAY_1, str(uuid.uuid4())),
            AgentHost("h2", bed.h2, UNDERLAY_2, str(uuid.uuid4())),
        ]
        self.http = NetnsHttp(bed.h1, f"http://{UNDERLAY_1}:{API_PORT}/api/v1")
        self.lab.cleanups.append(self.http.close)
        self.chain_id = ""
        from tessera.datapath.ebpf_backend import DEFAULT_PIN_ROOT  # where agents pin

        self.pin_root = DEFAULT_PIN_ROOT
        if not self.pin_root.exists():  # the agents create it; leave nothing behind
            self.lab.last.append(lambda: _rmdir_if_empty(self.pin_root))

    def release_fast_path(self) -> None:
        """Hand the VM ports over: remove the bench's own programs, devices and pins."""
        b = self.bed
        for name, (ns, fp) in b.ports.items():
            fp.detach(name, remove_qdisc=True)
            ns.ip("link", "set", name, "nomaster")
        for ns in (b.h1, b.h2):
            for dev in ("vx0", "vxb", "br0"):
                ns.ip("link", "del", dev)
        b.h1.ip("link", "del", "miss0")
        b.fp1.purge()
        b.fp2.purge()
        b.mode = "agent"

    def start(self) -> None:
        exe = str(tessera_exe())
        zk = ZookeeperServer(self.tmp / "zk", host=UNDERLAY_1)
        self.lab.cleanups.append(zk.stop)
        try:
            run_in_netns(self.bed.h1.path, zk.start)
        except ZookeeperError as e:
            raise BenchError(f"ZooKeeper: {e}") from None
        nsdb = zk.url(f"tsrb{self.lab.run_id}")
        api_log = self.tmp / "api.log"
        with api_log.open("wb") as out:
            api = self.lab.popen(
                self.bed.h1.argv(
                    exe, "api", "serve", "--nsdb", nsdb, "--listen", f"{UNDERLAY_1}:{API_PORT}"
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

        def api_alive() -> None:
            if api.poll() is not None:
                raise BenchError(f"tessera api serve exited: {tail(api_log)}")

        wait_for(
            "the API service", lambda: self.http.get("/health") is not None, 60, check=api_alive
        )
        tz = self.http.post("/tunnel_zones", {"name": self.lab.prefix, "type": "vxlan"})
        env = {**os.environ, "TESSERA_RUN_DIR": str(self.tmp / "run")}
        for h in self.hosts:
            state = self.tmp / h.role
            if DEFAULT_CACHE_DIR.is_dir():  # the object the bench compiled: no second clang
                shutil.copytree(DEFAULT_CACHE_DIR, state / "bpf")
            self.lab.pins.append(self.pin_root / h.host_id)
            h.log = self.tmp / f"agent-{h.role}.log"
            with h.log.open("wb") as out:
                h.proc = self.lab.popen(
                    h.ns.argv(
                        exe,
                        "agent",
                        "--host-id",
                        h.host_id,
                        "--nsdb",
                        nsdb,
                        "--datapath",
                        "ebpf",
                        "--underlay-ip",
                        h.underlay,
                        "--tunnel-zone",
                        tz["id"],
                        "--state-dir",
                        str(state),
                        "--name",
                        f"{self.lab.prefix}-{h.role}",
                        "--log-level",
                        "WARNING",
                    ),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                )

        def alive() -> bool:
            hosts = {x["id"]: x for x in self.http.get("/hosts")}
            return all(hosts.get(h.host_id, {}).get("alive") for h in self.hosts)

        wait_for("agents registered alive", alive, 90, every=0.3, check=self.check_agents)
        self.log("agents alive")

    def check_agents(self) -> None:
        for h in self.hosts:
            if h.proc is not None and h.proc.poll() is not None:
                raise BenchError(f"agent {h.role} exited: {tail(h.log) if h.log else ''}")

    def topology(self) -> None:
        """One bridge, its inbound filter a chain (the ACL the invalidation edits),
        three ports bound to the VM veths; waits until both VMs answer through it."""
        br = self.http.post("/bridges", {"name": f"{self.lab.prefix}-br"})
        chain = self.http.post("/chains", {"name": f"{self.lab.prefix}-acl"})
        self.chain_id = chain["id"]
        obj = self.http.get(f"/bridges/{br['id']}")
        obj["inbound_filter_id"] = self.chain_id
        self.http.put(f"/bridges/{br['id']}", obj)
        h1, h2 = self.hosts
        for tap, host in (("tap-a", h1), ("tap-b", h1), ("tap-c", h2)):
            port = self.http.post(f"/bridges/{br['id']}/ports", {})
            self.http.post(
                f"/hosts/{host.host_id}/ports", {"port_id": port["id"], "interface_name": tap}
            )
        pinger = Pinger(self.bed.va)
        try:

            def reachable() -> bool:
                return all(pinger.ping(ip, timeout=0.3) is not None for ip in (IP_B, IP_C))

            wait_for(
                "VMs reachable through the agents",
                reachable,
                60,
                every=0.2,
                check=self.check_agents,
            )
        finally:
            pinger.close()
        for h in self.hosts:
            h.maps = FastPathMaps.open(self.pin_root / h.host_id / "maps")
            self.lab.cleanups.append(h.maps.close)
        self.log("topology up: VMs reachable through the agents")

    def status(self, h: AgentHost) -> dict[str, Any]:
        res: dict[str, Any] = unix_json(
            self.tmp / "run" / "agents" / f"{h.host_id}.sock", {"op": "status"}
        )
        return res

    def holds(self, h: AgentHost, key: FlowLookupKey) -> bool:
        assert h.maps is not None
        return h.maps.flows.map.lookup(key) is not None

    def installed(self) -> list[tuple[AgentHost, FlowLookupKey]]:
        out = []
        for h in self.hosts:
            assert h.maps is not None
            out += [(h, k) for k in h.maps.flows.map.collect_keys()]
        return out


def _rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def invalidation_and_first_packet(
    ab: AgentBed, samples: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Per sample, with A->B and A->C flowing in the agents' maps (h1 and h2):

    1. record the installed flows, change the bridge's ACL through the API (add an
       accept-all rule; the next sample deletes it), time until every recorded flow is
       gone from both agents' maps (polled straight from the pinned maps);
    2. after a 5 ms settle, ping B twice and C twice: each first reply needed two
       simulated misses (the request at A's port, the reply at B's or C's port, the
       latter on h2), each second one is the steady RTT of the same moment; these
       pings also leave the flows installed for the next sample's change.
    A sample whose flows did not all vanish within 2 s gives no first-packet figure
    (its next packets would not miss)."""
    pinger = Pinger(ab.bed.va)
    inval: list[float] = []
    per_host: dict[str, list[float]] = {"h1": [], "h2": []}
    api_rtt: list[float] = []
    after_api: list[float] = []  # flows gone, counted from the API's answer (< 0: before it)
    first: dict[str, list[float]] = {"one host": [], "two hosts": []}
    steady: dict[str, list[float]] = {"one host": [], "two hosts": []}
    lost = timeouts = unwarmed = 0
    rule_id: str | None = None
    misses_before = {h.role: int(ab.status(h)["misses"]) for h in ab.hosts}
    for ip in (IP_B, IP_C):
        pinger.ping(ip, timeout=1.0)
    try:
        for i in range(samples):
            ab.check_agents()
            pending = ab.installed()
            hosts_with_flows = {h.role for h, _ in pending}
            t0 = time.perf_counter()
            if rule_id is None:
                rule = ab.http.post(
                    f"/chains/{ab.chain_id}/rules", {"type": "accept", "position": 1}
                )
                rule_id = rule["id"]
            else:
                ab.http.delete(f"/rules/{rule_id}")
                rule_id = None
            api_rtt.append(time.perf_counter() - t0)
            gone_at: dict[str, float] = {}
            deadline = t0 + INVALIDATION_TIMEOUT
            while pending and time.perf_counter() < deadline:
                pending = [(h, k) for h, k in pending if ab.holds(h, k)]
                now = time.perf_counter()
                for role in hosts_with_flows - {h.role for h, _ in pending} - gone_at.keys():
                    gone_at[role] = now - t0
                if pending:
                    time.sleep(0.0002)
            if len(hosts_with_flows) < len(ab.hosts):
                unwarmed += 1  # a warm-up ping was lost: no flow to watch on some host
            elif pending:
                timeouts += 1
                if timeouts == 1:
                    left = [(h.role, k.mask_index, k.key.in_port) for h, k in pending]
                    log(f"agent: flows still installed 2 s after the change: {left[:4]}")
            else:
                inval.append(max(gone_at.values()))
                after_api.append(inval[-1] - api_rtt[-1])
                for role, t in gone_at.items():
                    per_host[role].append(t)
            time.sleep(0.005)
            for scen, ip in (("one host", IP_B), ("two hosts", IP_C)):
                r1 = pinger.ping(ip, timeout=2.0)
                r2 = pinger.ping(ip, timeout=1.0)
                if r1 is None or r2 is None:
                    lost += 1
                elif not pending:
                    first[scen].append(r1)
                    steady[scen].append(r2)
            if (i + 1) % 100 == 0:
                log(f"agent: {i + 1}/{samples} invalidation + first-packet samples")
    finally:
        pinger.close()
        if rule_id is not None:
            with contextlib.suppress(BenchError):
                ab.http.delete(f"/rules/{rule_id}")
    misses = {h.role: int(ab.status(h)["misses"]) - misses_before[h.role] for h in ab.hosts}
    return {
        "inval": inval,
        "per_host": per_host,
        "api": api_rtt,
        "after_api": after_api,
        "first": first,
        "steady": steady,
        "lost": lost,
        "timeouts": timeouts,
        "unwarmed": unwarmed,
        "misses": misses,
    }


def agent_rows(
    bed: Testbed, samples: int, count: int, harness_rate: float | None, log: Callable[[str], None]
) -> list[Row]:
    why = agent_available()
    if why is not None:
        log(f"agent rows: {why}")
        return na_agent_rows("n/a: agent not available")
    ab = AgentBed(bed, log)
    try:
        ab.release_fast_path()
        ab.start()
        ab.topology()
        res = invalidation_and_first_packet(ab, samples, log)
        h1 = ab.hosts[0]
        counted = ab.status(h1)["misses"]
        stats_pin = ab.pin_root / h1.host_id / "maps" / "stats"
        mr = drive_misses(ab.bed.lab, ab.bed.va, stats_pin, count, tag=0x98)
        counted = ab.status(h1)["misses"] - counted
        log(f"agent: {mr.handled}/{mr.sent} misses handled, {mr.per_second:,.0f}/s")
    except (*BENCH_ERRORS, OSError, KeyError, ValueError) as e:
        log(f"agent rows failed: {e}")
        return na_agent_rows(f"n/a: agent run failed: {str(e)[:120]}")
    rows = []
    goals = {50: "extra < 0.5 ms", 99: "extra < 2 ms"}
    misses = ", ".join(f"{r} {n}" for r, n in res["misses"].items())
    j = 0
    for scen in ("one host", "two hosts"):
        f_ms = [x * 1e3 for x in res["first"][scen]]
        s_ms = [x * 1e3 for x in res["steady"][scen]]
        for p in (50, 99):
            extra = percentile(f_ms, p) - percentile(s_ms, p)
            rows.append(
                Row(
                    "agent",
                    AGENT_METRICS[j] + f" (n={len(f_ms)})",
                    "steady RTT",
                    percentile(s_ms, p),
                    percentile(f_ms, p),
                    "ms",
                    goal=goals[p],
                    note=(
                        f"extra {extra:.3f} ms; {res['lost']} pings lost; misses counted by "
                        f"the agents over all samples: {misses}"
                    ),
                    samples={"first_ms": f_ms, "steady_ms": s_ms} if p == 50 else {},
                )
            )
            j += 1
    rows.append(
        Row(
            "agent",
            AGENT_METRICS[j],
            "miss harness",
            harness_rate,
            mr.per_second,
            "/s",
            note=(
                f"bridge flood flows to new MACs; {mr.handled}/{mr.sent} reinjected, "
                f"agent counted {counted} misses"
            ),
        )
    )
    i_ms = [x * 1e3 for x in res["inval"]]
    a_ms = [x * 1e3 for x in res["api"]]
    d_ms = [x * 1e3 for x in res["after_api"]]
    host_p50 = ", ".join(
        f"{r} p50 {percentile([x * 1e3 for x in v], 50):.1f} ms"
        for r, v in res["per_host"].items()
        if v
    )
    for k, p in ((j + 1, 50), (j + 2, 99)):
        rows.append(
            Row(
                "agent",
                AGENT_METRICS[k] + f" (n={len(i_ms)})",
                "API call itself",
                percentile(a_ms, p),
                percentile(i_ms, p),
                "ms",
                goal="< 50 ms" if p == 99 else "",
                note=(
                    f"ACL rule add/delete; {host_p50}; after the API's answer "
                    f"p{p} {percentile(d_ms, p):.1f} ms; {res['timeouts']} not gone in 2 s, "
                    f"{res['unwarmed']} skipped (warm-up ping lost)"
                ),
                samples={"invalidation_ms": i_ms, "api_ms": a_ms, "after_api_ms": d_ms}
                if p == 50
                else {},
            )
        )
    return rows


# --- main ------------------------------------------------------------------------------


def machine_line(info: dict[str, Any]) -> str:
    during = info.get("loadavg_during") or [0.0]
    return (
        f"machine: {info['cpu']}, {info['nproc']} cpus, {info['memory_gib']} GiB, "
        f"kernel {info['kernel']}; {info['date']}; load average {info['loadavg_start'][0]} "
        f"at start, {min(during):.2f}-{max(during):.2f} during; cores busy in the second "
        f"before start {info['cpu_busy_before']:.0%}"
    )


def preflight() -> None:
    if os.geteuid() != 0:
        raise BenchError("needs root (namespaces, eBPF): run it with sudo")
    for tool in ("ip", "tc", "nsenter", "iperf3", "clang", "bpftool", "ss"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--drive-misses"]:  # internal: the load generator process
        gen = argparse.ArgumentParser()
        gen.add_argument("--drive-misses", type=Path, required=True)
        gen.add_argument("--count", type=int, required=True)
        gen.add_argument("--tag", type=int, required=True)
        g = gen.parse_args(argv)
        print(json.dumps(vars(drive_misses_here(g.drive_misses, g.count, g.tag))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (about a minute)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument(
        "--markdown", action="store_true", help="print the table as Markdown (docs/performance.md)"
    )
    ap.add_argument("--rounds", type=int, help="alternating baseline/tessera rounds")
    ap.add_argument("--seconds", type=float, help="iperf3 duration per measurement")
    ap.add_argument("--samples", type=int, help="first-packet samples (>= 200 by default)")
    ap.add_argument(
        "--only",
        default="throughput,miss,agent",
        help="comma-separated sections to run: throughput, miss, agent (default: all)",
    )
    ap.add_argument(
        "--from-json", type=Path, metavar="FILE", help="print a saved --json run again, run nothing"
    )
    args = ap.parse_args(argv)
    if args.from_json is not None:
        try:
            saved = json.loads(args.from_json.read_text())
            saved_rows = [Row.from_dict(r) for r in saved["rows"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"error: cannot read {args.from_json}: {e}", file=sys.stderr)
            return 2
        print(render_markdown(saved_rows) if args.markdown else render(saved_rows))
        print()
        print(machine_line(saved["machine"]))
        return 0
    sections = {x.strip() for x in args.only.split(",") if x.strip()}
    if sections - {"throughput", "miss", "agent"}:
        print(f"error: unknown section in --only {args.only!r}", file=sys.stderr)
        return 2
    rounds = args.rounds or (1 if args.quick else 8)
    seconds = args.seconds or (2 if args.quick else 3)
    samples = args.samples or (200 if args.quick else 400)
    pings = 100 if args.quick else 200
    harness_misses = 10000 if args.quick else 30000
    agent_misses = 3000 if args.quick else 10000

    def log(msg: str) -> None:
        print(f"# {msg}", file=sys.stderr, flush=True)

    try:
        preflight()
    except BENCH_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = machine()
    info["cpu_busy_before"] = round(cpu_busy_fraction(1.0), 2)
    ticker = Ticker()
    ticker.start()
    lab = Lab(PREFIX)
    rows: list[Row] = []
    try:
        with signals_raise():
            try:
                log(f"namespaces {lab.prefix}-*")
                bed = Testbed(lab)
                if "throughput" in sections:
                    tput, lat = measure_modes(bed, rounds, seconds, pings, log)
                    rows += throughput_rows(tput, lat)
                harness_rate: float | None = None
                if "miss" in sections:
                    more, harness_rate = miss_rows(bed, samples, harness_misses, log)
                    rows += more
                stats = bed.stats()
                info["fast_path_stats"] = {
                    h: {s.name: v for s, v in st.items() if v} for h, st in stats.items()
                }
                if "agent" in sections:
                    rows += agent_rows(bed, samples, agent_misses, harness_rate, log)
            finally:
                lab.close()
    except BENCH_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; namespaces removed", file=sys.stderr)
        return 130
    finally:
        ticker.stop()
    info["loadavg_during"] = ticker.samples
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    info["params"] = {
        "rounds": rounds,
        "seconds": seconds,
        "samples": samples,
        "pings": pings,
        "harness_misses": harness_misses,
        "agent_misses": agent_misses,
        "quick": args.quick,
    }
    if args.json:
        print(json.dumps({"machine": info, "rows": [r.as_dict() for r in rows]}, indent=2))
    else:
        print(render_markdown(rows) if args.markdown else render(rows))
        print()
        print(machine_line(info))
        for host, st in info.get("fast_path_stats", {}).items():
            if st:
                print(f"bench fast path {host}: " + ", ".join(f"{k} {v}" for k, v in st.items()))

    return 0


if __name__ == "__main__":
    sys.exit(main())
