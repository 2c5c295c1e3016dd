"""OVN's first-packet cost measured on this machine, the way tessera's agent bench does.

    sudo .venv/bin/python bench/ovn_first_packet.py [--samples N] [--json]
    .venv/bin/python bench/ovn_first_packet.py --from-json FILE   # print a saved run

Why it exists: the goal "first packet at least as fast as OVN's" was checked against an
OVN figure measured months ago on another machine kind (OVN 23.03, OVS userspace
datapath, first ping after a megaflow purge: extra RTT p50 0.27 ms across a logical
switch, 0.43 ms through a logical router). A ratio across machine kinds says little, so
this script measures OVN here, with the method of ``bench/dp_agent.py``'s first-packet
rows: per sample, the megaflows of the chassis crossed are removed (``revalidator/purge``
then ``dpctl/del-flows``, ``dpctl/dump-flows`` checked empty; see ``Chassis.purge`` for
why ``del-flows`` alone is not enough), then VM A pings the target twice from one raw
ICMP socket (``common.Pinger``): the first reply needed upcalls (one chassis: request
and reply; two chassis: three on each, the tunnel pop recirculates), the second is the
steady RTT of the same moment; "extra" is first minus steady at the same percentile.
The upcall counters are read around each pair and reported. VMs have static neighbours,
so the first packet is the ICMP echo, not ARP.

It is not part of the test suite and asserts nothing. It needs root, the Debian packages
``ovn-central ovn-host openvswitch-switch`` (their system services are not used; they
may stay stopped) and nothing else. Everything runs in this run's namespaces
(``tsro-<pid>-<run id>-*``) and a temp dir:

    central  ovsdb-server NB, ovsdb-server SB, ovn-northd (unix sockets in the temp dir)
    h1, h2   chassis: ovsdb-server (conf.db), ovs-vswitchd, ovn-controller;
             br-int (datapath_type=netdev: the OVS userspace datapath) and br-phy
             (netdev, the underlay veth u1/u2 and 198.18.0.1/.2), Geneve between them
    va vb vd on h1, vc ve on h2: VMs cabled by veth; ls1 = A B C, ls2 = D E, lr joins them

Rows: A->B (switch, one chassis), A->C (switch, two chassis), A->D (router, one chassis),
A->E (router, two chassis). Every process is stopped by its pid, every namespace and the
temp dir removed, on success, failure, Ctrl-C or SIGTERM; nothing is routed outside the
machine, and the root namespace's links and routes are not touched (the daemons all run
in the run's namespaces; ``central`` listens on unix sockets only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    BENCH_ERRORS,
    BenchError,
    Lab,
    Netns,
    Pinger,
    Row,
    Ticker,
    cpu_busy_fraction,
    fmt,
    machine,
    percentile,
    signals_raise,
    tail,
    wait_for,
)

from tessera.lab.sandbox import cable_vm

OVS_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
NB_SCHEMA = Path("/usr/share/ovn/ovn-nb.ovsschema")
SB_SCHEMA = Path("/usr/share/ovn/ovn-sb.ovsschema")
TOOLS = (
    "ovsdb-tool",
    "ovsdb-server",
    "ovs-vswitchd",
    "ovs-vsctl",
    "ovs-appctl",
    "ovn-northd",
    "ovn-controller",
    "ovn-nbctl",
    "ip",
    "nsenter",
)
CMD_TIMEOUT = 60.0
VM_MTU = 1400  # room for Geneve on a 1500-byte underlay

# The reference figure this one is set beside (another machine kind, months ago).
REFERENCE = {
    "switch": "0.27 ms p50 on the reference machine",
    "router": "0.43 ms p50 on the reference machine",
}


@dataclass(frozen=True)
class Vm:
    role: str
    chassis: str
    switch: str
    mac: str
    ip: str


GW = {  # logical router port per switch: (name, MAC, address, subnet)
    "ls1": ("lrp1", "02:00:00:78:01:01", "10.78.1.1", "10.78.1.0/24"),
    "ls2": ("lrp2", "02:00:00:78:02:01", "10.78.2.1", "10.78.2.0/24"),
}
VMS = (
    Vm("a", "h1", "ls1", "02:00:00:78:00:0a", "10.78.1.11"),
    Vm("b", "h1", "ls1", "02:00:00:78:00:0b", "10.78.1.12"),
    Vm("c", "h2", "ls1", "02:00:00:78:00:0c", "10.78.1.13"),
    Vm("d", "h1", "ls2", "02:00:00:78:00:0d", "10.78.2.14"),
    Vm("e", "h2", "ls2", "02:00:00:78:00:0e", "10.78.2.15"),
)
BY_ROLE = {v.role: v for v in VMS}


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    target: str  # VM role pinged from A
    chassis: tuple[str, ...]  # where the packets go through a datapath
    kind: str  # "switch" or "router"


SCENARIOS = (
    Scenario("switch_one", "logical switch, one chassis (A->B)", "b", ("h1",), "switch"),
    Scenario("switch_two", "logical switch, two chassis (A->C)", "c", ("h1", "h2"), "switch"),
    Scenario("router_one", "logical router, one chassis (A->D)", "d", ("h1",), "router"),
    Scenario("router_two", "logical router, two chassis (A->E)", "e", ("h1", "h2"), "router"),
)


def run(argv: Sequence[str], timeout: float = CMD_TIMEOUT) -> str:
    """A bounded command; its failure is a one-line BenchError."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"'{' '.join(argv[:4])}' did not finish in {timeout:g} s") from None
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()
        raise BenchError(f"'{' '.join(argv[:4])}' failed: {why[-1] if why else proc.returncode}")
    return proc.stdout


