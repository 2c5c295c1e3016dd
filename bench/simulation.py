"""Benchmark of the simulation: complete simulations per second on one core.

Scenarios (each packet is a fresh TCP flow: its frame is parsed into a FlowMatch and
simulated, as an agent does on a miss):

  (a) bridge only: two VMs on one bridge, MACs learned, no filters;
  (b) bridge - router - bridge, every port on the path (VM ports and the interior ports
      of the links) with a 10-rule inbound and a 10-rule outbound chain, MACs and ARP
      learned — the packet crosses 6 ports, so 12 chains and 120 rules;
  (c) the same path inside a topology of 100 and of 10,000 ports: more bridges on the
      router, each port with its tenant's 10-rule chains, a route per subnet, full MAC
      and ARP tables. A simulation must not cost more as the cloud grows (goal: within
      10% of (b)); goal for (b): >= 20,000 simulations/s.

Timings are the best of several rounds (the machine may be shared), in one process.

    .venv/bin/python bench/simulation.py [--seconds 1.0] [--rounds 5] [--sizes 100,10000]
"""

from __future__ import annotations

import argparse
import gc
import platform
import time
import uuid
from dataclasses import dataclass, field

from tessera.model import Bridge, Chain, Port, PortRange, Route, Router, Rule, StoredObject
from tessera.packet import (
    ETH_TYPE_IPV4,
    PROTO_TCP,
    Ethernet,
    FlowMatch,
    IPv4,
    Tcp,
    ip_to_str,
    mac_to_str,
)
from tessera.simulation import Snapshot, Verdict, simulate

NOW = 1_700_000_000.0
PORTS_PER_BRIDGE = 10  # 9 VM ports and the link to the router


def _id() -> str:
    return str(uuid.uuid4())


@dataclass
class Cloud:
    objects: list[StoredObject] = field(default_factory=list)
    macs: dict[str, dict[tuple[int, int], str]] = field(default_factory=dict)
    arps: dict[str, dict[int, tuple[int, float]]] = field(default_factory=dict)

    def add(self, obj: StoredObject) -> str:
        self.objects.append(obj)
        return obj.id

    def chain(self, name: str) -> str:
        """A security-group-like chain: 9 rules that do not match the benchmark's flow
        (each reads a few fields and fails), then accept."""
        chain_id = _id()
        rule_ids = []
        for k in range(9):
            rule = Rule(
                id=_id(),
                chain_id=chain_id,
                type="drop",
                nw_proto=PROTO_TCP,
                nw_src_address=f"192.168.{k}.0",
                nw_src_length=24,
                tp_dst=PortRange(start=1000 + k, end=1000 + k),
            )
            rule_ids.append(self.add(rule))
        rule_ids.append(self.add(Rule(id=_id(), chain_id=chain_id, type="accept")))
        self.add(Chain(id=chain_id, name=name, rule_ids=rule_ids))
        return chain_id


def vm_mac(subnet: int, host: int) -> int:
    return 0x02_00_00_00_00_00 | subnet << 8 | host


def router_mac(subnet: int) -> int:
    return 0x02_7E_55_00_00_00 | subnet


def subnet_ip(subnet: int, host: int) -> int:
    return (10 << 24) | (subnet >> 8) << 16 | (subnet & 0xFF) << 8 | host


