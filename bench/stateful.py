"""The stateful L4 benchmark: SNAT, NATed throughput, the flow-state push, a firewall.

    sudo .venv/bin/python bench/stateful.py [--quick] [--json | --markdown]
        [--rounds N] [--seconds S] [--connections N] [--samples N]
    .venv/bin/python bench/stateful.py --from-json run.json [--markdown]

One run, one set of namespaces (``tsrs-<run id>-*``, removed at the end even on failure
or Ctrl-C): two hosts served by real ``tessera agent`` processes (eBPF datapath) and,
beside them, a Linux router doing nftables masquerade (``st_testbed.py`` draws both).
Every figure is printed next to a baseline measured in the same run:

1. **SNAT connections/s**: new TCP connections per second from a VM through the
   router's dynamic SNAT to an "external" VM on the other host (each connection: a miss
   on both hosts, a SNAT port, its state pushed to the egress host), against the same
   client and server through a Linux router doing ``nft`` masquerade. Goal >= 0.5x.
2. **NATed throughput**: one iperf3 stream through the SNAT against one from another VM
   on the same host through the same router to the same server, not NATed. Goal >= 0.9.
3. **First packet with flow state**: a new connection's connect time (SYN out, SYN-ACK
   back; a miss on each host either way) through the SNAT, its state pushed to the
   other host, against a VM whose filters read the L4 ports (so each of its connections
   misses on both hosts too) but keep no state: the difference is what the state and
   its push add. Goal: p50 extra < 0.2 ms. Beside it, the push on its own: the agent's
   ``FlowStateSender.send`` of one connection's entries, timed in the bench.
4. **Firewall connections/s**: a VM whose port has the conntrack firewall (its
   connections tracked, towards it only return flows) against a VM without one, both
   to a server on the other host.

The client (``st_tcp.py``) keeps 8 connections in flight, binds each to a source port
never used before in the run and closes it with an RST; every loop is bounded in
count and time. Nothing here is asserted, it is measured and printed. nftables is
needed for the baseline of (1) only (Debian: ``apt-get install nftables``); without it
that row reads n/a and the rest runs.
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
    iperf3,
    machine,
    percentile,
    render,
    render_markdown,
    signals_raise,
)
from datapath import machine_line
from dp_agent import agent_available
from dp_testbed import UNDERLAY_1, UNDERLAY_2
from st_measure import Log, Paired, Side, connection_rates, first_packets, push_timing, throughputs
from st_tcp import SourcePorts, connects, serve
from st_testbed import EXT_IP, PREFIX, VC_IP, Baseline, Tessera, nft_missing, settle

CONCURRENCY = 8
STALL_MS = 900.0


def preflight() -> None:
    if os.geteuid() != 0:
        raise BenchError("needs root (namespaces, eBPF): run it with sudo")
    for tool in ("ip", "tc", "nsenter", "iperf3", "clang", "bpftool", "ss"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed")
    why = agent_available()
    if why is not None:
        raise BenchError(f"tessera agents cannot run here: {why}")


def _ms(values: list[float]) -> list[float]:
    return [x * 1e3 for x in values]


def _stalled(ms: list[float]) -> str:
    """Connections that took over 0.9 s: a SYN or SYN-ACK was lost and the client's
    kernel retransmitted the SYN after its 1 s timeout."""
    return f"{sum(1 for x in ms if x > STALL_MS)}/{len(ms)} took > 0.9 s (SYN retransmitted)"


def _connect_times(paired: Paired) -> str:
    """Median and p99 connect time of both sides: a slow path shows why its rate is low."""
    b, t = _ms(paired.times[0]), _ms(paired.times[1])
    without = f"{percentile(b, 50):.2f}/{percentile(b, 99):.2f} ms without, " if b else ""
    return (
        f"connect p50/p99 {without}{percentile(t, 50):.2f}/{percentile(t, 99):.2f} ms with; "
        f"with: {_stalled(t)}"
    )


def run(lab: Lab, p: dict[str, Any], log: Log, info: dict[str, Any]) -> list[Row]:
    base = Baseline(lab)
    tess = Tessera(lab, log)
    tess.start()
    tess.topology()
    vm = tess.vms
    life = 3600.0  # the servers end by themselves at the latest after an hour
    serve(lab, base.server, EXT_IP, life)
    serve(lab, vm["ext"], EXT_IP, life)
    serve(lab, vm["vc"], VC_IP, life)
    clients = {"bva": base.client, **{k: vm[k] for k in ("va", "vb", "vp", "vf")}}
    ports = {name: SourcePorts(ns) for name, ns in clients.items()}
    warm = [("vb", EXT_IP), ("vb", VC_IP), ("va", EXT_IP)] + [("bva", EXT_IP)] * base.nat
    for name, dst in warm:
        connects(clients[name], ports[name], dst, 20, 10.0, 4)  # ARP, the wildcard flows
    nat_base = Side("nft masquerade", base.client, ports["bva"], EXT_IP)
    snat = Side("SNAT", vm["va"], ports["va"], EXT_IP)
    plain = Side("not NATed", vm["vb"], ports["vb"], EXT_IP)
    stateless = Side("per-connection flows, no state", vm["vp"], ports["vp"], EXT_IP)
    no_fw = Side("no firewall", vm["vb"], ports["vb"], VC_IP)
    fw = Side("conntrack firewall", vm["vf"], ports["vf"], VC_IP)
    n, secs, rounds = p["connections"], p["conn_seconds"], p["rounds"]

    def pause() -> None:
        settle(0.5)

    rows: list[Row] = []
    # 1. SNAT connections per second vs nft masquerade.
    misses0 = tess.misses()
    cps = connection_rates(
        nat_base if base.nat else None, snat, rounds, n, secs, CONCURRENCY, log, pause
    )
    b_cps = percentile(cps.base, 50) if base.nat else None
    note = f"failed: nft {cps.failed[0]}, tessera {cps.failed[1]}"
    if not base.nat:
        note = f"no baseline: {nft_missing()}; failed {cps.failed[1]}"
    misses = {k: v - misses0[k] for k, v in tess.misses().items()}
    rows.append(
        Row("SNAT", f"new TCP connections/s, {CONCURRENCY} in flight", "nft masquerade",
            b_cps, percentile(cps.tessera, 50), "/s", goal=">= 0.5x",
            note=f"{note}; {_connect_times(cps)}; agent misses h1 {misses['h1']}, "
            f"h2 {misses['h2']}",
            samples={"baseline": cps.base, "tessera": cps.tessera}, paired_ratio=cps.ratio)
    )  # fmt: skip
    # 4. The firewall (run right after: the same kind of figure).
    fwr = connection_rates(no_fw, fw, rounds, n, secs, CONCURRENCY, log, pause)
    rows.append(
        Row("firewall", f"new TCP connections/s, {CONCURRENCY} in flight", "no firewall",
            percentile(fwr.base, 50), percentile(fwr.tessera, 50), "/s",
            note=f"failed: without {fwr.failed[0]}, with {fwr.failed[1]}; {_connect_times(fwr)}",
            samples={"baseline": fwr.base, "tessera": fwr.tessera}, paired_ratio=fwr.ratio)
    )  # fmt: skip
    # 2. Throughput, NATed vs not.
    tput, _raw = throughputs(lab, vm["ext"], plain, snat, rounds, p["seconds"], log)
    masq = ""
    if base.nat:
        t = iperf3(lab, base.client, base.server, EXT_IP, p["seconds"])
        masq = f"; Linux router + nft masquerade, same client: {t.gbps:.2f} Gbit/s"
    rows.append(
        Row("SNAT", "one TCP stream (iperf3) through the SNAT", "not NATed, same router",
            percentile(tput.base, 50), percentile(tput.tessera, 50), "Gbit/s", goal=">= 0.9",
            note=f"{rounds} pairs, median of ratios{masq}",
            samples={"baseline": tput.base, "tessera": tput.tessera}, paired_ratio=tput.ratio)
    )  # fmt: skip
    # 3. First packet with state pushed to the other host.
    misses0 = tess.misses()
    b_first, t_first, failed = first_packets(stateless, snat, p["samples"], log)
    misses = {k: v - misses0[k] for k, v in tess.misses().items()}
    per_conn = sum(misses.values()) / max(1, len(b_first) + len(t_first))
    bm, tm = _ms(b_first), _ms(t_first)
    for q in (50, 99):
        extra = percentile(tm, q) - percentile(bm, q)
        rows.append(
            Row("flow state", f"first packet (connect) through SNAT, state pushed, p{q}"
                f" (n={len(tm)})", "no state", percentile(bm, q), percentile(tm, q), "ms",
                goal="extra < 0.2 ms" if q == 50 else "",
                note=f"extra {extra:.3f} ms; {failed} failed; {per_conn:.1f} misses/connection; "
                f"no state {_stalled(bm)}, SNAT {_stalled(tm)}",
                samples={"baseline_ms": bm, "tessera_ms": tm} if q == 50 else {})
        )  # fmt: skip
    sent, delivered, lost = push_timing(
        tess.hosts[0].ns, UNDERLAY_1, tess.hosts[1].ns, UNDERLAY_2, p["push_samples"]
    )
    sm, dm = _ms(sent), _ms(delivered)
    for q in (50, 99):
        rows.append(
            Row("flow state", f"push alone: FlowStateSender.send, 2 SNAT entries, p{q}",
                "", None, percentile(sm, q), "ms", goal="< 0.2 ms" if q == 50 else "",
                note=f"sent -> in h2's socket p{q} {percentile(dm, q):.3f} ms; {lost} lost",
                samples={"send_ms": sm, "delivered_ms": dm} if q == 50 else {})
        )  # fmt: skip
    info["agent_misses"] = tess.misses()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="a short check (a few minutes)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--rounds", type=int, help="alternating baseline/tessera pairs")
    ap.add_argument("--seconds", type=float, help="iperf3 duration per measurement")
    ap.add_argument("--connections", type=int, help="connections per rate measurement")
    ap.add_argument("--samples", type=int, help="first-packet samples per path")
    ap.add_argument(
        "--from-json", type=Path, metavar="FILE", help="print a saved --json run again, run nothing"
    )
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
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
    p = {
        "rounds": args.rounds or (1 if args.quick else 3),
        "seconds": args.seconds or (2 if args.quick else 3),
        "connections": args.connections or (1000 if args.quick else 4000),
        "conn_seconds": 2.0 if args.quick else 4.0,
        "samples": args.samples or (100 if args.quick else 300),
        "push_samples": 200 if args.quick else 1000,
        "quick": args.quick,
    }

    def log(msg: str) -> None:
        print(f"# {msg}", file=sys.stderr, flush=True)

    try:
        preflight()
    except BENCH_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if (why := nft_missing()) is not None:
        log(f"{why}: the masquerade baseline will read n/a")
    info = machine()
    info["cpu_busy_before"] = round(cpu_busy_fraction(1.0), 2)
    ticker = Ticker()
    ticker.start()
    lab = Lab(PREFIX)
    try:
        with signals_raise():
            try:
                log(f"namespaces {lab.prefix}-*")
                rows = run(lab, p, log, info)
            finally:
                lab.close()
    except (*BENCH_ERRORS, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; namespaces removed", file=sys.stderr)
        return 130
    finally:
        ticker.stop()
    info["loadavg_during"] = ticker.samples
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    info["params"] = p
    if args.json:
        print(json.dumps({"machine": info, "rows": [r.as_dict() for r in rows]}, indent=2))
    else:
        print(render_markdown(rows) if args.markdown else render(rows))
        print()
        print(machine_line(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