def version(exe: str) -> str:
    try:
        return run([exe, "--version"], timeout=10).splitlines()[0].strip()
    except (BenchError, IndexError, OSError):
        return f"{exe}: unknown"


def daemon_env(rundir: Path) -> dict[str, str]:
    """Every default path of OVS and OVN (pid files, sockets, br-int.mgmt) in ``rundir``,
    never /var/run/openvswitch or /var/run/ovn of the system."""
    d = str(rundir)
    env = dict(os.environ)
    for var in ("OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"):
        env[var] = d
    for var in ("OVN_RUNDIR", "OVN_DBDIR", "OVN_LOGDIR", "OVN_SYSCONFDIR"):
        env[var] = d
    return env


class Daemons:
    """Starts OVS/OVN daemons in the foreground inside a namespace, through the Lab (so
    that they are stopped by pid at its close), and waits for their control socket."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def start(
        self, ns: Netns, rundir: Path, name: str, argv: Sequence[str], unixctl: bool = True
    ) -> Path:
        """The daemon's control socket, once it exists. ``unixctl=False``: the daemon
        has no --unixctl option (ovn-controller) and makes <name>.<pid>.ctl itself."""
        log = rundir / f"{name}.log"
        ctl = rundir / f"{name}.ctl"
        full = [*argv, f"--pidfile={rundir / name}.pid", f"--log-file={log}", "-vconsole:off"]
        if unixctl:
            full.append(f"--unixctl={ctl}")
        with (rundir / f"{name}.out").open("wb") as out:
            proc = self.lab.popen(
                ns.argv(*full),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=daemon_env(rundir),
            )

        def alive() -> None:
            if proc.poll() is not None:
                raise BenchError(
                    f"{name} in {ns.name} exited: {tail(log) or tail(rundir / f'{name}.out')}"
                )

        if not unixctl:
            ctl = rundir / f"{name}.{proc.pid}.ctl"  # nsenter execs: the daemon's own pid
        wait_for(f"{name} in {ns.name}", ctl.exists, 30, every=0.05, check=alive)
        return ctl


@dataclass
class Chassis:
    name: str
    ns: Netns
    rundir: Path
    underlay: str
    mac: str  # br-phy's, the tunnel endpoint's
    vswitchd: Path = field(default=Path())

    @property
    def db(self) -> str:
        return f"unix:{self.rundir / 'db.sock'}"

    def vsctl(self, *args: str) -> str:
        return run(["ovs-vsctl", f"--db={self.db}", "--timeout=30", *args])

    def appctl(self, *args: str) -> str:
        return run(["ovs-appctl", "-t", str(self.vswitchd), *args], timeout=20)

    def upcalls(self) -> tuple[int, int]:
        """(successful, failed) upcalls of the userspace datapath so far, all threads."""
        out = self.appctl("dpif-netdev/pmd-stats-show")
        ok = sum(int(x) for x in re.findall(r"miss with success upcall:\s*(\d+)", out))
        bad = sum(int(x) for x in re.findall(r"miss with failed upcall:\s*(\d+)", out))
        return ok, bad

    def flows(self) -> int:
        out = self.appctl("dpctl/dump-flows")
        return sum(1 for line in out.splitlines() if "actions:" in line)

    def purge(self, tries: int = 5) -> bool:
        """Remove every megaflow; True once ``dpctl/dump-flows`` is empty.

        ``dpctl/del-flows`` alone is not enough: the revalidators keep their record
        (ukey) of each deleted flow, the next upcall for it then fails to install
        ("handler_duplicate_upcall") and every later packet is an upcall too, so the
        "steady" ping would be a miss as well. ``revalidator/purge`` drops the flows and
        their ukeys; ``del-flows`` after it catches any flow without one."""
        for _ in range(tries):
            self.appctl("revalidator/purge")
            self.appctl("dpctl/del-flows")
            if self.flows() == 0:
                return True
        return False


class OvnLab:
    """The central, two chassis and five VMs of one run (see the module docstring)."""

    def __init__(self, lab: Lab, log: Callable[[str], None]) -> None:
        self.lab = lab
        self.log = log
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-", dir="/tmp"))
        lab.last.append(lambda: shutil.rmtree(self.tmp, ignore_errors=True))
        self.daemons = Daemons(lab)
        self.central = lab.netns("central")
        self.chassis = {
            "h1": Chassis(
                "h1", lab.netns("h1"), self.tmp / "h1", "198.18.0.1", "02:00:00:12:00:01"
            ),
            "h2": Chassis(
                "h2", lab.netns("h2"), self.tmp / "h2", "198.18.0.2", "02:00:00:12:00:02"
            ),
        }
        self.vms = {v.role: lab.netns(f"v{v.role}") for v in VMS}
        self.nb = f"unix:{self.tmp / 'central' / 'nb.sock'}"
        self.sb = f"unix:{self.tmp / 'central' / 'sb.sock'}"

    def nbctl(self, *args: str) -> str:
        return run(["ovn-nbctl", f"--db={self.nb}", "--timeout=60", *args], timeout=70)

    def start_central(self) -> None:
        d = self.tmp / "central"
        d.mkdir()
        for db, schema in (("nb", NB_SCHEMA), ("sb", SB_SCHEMA)):
            run(["ovsdb-tool", "create", str(d / f"{db}.db"), str(schema)])
            self.daemons.start(
                self.central,
                d,
                f"ovsdb-{db}",
                ["ovsdb-server", str(d / f"{db}.db"), f"--remote=punix:{d / db}.sock"],
            )
        self.daemons.start(
            self.central,
            d,
            "ovn-northd",
            ["ovn-northd", f"--ovnnb-db={self.nb}", f"--ovnsb-db={self.sb}"],
        )
        self.log("central: NB, SB, northd up")

    def underlay(self) -> None:
        h1, h2 = self.chassis["h1"], self.chassis["h2"]
        h1.ns.ip("link", "add", "u1", "type", "veth", "peer", "name", "u2", "netns", h2.ns.name)
        for ch, dev in ((h1, "u1"), (h2, "u2")):
            ch.ns.ip("link", "set", dev, "up")

    def start_chassis(self, ch: Chassis, peer: Chassis, dev: str) -> None:
        ch.rundir.mkdir()
        conf = ch.rundir / "conf.db"
        run(["ovsdb-tool", "create", str(conf), str(OVS_SCHEMA)])
        self.daemons.start(
            ch.ns,
            ch.rundir,
            "ovsdb-server",
            ["ovsdb-server", str(conf), f"--remote=punix:{ch.rundir / 'db.sock'}"],
        )
        ch.vsctl("--no-wait", "init")
        ch.vswitchd = self.daemons.start(ch.ns, ch.rundir, "ovs-vswitchd", ["ovs-vswitchd", ch.db])
        # The underlay: br-phy holds the veth and the tunnel endpoint's address, the
        # userspace datapath's native tunnelling routes Geneve through it.
        ch.vsctl(
            "add-br", "br-phy",
            "--", "set", "Bridge", "br-phy", "datapath_type=netdev", "fail_mode=standalone",
            f"other_config:hwaddr={ch.mac}",
            "--", "add-port", "br-phy", dev,
        )  # fmt: skip
        ch.ns.ip("addr", "add", f"{ch.underlay}/15", "dev", "br-phy")
        ch.ns.ip("link", "set", "br-phy", "up")
        ch.vsctl(
            "add-br", "br-int",
            "--", "set", "Bridge", "br-int", "datapath_type=netdev", "fail_mode=secure",
            "other_config:disable-in-band=true",
        )  # fmt: skip
        ch.appctl("ovs/route/add", f"{peer.underlay}/32", "br-phy")
        ch.appctl("tnl/arp/set", "br-phy", peer.underlay, peer.mac)
        ch.vsctl(
            "set", "Open_vSwitch", ".",
            f"external_ids:system-id={self.lab.prefix}-{ch.name}",
            f"external_ids:hostname={self.lab.prefix}-{ch.name}",
            f"external_ids:ovn-remote={self.sb}",
            "external_ids:ovn-encap-type=geneve",
            f"external_ids:ovn-encap-ip={ch.underlay}",
            "external_ids:ovn-bridge=br-int",
            "external_ids:ovn-bridge-datapath-type=netdev",
        )  # fmt: skip
        self.daemons.start(
            ch.ns, ch.rundir, "ovn-controller", ["ovn-controller", ch.db], unixctl=False
        )
        self.log(f"{ch.name}: ovsdb-server, ovs-vswitchd (netdev), ovn-controller up")

    def cable_vms(self) -> None:
        for v in VMS:
            ch, vm = self.chassis[v.chassis], self.vms[v.role]
            tap = f"tap-{v.role}"
            cable_vm(ch.ns, tap, vm, v.mac, f"{v.ip}/24", mtu=VM_MTU)
            ch.vsctl(
                "add-port", "br-int", tap,
                "--", "set", "Interface", tap, f"external_ids:iface-id=lsp-{v.role}",
            )  # fmt: skip
            # Static neighbours (the first packet is the echo, not ARP), and the router.
            _, gw_mac, gw_ip, _ = GW[v.switch]
            vm.ip("neigh", "replace", gw_ip, "lladdr", gw_mac, "dev", "eth0", "nud", "permanent")
            for o in VMS:
                if o.role != v.role and o.switch == v.switch:
                    vm.ip("neigh", "replace", o.ip, "lladdr", o.mac, "dev", "eth0",
                          "nud", "permanent")  # fmt: skip
            for sw, (_, _, _, subnet) in GW.items():
                if sw != v.switch:
                    vm.ip("route", "add", subnet, "via", gw_ip, "dev", "eth0")

    def topology(self) -> None:
        cmds: list[str] = ["ls-add", "ls1", "--", "ls-add", "ls2", "--", "lr-add", "lr"]
        for v in VMS:
            cmds += ["--", "lsp-add", v.switch, f"lsp-{v.role}"]
            cmds += ["--", "lsp-set-addresses", f"lsp-{v.role}", f"{v.mac} {v.ip}"]
        for sw, (lrp, mac, ip, subnet) in GW.items():
            plen = subnet.split("/")[1]
            cmds += ["--", "lrp-add", "lr", lrp, mac, f"{ip}/{plen}"]
            cmds += ["--", "lsp-add", sw, f"{sw}-lr", "--", "lsp-set-type", f"{sw}-lr", "router"]
            cmds += ["--", "lsp-set-addresses", f"{sw}-lr", "router"]
            cmds += ["--", "lsp-set-options", f"{sw}-lr", f"router-port={lrp}"]
        self.nbctl(*cmds)
        for v in VMS:
            self.nbctl("wait-until", "Logical_Switch_Port", f"lsp-{v.role}", "up=true")
        self.nbctl("--wait=hv", "sync")
        pinger = Pinger(self.vms["a"])
        try:
            targets = [BY_ROLE[s.target].ip for s in SCENARIOS]

            def reachable() -> bool:
                return all(pinger.ping(ip, timeout=0.3) is not None for ip in targets)

            wait_for("VMs reachable through OVN", reachable, 60, every=0.2)
        finally:
            pinger.close()
        self.log("topology up: B, C, D, E answer A through OVN")


@dataclass
class Result:
    first: list[float] = field(default_factory=list)  # ms
    steady: list[float] = field(default_factory=list)  # ms
    upcalls: list[int] = field(default_factory=list)  # successful upcalls per sample
    failed_upcalls: int = 0
    lost: int = 0
    not_purged: int = 0


def measure(ol: OvnLab, samples: int, log: Callable[[str], None]) -> dict[str, Result]:
    """Per sample and scenario: purge the megaflows of the chassis the packets cross
    (and check ``dpctl/dump-flows`` is empty), 5 ms settle (as dp_agent.py after its
    invalidation), then two pings from A: the first RTT and the steady one. The upcall
    counters are read around the pair (outside the timed pings) to show how many upcalls
    each first ping took and that the second took none."""
    pinger = Pinger(ol.vms["a"])
    res = {s.key: Result() for s in SCENARIOS}
    try:
        for s in SCENARIOS:  # warm: ovn-controller's flows, the tunnel neighbour
            for _ in range(3):
                pinger.ping(BY_ROLE[s.target].ip, timeout=1.0)
        for i in range(samples):
            for s in SCENARIOS:
                r = res[s.key]
                chs = [ol.chassis[c] for c in s.chassis]
                purged = all([ch.purge() for ch in chs])
                before = [ch.upcalls() for ch in chs]
                time.sleep(0.005)
                ip = BY_ROLE[s.target].ip
                r1 = pinger.ping(ip, timeout=2.0)
                r2 = pinger.ping(ip, timeout=1.0)
                after = [ch.upcalls() for ch in chs]
                ok = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
                bad = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
                r.failed_upcalls += bad
                if not purged:
                    r.not_purged += 1
                elif r1 is None or r2 is None:
                    r.lost += 1
                else:
                    r.first.append(r1 * 1e3)
                    r.steady.append(r2 * 1e3)
                    r.upcalls.append(ok)
            if (i + 1) % 50 == 0:
                log(f"{i + 1}/{samples} samples")
    finally:
        pinger.close()
    return res


def rows_of(res: dict[str, Result]) -> list[Row]:
    rows = []
    for s in SCENARIOS:
        r = res[s.key]
        ups = ", ".join(f"{k}: {n}" for k, n in sorted(Counter(r.upcalls).items()))
        for p in (50, 99):
            first, steady = percentile(r.first, p), percentile(r.steady, p)
            extra = first - steady
            note = f"extra {extra:.3f} ms"
            if p == 50:
                note += f" (ref. {REFERENCE[s.kind]})"
            note += (
                f"; upcalls per sample (both pings) {{{ups}}}, {r.failed_upcalls} failed; "
                f"{r.lost} lost, {r.not_purged} not purged"
            )
            rows.append(
                Row(
                    "ovn",
                    f"first-packet RTT, {s.label}, p{p} (n={len(r.first)})",
                    "steady RTT",
                    steady,
                    first,
                    "ms",
                    note=note,
                    samples={
                        "first_ms": r.first,
                        "steady_ms": r.steady,
                        "upcalls": [float(n) for n in r.upcalls],
                    }
                    if p == 50
                    else {},
                )
            )
    return rows


def extra_rows(rows: Sequence[Row]) -> list[tuple[str, str, str]]:
    """(metric, value, reference) of the extra RTT (first - steady at one percentile)."""
    out = []
    for r in rows:
        if r.tessera is None or r.baseline is None:
            continue
        kind = "router" if "router" in r.metric else "switch"
        ref = REFERENCE[kind] if " p50 " in r.metric else "p99 0.55-0.65 ms on the reference"
        out.append((r.metric.replace("first-packet RTT", "extra RTT"), r.tessera - r.baseline, ref))
    return [(m, fmt(v, "ms"), ref) for m, v, ref in out]


def render_md(rows: Sequence[Row]) -> str:
    lines = [
        "| metric | baseline (same run) | OVN | ratio | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        lines.append(
            f"| {r.section}: {r.metric} | {fmt(r.baseline, r.unit)} ({r.baseline_name}) "
            f"| {fmt(r.tessera, r.unit)} | {ratio} | {r.note} |"
        )
    lines += ["", "| extra RTT (first - steady) | OVN | reference |", "| --- | --- | --- |"]
    lines += [f"| {m} | {v} | {ref} |" for m, v, ref in extra_rows(rows)]
    return "\n".join(lines)


def info_lines(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    during = m.get("loadavg_during") or [0.0]
    return "\n".join(
        [
            f"versions: {doc['versions']['ovn']}; {doc['versions']['ovs']}",
            f"machine: {m['cpu']}, {m['nproc']} cpus, {m['memory_gib']} GiB, kernel "
            f"{m['kernel']}; {m['date']}; load average {m['loadavg_start'][0]} at start, "
            f"{min(during):.2f}-{max(during):.2f} during; cores busy in the second before "
            f"start {m['cpu_busy_before']:.0%}",
            f"topology: {doc['topology']}",
            f"method: {doc['method']}",
        ]
    )


TOPOLOGY = (
    "two chassis namespaces (h1: A, B, D; h2: C, E), each ovsdb-server + ovs-vswitchd "
    "(br-int datapath_type=netdev, OVS userspace datapath) + ovn-controller, Geneve over a "
    "veth underlay through br-phy (netdev); central NB/SB/northd on unix sockets; ls1 = "
    "A B C, ls2 = D E, one logical router lr between them; no ACLs, no NAT"
)
METHOD = (
    "per sample and row: revalidator/purge + dpctl/del-flows on the chassis crossed "
    "(dump-flows checked empty), 5 ms, then 2 pings from A (raw ICMP socket, common.Pinger): "
    "first = first-packet RTT, second = steady RTT; extra = first - steady at the same "
    "percentile; static neighbours in the VMs"
)


def preflight() -> None:
    if os.geteuid() != 0:
        raise BenchError("needs root (namespaces, OVS): run it with sudo")
    for tool in TOOLS:
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (apt-get install ovn-central ovn-host)")
    for schema in (OVS_SCHEMA, NB_SCHEMA, SB_SCHEMA):
        if not schema.exists():
            raise BenchError(f"{schema} is missing")


def root_links() -> set[str]:
    out = run(["ip", "-o", "link", "show"], timeout=10)
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def run_ovn(samples: int, log: Callable[[str], None]) -> dict[str, Result]:
    """The whole measurement in this run's namespaces, removed before it returns."""
    lab = Lab(f"tsro-{os.getpid()}")
    try:
        log(f"namespaces {lab.prefix}-*")
        ol = OvnLab(lab, log)
        ol.start_central()
        ol.underlay()
        ol.start_chassis(ol.chassis["h1"], ol.chassis["h2"], "u1")
        ol.start_chassis(ol.chassis["h2"], ol.chassis["h1"], "u2")
        ol.cable_vms()
        ol.topology()
        return measure(ol, samples, log)
    finally:
        lab.close()


