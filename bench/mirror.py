"""The mirror benchmark: what copying a flow to a capture port costs the flow itself.

    sudo .venv/bin/python bench/mirror.py [--quick] [--json | --markdown]
        [--rounds N] [--seconds S]
    .venv/bin/python bench/mirror.py --from-json run.json [--markdown]

One run, one set of namespaces (``tsmr-<run id>-*``, removed at the end even on failure
or Ctrl-C): two hosts served by real ``tessera agent`` processes (eBPF datapath):

    va 10.0.0.10 (h1) --- bridge lan --- vs 10.0.0.30 (h2)      iperf3 client -> server
    cap 10.9.0.10 (h2) on bridge tap: the capture VM, a mirror's `to_port`

One TCP stream (iperf3) va -> vs, in alternating pairs: without a mirror, then with a
mirror on va's port (inbound and outbound: every data segment and every ACK is copied,
through the tunnel, to cap on h2). The figure is the median of the per-pair ratios; the
copies that reached cap's interface are counted, so a "with" figure that copied nothing
would show. Nothing is asserted: it is measured and printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    BENCH_ERRORS,
    BenchError,
    Lab,
    Netns,
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
from dp_agent import Agents, agent_available
from dp_testbed import UNDERLAY_1, UNDERLAY_2, UNDERLAY_MTU
from st_testbed import ping_until, settle

from tessera.lab.sandbox import cable_vm

PREFIX = "tsmr"
SERVER_IP = "10.0.0.30"
# name: (host role, bridge, address/length, MAC)
VMS: dict[str, tuple[str, str, str, str]] = {
    "va": ("h1", "lan", "10.0.0.10/24", "02:00:00:0d:00:0a"),
    "vs": ("h2", "lan", f"{SERVER_IP}/24", "02:00:00:0d:00:30"),
    "cap": ("h2", "tap", "10.9.0.10/24", "02:00:00:0d:00:c0"),
}


def preflight() -> None:
    if os.geteuid() != 0:
        raise BenchError("needs root (namespaces, eBPF): run it with sudo")
    for tool in ("ip", "tc", "nsenter", "iperf3", "clang", "bpftool", "ss"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed")
    why = agent_available()
    if why is not None:
        raise BenchError(f"tessera agents cannot run here: {why}")


class MirrorBed(Agents):
    """The VMs of the module doc on two agent hosts, and the mirror to toggle."""

    def __init__(self, lab: Lab, log: Callable[[str], None]) -> None:
        h1, h2 = lab.netns("h1"), lab.netns("h2")
        super().__init__(lab, h1, h2, log)
        h1.ip("link", "add", "u1", "type", "veth", "peer", "name", "u2", "netns", h2.name)
        for ns, dev, addr in ((h1, "u1", UNDERLAY_1), (h2, "u2", UNDERLAY_2)):
            ns.ip("addr", "add", f"{addr}/24", "dev", dev)
            ns.ip("link", "set", dev, "mtu", str(UNDERLAY_MTU), "up")
        by_role = {"h1": h1, "h2": h2}
        self.vms: dict[str, Netns] = {}
        for name, (role, _bridge, cidr, mac) in VMS.items():
            vm = lab.netns(name)
            cable_vm(by_role[role], f"tap-{name}", vm, mac, cidr)
            self.vms[name] = vm
        self.ports: dict[str, str] = {}
        self.mirror = ""

    def topology(self) -> None:
        api = self.http
        bridges = {b: api.post("/bridges", {"name": f"{self.lab.prefix}-{b}"})["id"]
                   for b in ("lan", "tap")}  # fmt: skip
        hosts = {h.role: h.host_id for h in self.hosts}
        for name, (role, bridge, _cidr, _mac) in VMS.items():
            port = api.post(f"/bridges/{bridges[bridge]}/ports", {})["id"]
            api.post(f"/hosts/{hosts[role]}/ports",
                     {"port_id": port, "interface_name": f"tap-{name}"})  # fmt: skip
            self.ports[name] = port
        self.mirror = api.post(
            "/mirrors", {"name": f"{self.lab.prefix}-tap", "to_port_id": self.ports["cap"]}
        )["id"]
        self.check_agents()
        ping_until(self.vms["va"], SERVER_IP, "tessera: va cannot reach vs")
        self.log("topology up: va reaches vs through the agents")

    def mirrored(self, on: bool) -> None:
        """Put the mirror on va's port (both directions) or take it off."""
        path = f"/ports/{self.ports['va']}"
        ids = [self.mirror] if on else []
        port = self.http.get(path)
        self.http.put(path, {**port, "inbound_mirror_ids": ids, "outbound_mirror_ids": ids})
        settle(0.5)  # the flows it invalidates go; the next packet installs the new ones

    def captured(self) -> int:
        """Packets cap's eth0 has received so far."""
        # `ip -n` reads the namespace's own counters (/sys would be the root's).
        out = self.vms["cap"].ip("-s", "-j", "link", "show", "eth0", timeout=5)
        return int(json.loads(out.stdout)[0]["stats64"]["rx"]["packets"])


def run(lab: Lab, p: dict[str, Any], log: Callable[[str], None], info: dict[str, Any]) -> list[Row]:
    bed = MirrorBed(lab, log)
    bed.start()
    bed.topology()
    va, vs = bed.vms["va"], bed.vms["vs"]
    off: list[float] = []
    on: list[float] = []
    ratios: list[float] = []
    copies: list[int] = []
    for i in range(p["rounds"]):
        got: dict[bool, float] = {}
        for mirror_on in (False, True) if i % 2 == 0 else (True, False):
            bed.mirrored(mirror_on)
            before = bed.captured()
            t = iperf3(lab, va, vs, SERVER_IP, p["seconds"])
            got[mirror_on] = t.gbps
            if mirror_on:
                copies.append(bed.captured() - before)
        off.append(got[False])
        on.append(got[True])
        ratios.append(got[True] / got[False] if got[False] else 0.0)
        log(f"round {i + 1}/{p['rounds']}: off {got[False]:.2f} Gbit/s, on {got[True]:.2f} Gbit/s")
    bed.mirrored(False)
    info["copies_at_cap"] = copies
    note = (
        f"{p['rounds']} pairs, median of ratios; packets that reached the capture VM per "
        f"run with the mirror (data segments and ACKs): {', '.join(f'{c:,}' for c in copies)}"
    )
    return [
        Row("mirror", "one TCP stream (iperf3) h1 -> h2, mirrored to a VM on h2 (in + out)",
            "no mirror", percentile(off, 50), percentile(on, 50), "Gbit/s",
            note=note, samples={"baseline": off, "tessera": on},
            paired_ratio=percentile(ratios, 50))
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="a short check (about a minute)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--rounds", type=int, help="alternating without/with pairs")
    ap.add_argument("--seconds", type=float, help="iperf3 duration per measurement")
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
        "rounds": args.rounds or (2 if args.quick else 4),
        "seconds": args.seconds or (2 if args.quick else 4),
        "quick": args.quick,
    }

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
