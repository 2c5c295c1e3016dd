"""The L4 load balancer benchmark: connections through a VIP against straight to a member.

    sudo .venv/bin/python bench/l4lb.py [--quick] [--json | --markdown]
        [--rounds N] [--seconds S] [--connections N] [--spread N]

One run, one set of namespaces (``tslb-<run id>-*``, removed at the end even on failure
or Ctrl-C): two hosts served by real ``tessera agent`` processes (eBPF datapath)::

    h1: client lc 10.0.1.10 -- bridge cli -- 10.0.1.1 router r 10.0.0.1 -- bridge lan
    h2: members m1 10.0.0.11, m2 10.0.0.12, m3 10.0.0.13 on lan
    r's load balancer: VIP 10.0.2.100:8080 -> pool {m1, m2, m3}:8080, ROUND_ROBIN
                       VIP 10.0.2.101:5201 -> pool {m1}:5201 (one member: iperf3's two
                       connections must meet one server)

Every figure is printed next to a baseline measured in the same run, the same client
going straight to m1 through the same router (routed, not load balanced):

1. **New connections/s** through the VIP (each one a miss on both hosts: h1 chooses a
   member and pushes the bindings to h2, h2 translates the reply back) against straight
   to m1 (a miss on h2 only: a reply from a member's address is looked up by its ports,
   whether it is a VIP connection's or not, while the request needs no flow of its own),
   8 in flight, alternating pairs, median of the per-pair ratios.
2. **One TCP stream** (iperf3) through the second VIP against straight to m1: after the
   first packet every packet is a kernel flow that rewrites the destination (and the
   reply's source), so the goal is no loss.
3. **Spread**: N connections through the VIP, counted by each member's server; the
   chi-square statistic against equal shares and its p-value (2 degrees of freedom:
   p = exp(-x/2)). Weighted random choice per connection should give p well above 0.01.

The client (``st_tcp.py``) binds each connection to a source port never used before in
the run and closes it with an RST; every loop is bounded in count and time. Nothing is
asserted, it is measured and printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from common import (
    BENCH_ERRORS,
    BenchError,
    Lab,
    Netns,
    Row,
    Throughput,
    Ticker,
    cpu_busy_fraction,
    machine,
    percentile,
    render,
    render_markdown,
    signals_raise,
)
from datapath import machine_line
from dp_agent import Agents, agent_available
from dp_testbed import UNDERLAY_1, UNDERLAY_2
from st_measure import Side, connection_rates
from st_tcp import SERVER_PORT, SourcePorts, connects
from st_testbed import _underlay, _vm, ping_until, settle

PREFIX = "tslb"
CONCURRENCY = 8
VIP, VIP_IPERF = "10.0.2.100", "10.0.2.101"
IPERF_PORT = 5201
CLIENT = ("lc", "h1", "10.0.1.10", "02:00:00:0d:00:0a")
MEMBERS = {
    "m1": ("h2", "10.0.0.11", "02:00:00:0d:00:11"),
    "m2": ("h2", "10.0.0.12", "02:00:00:0d:00:12"),
    "m3": ("h2", "10.0.0.13", "02:00:00:0d:00:13"),
}

# argv: address, port, lifetime (s). Accepts and closes; SIGUSR1 prints the number of
# connections accepted so far. Ends after its lifetime.
COUNTING_SERVER = r"""
import signal, socket, sys, time
n = [0]
signal.signal(signal.SIGUSR1, lambda *_: print(n[0], flush=True))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4096)
s.settimeout(0.5)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        c, _ = s.accept()
    except OSError:
        continue
    n[0] += 1
    c.close()
