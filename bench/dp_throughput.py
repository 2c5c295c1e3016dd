"""Throughput and steady latency: baseline and tessera measured in back-to-back pairs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from common import (
    Netns,
    Pinger,
    Row,
    Throughput,
    iperf3,
    median,
    percentile,
    rtts,
)
from dp_testbed import IP_B, IP_C, Testbed

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