def build(
    total_ports: int, filtered: bool, routed: bool
) -> tuple[Snapshot, str, bytes, int, Cloud]:
    """A router with one bridge per subnet (10 ports each) up to `total_ports` ports;
    the benchmark's flow goes from a VM of subnet 0 to a VM of subnet 1.

    Returns the snapshot, the ingress port, a template frame, the number of ports and
    the objects."""
    cloud = Cloud()
    router_id = cloud.add(Router(id=_id(), name="r"))
    subnets = max(2, total_ports // PORTS_PER_BRIDGE) if routed else 1
    ingress = ""
    arp: dict[int, tuple[int, float]] = {}
    for s in range(subnets):
        tenant_chain = cloud.chain(f"sg-{s}") if filtered else None
        bridge_id = cloud.add(Bridge(id=_id(), name=f"b{s}"))
        macs: dict[tuple[int, int], str] = {}
        hosts = PORTS_PER_BRIDGE - 1 if routed else 2
        for h in range(1, hosts + 1):
            port_id = cloud.add(
                Port(
                    id=_id(),
                    device_id=bridge_id,
                    type="Bridge",
                    inbound_filter_id=tenant_chain,
                    outbound_filter_id=tenant_chain,
                )
            )
            macs[(0, vm_mac(s, h))] = port_id
            arp[subnet_ip(s, h + 10)] = (vm_mac(s, h), NOW + 3600)
            if s == 0 and h == 1:
                ingress = port_id
        cloud.macs[bridge_id] = macs
        if not routed:
            continue
        link_id, rport_id = _id(), _id()
        cloud.add(
            Port(
                id=link_id,
                device_id=bridge_id,
                type="Bridge",
                peer_id=rport_id,
                inbound_filter_id=tenant_chain,
                outbound_filter_id=tenant_chain,
            )
        )
        address = ip_to_str(subnet_ip(s, 1))
        cloud.add(
            Port(
                id=rport_id,
                device_id=router_id,
                type="Router",
                peer_id=link_id,
                port_address=address,
                network_address=address,
                network_length=24,
                port_mac=mac_to_str(router_mac(s)),
                inbound_filter_id=tenant_chain,
                outbound_filter_id=tenant_chain,
            )
        )
        cloud.add(
            Route(
                id=_id(),
                router_id=router_id,
                dst_network_addr=ip_to_str(subnet_ip(s, 0)),
                dst_network_length=24,
                next_hop_port=rport_id,
            )
        )
    cloud.arps[router_id] = arp
    snap = Snapshot.from_objects(cloud.objects, cloud.macs, cloud.arps)
    if routed:
        dst_mac, dst_ip = router_mac(0), subnet_ip(1, 12)
    else:
        dst_mac, dst_ip = vm_mac(0, 2), subnet_ip(0, 12)
    frame = Ethernet(
        dst_mac,
        vm_mac(0, 1),
        ETH_TYPE_IPV4,
        IPv4(subnet_ip(0, 11), dst_ip, PROTO_TCP, Tcp(40000, 80)),
    ).build()
    ports = sum(1 for o in cloud.objects if isinstance(o, Port))
    return snap, ingress, frame, ports, cloud


def rebuild_after_one_change(cloud: Cloud, snap: Snapshot) -> float:
    """Seconds to rebuild the snapshot after one rule changed, reusing compiled chains
    (what an agent does on a topology change)."""
    objects = list(cloud.objects)
    for i, obj in enumerate(objects):
        if isinstance(obj, Rule) and obj.type == "drop":
            objects[i] = obj.model_copy(update={"nw_proto": 17})
            break
    start = time.perf_counter()
    Snapshot.from_objects(objects, cloud.macs, cloud.arps, previous=snap)
    return time.perf_counter() - start


def flows(template: bytes, count: int = 256) -> list[bytes]:
    """`count` frames of distinct flows (source ports), as successive misses would be."""
    eth = Ethernet.parse(template)
    ip = eth.payload
    assert isinstance(ip, IPv4) and isinstance(ip.payload, Tcp)
    out = []
    for i in range(count):
        tcp = Tcp(30000 + i, ip.payload.dst_port)
        out.append(
            Ethernet(eth.dst, eth.src, eth.ethertype, IPv4(ip.src, ip.dst, ip.proto, tcp)).build()
        )
    return out


@dataclass
class Scenario:
    key: str
    label: str
    snap: Snapshot
    port: str
    frames: list[bytes]
    ports: int
    built: float
    rebuilt: float | None
    best: float = 0.0

    def check(self) -> None:
        frame = self.frames[0]
        first = simulate(self.snap, FlowMatch.from_frame(self.port, frame), frame, NOW)
        if first.verdict is not Verdict.FORWARD:
            raise SystemExit(f"{self.label}: the topology does not forward: {first.drop_reason}")

    def round(self, seconds: float) -> None:
        """Simulate for about `seconds`; keep the best rate seen."""
        snap, port, frames = self.snap, self.port, self.frames
        gc.collect()
        done = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for frame in frames:
                simulate(snap, FlowMatch.from_frame(port, frame), frame, NOW)
            done += len(frames)
            now = time.perf_counter()
            if now >= deadline:
                break
        self.best = max(self.best, done / (now - start))


def scenario(key: str, label: str, total: int, filtered: bool, routed: bool) -> Scenario:
    t0 = time.perf_counter()
    snap, port, template, ports, cloud = build(total, filtered, routed)
    built = time.perf_counter() - t0
    rebuilt = rebuild_after_one_change(cloud, snap) if filtered else None
    s = Scenario(key, label, snap, port, flows(template), ports, built, rebuilt)
    s.check()
    return s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="100,10000", help="port counts for (c)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]

    print(f"simulation benchmark — Python {platform.python_version()}, {platform.machine()}")
    scenarios = [
        scenario("a", "(a) bridge only", 2, filtered=False, routed=False),
        scenario("b", "(b) bridge-router-bridge, 10-rule chains", 20, True, True),
        *(scenario(f"c{n}", f"(c) same path, {n:,}-port topology", n, True, True) for n in sizes),
    ]
    # Rounds go round-robin over the scenarios, so that a load change on a shared
    # machine hits them all alike; each keeps its best round.
    for _ in range(args.rounds):
        for s in scenarios:
            s.round(args.seconds)
    base = next(s for s in scenarios if s.key == "b").best
    print(f"{'scenario':<44} {'ports':>7} {'build s':>8} {'sims/s':>9} {'us/sim':>7} {'vs (b)':>7}")
    for s in scenarios:
        ratio = f"{s.best / base:.2f}" if s.key.startswith("c") else "-"
        print(
            f"{s.label:<44} {s.ports:>7} {s.built:>8.2f} {s.best:>9,.0f} "
            f"{1e6 / s.best:>7.1f} {ratio:>7}"
        )
    for s in scenarios:
        if s.rebuilt is not None:
            print(
                f"snapshot of {s.ports:,} ports: built in {s.built:.2f} s, rebuilt after one "
                f"rule change in {s.rebuilt:.3f} s (unchanged chains reused)"
            )
    print(f"goal (b) >= 20,000 sims/s: {'met' if base >= 20_000 else 'NOT met'} ({base:,.0f})")
    for s in scenarios:
        if s.key.startswith("c"):
            share = s.best / base
            verdict = "met" if share >= 0.9 else "NOT met"
            print(f"goal (c) {s.ports:,} ports within 10% of (b): {verdict} ({share:.2f})")


if __name__ == "__main__":
    main()
