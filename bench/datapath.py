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

This file is the entry point (arguments, the run, the table); the sections live beside
it: ``dp_testbed.py`` (namespaces, devices, the bench's flows), ``dp_throughput.py``,
``dp_miss.py`` (the harness and the miss load generator, which runs as
``datapath.py --drive-misses``) and ``dp_agent.py`` (real agents, run through
``tessera.lab.agents`` like the lab's and the system tests').
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from common import (
    BENCH_ERRORS,
    BenchError,
    Lab,
    Row,
    Ticker,
    cpu_busy_fraction,
    machine,
    render,
    render_markdown,
    signals_raise,
)
from dp_agent import agent_rows
from dp_miss import drive_misses_here, miss_rows
from dp_testbed import PREFIX, Testbed
from dp_throughput import measure_modes, throughput_rows
from ovn_first_packet import ovn_rows


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
        default="throughput,miss,agent,ovn",
        help="comma-separated sections to run: throughput, miss, agent, ovn (OVN's first "
        "packet on this machine, bench/ovn_first_packet.py; n/a without OVN installed) "
        "(default: all)",
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
    if sections - {"throughput", "miss", "agent", "ovn"}:
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
            if "ovn" in sections:  # its own namespaces, after the bed's are gone
                rows += ovn_rows(samples // 2 if not args.quick else samples // 4, log)
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