def ovn_rows(samples: int, log: Callable[[str], None]) -> list[Row]:
    """The OVN rows for ``bench/datapath.py``'s table (its ``ovn`` section): one row
    per scenario and percentile, or one "n/a" row saying why none were measured (OVN not
    installed, a failed setup)."""
    try:
        preflight()
        rows = rows_of(run_ovn(samples, log))
    except BENCH_ERRORS as e:
        log(f"ovn rows: {e}")
        return [Row("ovn", "first-packet RTT", "", None, None, "", note=f"n/a: {str(e)[:120]}")]
    versions = f"{version('ovn-controller')}; {version('ovs-vswitchd')}"
    for r in rows:
        r.note += f"; {versions}"
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--samples", type=int, default=200, help="samples per row (200)")
    ap.add_argument("--json", action="store_true", help="print the run, all samples, as JSON")
    ap.add_argument(
        "--from-json", type=Path, metavar="FILE", help="print a saved --json run again, run nothing"
    )
    args = ap.parse_args(argv)
    if args.from_json is not None:
        try:
            saved = json.loads(args.from_json.read_text())
            rows = [Row.from_dict(d) for d in saved["rows"]]
        except (OSError, ValueError, KeyError) as e:
            print(f"error: cannot read {args.from_json}: {e}", file=sys.stderr)
            return 2
        print(render_md(rows))
        print()
        print(info_lines(saved))
        return 0
    if args.samples < 1:
        print("error: --samples must be at least 1", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(f"# {msg}", file=sys.stderr, flush=True)

    try:
        preflight()
    except BENCH_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = machine()
    info["cpu_busy_before"] = round(cpu_busy_fraction(1.0), 2)
    versions = {"ovs": version("ovs-vswitchd"), "ovn": version("ovn-controller")}
    links_before = root_links()
    ticker = Ticker()
    ticker.start()
    try:
        with signals_raise():
            res = run_ovn(args.samples, log)
    except BENCH_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; processes stopped, namespaces removed", file=sys.stderr)
        return 130
    except SystemExit as e:  # SIGTERM/SIGHUP (signals_raise)
        print("stopped by a signal; processes stopped, namespaces removed", file=sys.stderr)
        return int(e.code) if isinstance(e.code, int) else 1
    finally:
        ticker.stop()
    left = root_links() - links_before
    if left:
        log(f"warning: links appeared in the root namespace during the run: {sorted(left)}")
    info["loadavg_during"] = ticker.samples
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    rows = rows_of(res)
    doc = {
        "machine": info,
        "versions": versions,
        "topology": TOPOLOGY,
        "method": METHOD,
        "params": {"samples": args.samples},
        "rows": [r.as_dict() for r in rows],
        "results": {
            k: {
                "first_ms": r.first,
                "steady_ms": r.steady,
                "upcalls_per_sample": r.upcalls,
                "failed_upcalls": r.failed_upcalls,
                "lost": r.lost,
                "not_purged": r.not_purged,
            }
            for k, r in res.items()
        },
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(render_md(rows))
        print()
        print(info_lines(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
