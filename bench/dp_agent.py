"""The real agent: the same host and VM namespaces served by ``tessera agent`` processes.

First packets through two agents, misses per second, and invalidation after an API
change. The agents are run by `tessera.lab.agents` (the one implementation of agents in
namespaces the lab and the system tests use too); ZooKeeper and the API run inside h1.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
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
    percentile,
    tail,
    wait_for,
)
from dp_conntrack import conntrack_rows, na_conntrack_rows
from dp_miss import drive_misses
from dp_testbed import IP_B, IP_C, UNDERLAY_1, UNDERLAY_2, Testbed

from tessera.datapath.ebpf.layout import FlowLookupKey
from tessera.datapath.ebpf.loader import DEFAULT_CACHE_DIR
from tessera.datapath.ebpf.maps import FastPathMaps
from tessera.datapath.ebpf.netns import run_in_netns
from tessera.lab.agents import (
    BPF_PIN_ROOT,
    AgentProcess,
    AgentSpec,
    remove_agent_leftovers,
    remove_pin_root_if_empty,
)
from tessera.nsdb.zkserver import ZookeeperError, ZookeeperServer

AGENT_METRICS = (
    "first-packet RTT, one host (a miss on h1, its reply predicted), p50",
    "first-packet RTT, one host (a miss on h1, its reply predicted), p99",
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
    return [Row("agent", m, "", None, None, "ms", note=why) for m in AGENT_METRICS] + (
        na_conntrack_rows(why)
    )


@dataclass
class AgentHost:
    role: str
    ns: Netns
    underlay: str
    host_id: str
    agent: AgentProcess | None = None
    maps: FastPathMaps | None = None


class Agents:
    """ZooKeeper, the API service and one real ``tessera agent`` per host namespace.

    ZooKeeper and the API service run inside h1 on its underlay address (so h2's agent
    reaches them over the underlay, as a remote agent would); the bench talks to the API
    through a thread that entered h1. The agents are `tessera.lab.agents.AgentProcess`es
    started through the bench's `Lab` (stopped first at its close). They keep their flows
    in /sys/fs/bpf/tessera/<host id>, which the bench reads directly to see a flow vanish.
    A class of its own so that every agent bench (this one, ``stateful.py``) starts them
    the same way on its own host namespaces.
    """

    def __init__(self, lab: Lab, h1: Netns, h2: Netns, log: Callable[[str], None]) -> None:
        self.lab = lab
        self.log = log
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.lab.prefix}-"))
        self.lab.last.append(lambda: shutil.rmtree(self.tmp, ignore_errors=True))
        self.hosts = [
            AgentHost("h1", h1, UNDERLAY_1, str(uuid.uuid4())),
            AgentHost("h2", h2, UNDERLAY_2, str(uuid.uuid4())),
        ]
        self.http = NetnsHttp(h1, f"http://{UNDERLAY_1}:{API_PORT}/api/v1")
        self.lab.cleanups.append(self.http.close)
        self.pin_root = BPF_PIN_ROOT  # where agents pin
        self._pin_root_existed = self.pin_root.exists()

    def start(self) -> None:
        exe = str(tessera_exe())
        zk = ZookeeperServer(self.tmp / "zk", host=UNDERLAY_1)
        self.lab.cleanups.append(zk.stop)
        try:
            run_in_netns(self.hosts[0].ns.path, zk.start)
        except ZookeeperError as e:
            raise BenchError(f"ZooKeeper: {e}") from None
        nsdb = zk.url(f"tsrb{self.lab.run_id}")
        api_log = self.tmp / "api.log"
        with api_log.open("wb") as out:
            api = self.lab.popen(
                self.hosts[0].ns.argv(
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
        run_dir = self.tmp / "run"
        for h in self.hosts:
            state = self.tmp / h.role
            if DEFAULT_CACHE_DIR.is_dir():  # the object the bench compiled: no second clang
                shutil.copytree(DEFAULT_CACHE_DIR, state / "bpf")
            self.lab.last.append(functools.partial(remove_agent_leftovers, h.host_id, run_dir))
            spec = AgentSpec(
                host_id=h.host_id,
                name=f"{self.lab.prefix}-{h.role}",
                nsdb=nsdb,
                datapath="ebpf",
                underlay_ip=h.underlay,
                tunnel_zone=tz["id"],
                state_dir=state,
                log_level="WARNING",
            )
            h.agent = AgentProcess(
                spec,
                functools.partial(_inside, h.ns),
                run_dir,
                self.tmp / f"agent-{h.role}.log",
                popen=self.lab.popen,
            )
            h.agent.start()
        if not self._pin_root_existed:  # the agents made it: leave nothing behind
            self.lab.last.append(remove_pin_root_if_empty)

        def alive() -> bool:
            hosts = {x["id"]: x for x in self.http.get("/hosts")}
            return all(hosts.get(h.host_id, {}).get("alive") for h in self.hosts)

        wait_for("agents registered alive", alive, 90, every=0.3, check=self.check_agents)
        self.log("agents alive")

    def check_agents(self) -> None:
        for h in self.hosts:
            if h.agent is not None:
                h.agent.check()

    def status(self, h: AgentHost) -> dict[str, Any]:
        assert h.agent is not None
        res: dict[str, Any] = h.agent.request("status")
        return res


class AgentBed(Agents):
    """The datapath bench's host and VM namespaces, handed over to real agents."""

    def __init__(self, bed: Testbed, log: Callable[[str], None]) -> None:
        super().__init__(bed.lab, bed.h1, bed.h2, log)
        self.bed = bed
        self.chain_id = ""
        self.port_ids: dict[str, str] = {}  # VM tap -> the bridge port bound to it

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
            self.port_ids[tap] = port["id"]
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

    def holds(self, h: AgentHost, key: FlowLookupKey) -> bool:
        assert h.maps is not None
        return h.maps.flows.map.lookup(key) is not None

    def installed(self) -> list[tuple[AgentHost, FlowLookupKey]]:
        out = []
        for h in self.hosts:
            assert h.maps is not None
            out += [(h, k) for k in h.maps.flows.map.collect_keys()]
        return out


def _inside(ns: Netns, argv: list[str]) -> list[str]:
    return ns.argv(*argv)


def invalidation_and_first_packet(
    ab: AgentBed, samples: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Per sample, with A->B and A->C flowing in the agents' maps (h1 and h2):

    1. record the installed flows, change the bridge's ACL through the API (add an
       accept-all rule; the next sample deletes it), time until every recorded flow is
       gone from both agents' maps (polled straight from the pinned maps);
    2. after a 5 ms settle, ping B twice and C twice: each first reply needed two
       simulations (the request at A's port, the reply at B's or C's port: on h1 the
       reply's flow is predicted with the request's, on h2 the reply misses there),
       each second one is the steady RTT of the same moment; these pings also leave
       the flows installed for the next sample's change.
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
    try:  # last: its firewall stays on A's port
        ct_rows = conntrack_rows(ab, count, min(samples, 200), 3, log)
    except (*BENCH_ERRORS, OSError, KeyError, ValueError) as e:
        log(f"conntrack rows failed: {e}")
        ct_rows = na_conntrack_rows(f"n/a: conntrack run failed: {str(e)[:120]}")
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
    return rows + ct_rows
