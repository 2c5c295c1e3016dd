"""A simulation must not cost more as the cloud grows (Faucet keeps such a relative
check in its unit suite since an O(n^2) regression slipped through)."""

from __future__ import annotations

import time

from sim_topo import NOW, Topo, mac, tcp

from tessera.packet import FlowMatch, mac_from_str, mac_to_str
from tessera.simulation import Snapshot, Verdict, simulate


def routed_cloud(subnets: int) -> tuple[Snapshot, str, bytes]:
    """One router, one bridge per subnet with 9 VMs, every MAC and ARP entry learned,
    a filter on every port; the flow crosses subnet 0 -> subnet 1."""
    t = Topo()
    r = t.router()
    chain = t.chain()
    for k in range(5):
        t.rule(chain, "drop", nw_proto=6, tp_dst={"start": 1000 + k, "end": 1000 + k})
    ingress = None
    for s in range(subnets):
        br = t.bridge(f"b{s}")
        rp = t.router_port(r, f"10.{s >> 8}.{s & 255}.1/24", mac_to_str(0x027E55000000 | s))
        link = t.bridge_port(br)
        t.link(link, rp)
        t.route(r, f"10.{s >> 8}.{s & 255}.0/24", t.get(rp))
        for h in range(2, 11):
            vm = t.bridge_port(br, inbound_filter_id=chain.id)
            t.learn_mac(br, mac(s << 8 | h), vm)
            t.learn_arp(r, f"10.{s >> 8}.{s & 255}.{h}", mac(s << 8 | h), NOW + 60)
            ingress = ingress or vm
    assert ingress is not None
    frame = tcp(mac(2), mac_from_str("02:7e:55:00:00:00"), "10.0.0.2", "10.0.1.5")
    return t.snapshot(), ingress.id, frame


def best_time(snap: Snapshot, port: str, frame: bytes, n: int = 300, rounds: int = 5) -> float:
    assert simulate(snap, FlowMatch.from_frame(port, frame), frame, NOW).verdict is Verdict.FORWARD
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            simulate(snap, FlowMatch.from_frame(port, frame), frame, NOW)
        best = min(best, time.perf_counter() - start)
    return best


def test_simulation_cost_does_not_grow_with_the_topology() -> None:
    small = routed_cloud(2)
    large = routed_cloud(400)  # 4,400 ports, 400 routes, 3,600 MACs and ARP entries
    assert len(large[0].ports) > 100 * len(small[0].ports) // 3
    # Interleaved, so that a busy machine slows both alike.
    t_small, t_large = float("inf"), float("inf")
    for _ in range(2):
        t_small = min(t_small, best_time(*small))
        t_large = min(t_large, best_time(*large))
    assert t_large < 2 * t_small, f"{t_large / t_small:.2f}x slower with 200x the ports"