"""


def preflight() -> None:
    if os.geteuid() != 0:
        raise BenchError("needs root (namespaces, eBPF): run it with sudo")
    for tool in ("ip", "tc", "nsenter", "iperf3", "clang", "bpftool", "ss"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed")
    why = agent_available()
    if why is not None:
        raise BenchError(f"tessera agents cannot run here: {why}")


class Testbed(Agents):
    """The namespaces, VMs and load balancer of the module doc."""

    def __init__(self, lab: Lab, log: Callable[[str], None]) -> None:
        h1, h2 = lab.netns("h1"), lab.netns("h2")
        super().__init__(lab, h1, h2, log)
        _underlay(h1, h2, UNDERLAY_1, UNDERLAY_2)
        by_role = {"h1": h1, "h2": h2}
        self.vms: dict[str, Netns] = {}
        name, role, ip, mac = CLIENT
        self.vms[name] = lab.netns(name)
        _vm(by_role[role], self.vms[name], f"tap-{name}", mac, f"{ip}/24", "10.0.1.1")
        for name, (role, ip, mac) in MEMBERS.items():
            self.vms[name] = lab.netns(name)
            _vm(by_role[role], self.vms[name], f"tap-{name}", mac, f"{ip}/24", "10.0.0.1")

    def _host_id(self, role: str) -> str:
        return next(h.host_id for h in self.hosts if h.role == role)

    def topology(self) -> None:
        api = self.http
        r = api.post("/routers", {"name": f"{self.lab.prefix}-r"})["id"]
        vms = {"cli": {CLIENT[0]: (CLIENT[1], CLIENT[2])},
               "lan": {k: (v[0], v[1]) for k, v in MEMBERS.items()}}  # fmt: skip
        for bridge_name, net in (("cli", "10.0.1"), ("lan", "10.0.0")):
            bridge = api.post("/bridges", {"name": f"{self.lab.prefix}-{bridge_name}"})["id"]
            gw = api.post(
                f"/routers/{r}/ports",
                {"port_address": f"{net}.1", "network_address": f"{net}.0",
                 "network_length": 24},
            )["id"]  # fmt: skip
            api.post(
                f"/routers/{r}/routes",
                {
                    "src_network_addr": "0.0.0.0", "src_network_length": 0,
                    "dst_network_addr": f"{net}.0", "dst_network_length": 24,
                    "type": "Normal", "next_hop_port": gw, "weight": 100,
                },
            )  # fmt: skip
            interior = api.post(f"/bridges/{bridge}/ports", {})["id"]
            api.post(f"/ports/{interior}/link", {"peer_id": gw})
            for name, (role, _ip) in vms[bridge_name].items():
                port = api.post(f"/bridges/{bridge}/ports", {})["id"]
                api.post(
                    f"/hosts/{self._host_id(role)}/ports",
                    {"port_id": port, "interface_name": f"tap-{name}"},
                )
        lb = api.post("/load_balancers", {"router_id": r})["id"]
        spread = api.post("/pools", {"load_balancer_id": lb})["id"]
        for _role, ip, _mac in MEMBERS.values():
            api.post("/pool_members", {"pool_id": spread, "address": ip,
                                       "protocol_port": SERVER_PORT})  # fmt: skip
        api.post("/vips", {"load_balancer_id": lb, "pool_id": spread, "address": VIP,
                           "protocol_port": SERVER_PORT})  # fmt: skip
        one = api.post("/pools", {"load_balancer_id": lb})["id"]
        api.post("/pool_members", {"pool_id": one, "address": MEMBERS["m1"][1],
                                   "protocol_port": IPERF_PORT})  # fmt: skip
        api.post("/vips", {"load_balancer_id": lb, "pool_id": one, "address": VIP_IPERF,
                           "protocol_port": IPERF_PORT})  # fmt: skip
        for name in MEMBERS:
            self.check_agents()
            ping_until(self.vms[CLIENT[0]], MEMBERS[name][1], f"lc cannot reach {name}")
        self.log("topology up: the client reaches every member through the agents")

    def misses(self) -> dict[str, int]:
        return {h.role: int(self.status(h)["misses"]) for h in self.hosts}


class Counters:
    """A counting server on each member; `counts()` asks each for its total so far."""

    def __init__(self, lab: Lab, bed: Testbed, lifetime: float) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for name, (_role, ip, _mac) in MEMBERS.items():
            ns = bed.vms[name]
            self.procs[name] = lab.popen(
                ns.argv(sys.executable, "-c", COUNTING_SERVER, ip, str(SERVER_PORT),
                        str(lifetime)),
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + 10
            while f"{ip}:{SERVER_PORT}" not in ns.run("ss", "-Hltn", check=False).stdout:
                if time.monotonic() > deadline:
                    raise BenchError(f"the counting server on {name} did not start")
                time.sleep(0.05)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, proc in self.procs.items():
            assert proc.stdout is not None
            proc.send_signal(signal.SIGUSR1)  # our child, by its pid (nsenter execs)
            ready, _, _ = select.select([proc.stdout], [], [], 5.0)
            if not ready:
                raise BenchError(f"the counting server on {name} did not answer")
            out[name] = int(proc.stdout.readline())
        return out


def chi_square_p(counts: list[int]) -> tuple[float, float]:
    """Pearson's statistic against equal shares, and its p-value for 2 degrees of
    freedom (three members): the chi-square survival function is exp(-x/2) there."""
    total = sum(counts)
    expected = total / len(counts)
    x = sum((c - expected) ** 2 / expected for c in counts)
    assert len(counts) == 3, "the closed form is for 2 degrees of freedom"
    return x, math.exp(-x / 2)


def iperf3_to(
    lab: Lab, client: Netns, server: Netns, bind: str, target: str, seconds: float
) -> Throughput:
    """One iperf3 stream from `client` to `target` (a VIP or the member itself), the
    server in `server` bound to `bind`; both bounded in time, the server stopped by pid."""
    srv = lab.popen(
        server.argv("iperf3", "-s", "-1", "-B", bind, "-p", str(IPERF_PORT)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while f":{IPERF_PORT} " not in server.run("ss", "-Hltn", check=False).stdout:
            if srv.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"iperf3 server in {server.name} did not start")
            time.sleep(0.05)
        secs = max(1, round(seconds))
        argv = client.argv(
            "iperf3", "-c", target, "-p", str(IPERF_PORT), "-t", str(secs), "-O", "1",
            "-P", "1", "-J", "--connect-timeout", "3000",
        )  # fmt: skip
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 20)
        except subprocess.TimeoutExpired:
            raise BenchError(f"iperf3 to {target} did not finish in {secs + 20} s") from None
        try:
            doc = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise BenchError(f"iperf3 to {target}: {proc.stderr.strip()[:200]}") from None
        if "error" in doc:
            raise BenchError(f"iperf3 to {target}: {doc['error']}")
        end = doc["end"]
        return Throughput(
            gbps=end["sum_received"]["bits_per_second"] / 1e9,
            retransmits=int(end["sum_sent"].get("retransmits", 0)),
            cpu_sender=0.0,
            cpu_receiver=0.0,
        )
    finally:
        lab.stop(srv)


def run(lab: Lab, p: dict[str, Any], log: Callable[[str], None]) -> list[Row]:
    bed = Testbed(lab, log)
    bed.start()
    bed.topology()
    client = bed.vms[CLIENT[0]]
    counters = Counters(lab, bed, 3600.0)
    ports = SourcePorts(client)
    connects(client, ports, VIP, 30, 10.0, 4)  # ARP and the routers' first flows
    connects(client, ports, MEMBERS["m1"][1], 10, 10.0, 4)
    direct = Side("straight to m1", client, ports, MEMBERS["m1"][1])
    via = Side("through the VIP", client, ports, VIP)
    rows: list[Row] = []

    misses0 = bed.misses()
    cps = connection_rates(
        direct, via, p["rounds"], p["connections"], p["conn_seconds"], CONCURRENCY, log,
        lambda: settle(0.5),
    )  # fmt: skip
    misses = {k: v - misses0[k] for k, v in bed.misses().items()}
    b, t = cps.times
    rows.append(
        Row("L4LB", f"new TCP connections/s, {CONCURRENCY} in flight", "straight to a member",
            percentile(cps.base, 50), percentile(cps.tessera, 50), "/s",
            note=f"failed: direct {cps.failed[0]}, VIP {cps.failed[1]}; connect p50 "
            f"{percentile(b, 50) * 1e3:.2f} ms direct, {percentile(t, 50) * 1e3:.2f} ms VIP; "
            f"agent misses h1 {misses['h1']}, h2 {misses['h2']}",
            samples={"baseline": cps.base, "tessera": cps.tessera}, paired_ratio=cps.ratio)
    )  # fmt: skip

    m1 = bed.vms["m1"]
    base_t: list[float] = []
    vip_t: list[float] = []
    retrans = [0, 0]
    for i in range(p["rounds"]):
        order = [0, 1] if i % 2 == 0 else [1, 0]
        for which in order:
            settle(0.5)
            target = MEMBERS["m1"][1] if which == 0 else VIP_IPERF
            got = iperf3_to(lab, client, m1, MEMBERS["m1"][1], target, p["seconds"])
            (base_t if which == 0 else vip_t).append(got.gbps)
            retrans[which] += got.retransmits
        log(f"throughput round {i + 1}: direct {base_t[-1]:.2f}, VIP {vip_t[-1]:.2f} Gbit/s")
    ratios = [v / d for d, v in zip(base_t, vip_t, strict=True) if d > 0]
    rows.append(
        Row("L4LB", "one TCP stream (iperf3) through a VIP", "straight to the member",
            percentile(base_t, 50), percentile(vip_t, 50), "Gbit/s", goal=">= 0.9",
            note=f"{p['rounds']} pairs, median of ratios; retransmits direct {retrans[0]}, "
            f"VIP {retrans[1]}",
            samples={"baseline": base_t, "tessera": vip_t},
            paired_ratio=sorted(ratios)[len(ratios) // 2] if ratios else None)
    )  # fmt: skip

    before = counters.counts()
    settle(0.5)
    done = connects(client, ports, VIP, p["spread"], p["spread_seconds"], CONCURRENCY)
    settle(0.5)
    after = counters.counts()
    got_each = [after[m] - before[m] for m in MEMBERS]
    x, pvalue = chi_square_p(got_each)
    each = ", ".join(f"{m} {n}" for m, n in zip(MEMBERS, got_each, strict=True))
    rows.append(
        Row("L4LB", f"spread over 3 members of {sum(got_each)} connections (chi-square p)",
            "", None, pvalue, "p", goal="> 0.01",
            note=f"per member {each}; chi-square {x:.2f}, 2 dof; {done.failed} failed",
            samples={"per_member": [float(n) for n in got_each]})
    )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="a short check (a few minutes)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--rounds", type=int, help="alternating baseline/VIP pairs")
    ap.add_argument("--seconds", type=float, help="iperf3 duration per measurement")
    ap.add_argument("--connections", type=int, help="connections per rate measurement")
    ap.add_argument("--spread", type=int, help="connections counted for the spread")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    p = {
        "rounds": args.rounds or (1 if args.quick else 3),
        "seconds": args.seconds or (2 if args.quick else 3),
        "connections": args.connections or (500 if args.quick else 2000),
        "conn_seconds": 2.0 if args.quick else 4.0,
        "spread": args.spread or (600 if args.quick else 3000),
        "spread_seconds": 30.0 if args.quick else 60.0,
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
                rows = run(lab, p, log)
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
