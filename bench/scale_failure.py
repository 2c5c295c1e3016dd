"""ZooKeeper failure under load (issue 17, part 4): the scale bench's agents and a stream
of API writes, then the ensemble's leader killed (or the single server restarted).

What must hold afterwards, and what `zk_failure` reports:
- every agent re-syncs: its cache equals a full read of the NSDB (`check_caches`), and
  every port bound to it is attached — no update missed while it was reconnecting;
- no write that was acknowledged is lost: every rule the API answered 201 for is there,
  every rule it answered 204 (deleted) for is gone, every port bound through the store
  is there and bound.
Writes that failed during the outage (503) are counted, not required.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common import Row
from scale_agents import AgentPool, AgentSpec
from scale_cloud import Layout, Tenant, build_tenants, realized, vm_port
from scale_zk import BenchZk

from tessera.api.app import create_app
from tessera.model import Port, Rule
from tessera.nsdb.errors import NotFound, NsdbError
from tessera.nsdb.store.topology import TopologyStore
from tessera.nsdb.zookeeper import ZookeeperNsdb

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

WRITE_GAP = 0.03  # between two writes of the stream
ACKS = 5  # writes acknowledged before the failure, and again after it
BEFORE_TIMEOUT = 20.0
AFTER_TIMEOUT = 30.0
RESYNC_TIMEOUT = 60.0


@dataclass
class FailureResult:
    mode: str
    agents: int
    acked: int = 0
    acked_before: int = 0  # of `acked`, before the failure
    failed: int = 0
    lost: list[str] = field(default_factory=list)
    mismatches: dict[str, list[str]] = field(default_factory=dict)
    unattached: dict[str, list[str]] = field(default_factory=dict)
    outage: float = float("nan")  # failure -> first write acknowledged again
    resync: float = float("nan")  # failure -> every cache equal to a full read
    before_ok: bool = False  # caches were right before the failure
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.before_ok and not self.lost and not self.mismatches and not self.unattached


class _Writer(threading.Thread):
    """API rule creates and deletes, and store port binds, until stopped; records what
    was acknowledged."""

    def __init__(
        self, client: TestClient, store: TopologyStore, tenants: list[Tenant], hosts: list[str]
    ) -> None:
        super().__init__(name="scale-writer", daemon=True)
        self.client = client
        self.store = store
        self.tenants = tenants
        self.hosts = hosts
        self.rng = random.Random(4)
        self.stop_event = threading.Event()
        self.created: dict[str, str] = {}  # rule id -> chain
        self.deleted: set[str] = set()
        self.bound: dict[str, str] = {}  # port id -> host
        self.acked = 0
        self.failed = 0
        self.last_ack = 0.0
        self.errors: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.stop_event.wait(WRITE_GAP) and i < 100_000:
            i += 1
            try:
                ok = self._one(i)
            except (NsdbError, Exception) as exc:  # the store raises while ZK is down
                ok = False
                if len(self.errors) < 5:
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            if ok:
                self.acked += 1
                self.last_ack = time.monotonic()
            else:
                self.failed += 1

    def _one(self, i: int) -> bool:
        tenant = self.rng.choice(self.tenants)
        if i % 3 == 0:
            host = self.rng.choice(self.hosts)
            port_id = str(uuid.uuid4())
            vm_port(self.store, self.rng.choice(tenant.bridges), host, port_id)
            self.bound[port_id] = host
            return True
        if i % 4 == 0 and self.created:
            rule = self.rng.choice(sorted(set(self.created) - self.deleted) or [""])
            if not rule:
                return True
            wait = "?wait=true&wait_timeout=10" if i % 8 == 0 else ""
            r = self.client.delete(f"/api/v1/rules/{rule}{wait}")
            if r.status_code == 204:
                self.deleted.add(rule)
                return True
            return False
        wait = "?wait=true&wait_timeout=10" if i % 5 == 0 else ""
        body = {"type": "drop", "nw_proto": 17, "tp_dst": {"start": 7000 + i, "end": 7000 + i}}
        r = self.client.post(f"/api/v1/chains/{tenant.chain}/rules{wait}", json=body)
        if r.status_code == 201:
            self.created[r.json()["id"]] = tenant.chain
            return True
        return False


def _lost(nsdb: ZookeeperNsdb, writer: _Writer) -> list[str]:
    store = TopologyStore(nsdb)
    lost: list[str] = []
    for rule in writer.created:
        try:
            store.get(Rule, rule)
            present = True
        except NotFound:
            present = False
        if present and rule in writer.deleted:
            lost.append(f"rule {rule}: deletion acknowledged, rule still there")
        elif not present and rule not in writer.deleted:
            lost.append(f"rule {rule}: creation acknowledged, rule missing")
    for port_id, host in writer.bound.items():
        try:
            port = store.get(Port, port_id)
        except NotFound:
            lost.append(f"port {port_id}: bind acknowledged, port missing")
            continue
        if port.host_id != host:
            lost.append(f"port {port_id}: bound to {host}, reads {port.host_id}")
    return lost


def zk_failure(
    zk: BenchZk, agents: int, log: Callable[[str], None] = print, per_process: int = 25
) -> FailureResult:
    """Run the scenario on `zk` (an ensemble: its leader is killed; a standalone
    server: it is restarted)."""
    mode = "leader killed (3 members)" if zk.members else "single server restarted"
    result = FailureResult(mode, agents)
    root = f"/scale-failure-{uuid.uuid4().hex[:8]}"
    admin = ZookeeperNsdb(zk.hosts, root, op_timeout=15.0, connect_wait=15.0)
    store = TopologyStore(admin)
    specs = [
        AgentSpec(str(uuid.uuid4()), f"f{i}", f"198.18.{i // 250}.{i % 250 + 1}")
        for i in range(agents)
    ]
    hosts = [s.host_id for s in specs]
    log(f"zk failure: {agents} agents")
    pool = AgentPool(zk.hosts, root, specs, per_process)
    api_nsdb = ZookeeperNsdb(zk.hosts, root)  # the API's own timeouts: 503 in an outage
    # The checker reads after the failure, while its session may still be moving to a
    # survivor: it waits for that instead of failing.
    checker = ZookeeperNsdb(zk.hosts, root, op_timeout=15.0, connect_wait=15.0)
    try:
        layout = Layout()
        count = max(2, -(-agents * 2 // layout.vm_ports))
        tenants = build_tenants(zk.hosts, root, 0, count, hosts, min(agents, 10), layout)
        if realized(admin, hosts, 120.0) is None:
            result.errors.append("the agents did not apply the cloud before the failure")
            return result
        result.before_ok = not _merge(pool.ask("check"))
        with TestClient(create_app(api_nsdb)) as client:
            writer = _Writer(client, store, tenants, hosts)
            writer.start()
            try:
                _until(lambda: writer.acked >= ACKS, BEFORE_TIMEOUT)
                log(f"zk failure: {mode}")
                failed_at = time.monotonic()
                result.acked_before = writer.acked
                victim = None
                if zk.members:
                    victim = zk.kill_leader()
                    modes = zk.wait_quorum()
                    log(f"zk failure: survivors serve ({modes})")
                else:
                    zk.restart_standalone(down_for=1.0)
                acks = writer.acked
                _until(lambda: writer.acked > acks, AFTER_TIMEOUT)
                result.outage = writer.last_ack - failed_at if writer.acked > acks else float("nan")
                _until(lambda: writer.acked >= acks + ACKS, AFTER_TIMEOUT)
            finally:
                writer.stop_event.set()
                writer.join(timeout=30)
            if victim is not None:  # back to three, as an operator would
                victim.start()
                victim.wait_serving(30.0)
        result.acked, result.failed, result.errors = writer.acked, writer.failed, writer.errors
        result.lost = _lost(checker, writer)
        log("zk failure: waiting for every cache to equal a full read")
        expected: dict[str, set[str]] = {}
        for tenant in tenants:
            for port_id, host in tenant.vm_ports.items():
                expected.setdefault(host, set()).add(port_id)
        for port_id, host in writer.bound.items():
            expected.setdefault(host, set()).add(port_id)
        deadline = time.monotonic() + RESYNC_TIMEOUT
        while True:
            mismatches = _merge(pool.ask("check"))
            attached = _merge(pool.ask("attached"))
            unattached = {
                h: sorted(want - set(attached.get(h, [])))
                for h, want in expected.items()
                if want - set(attached.get(h, []))
            }
            if (not mismatches and not unattached) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        result.mismatches = {h: m[:5] for h, m in mismatches.items()}
        result.unattached = unattached
        if not mismatches and not unattached:
            result.resync = time.monotonic() - failed_at
    finally:
        pool.stop()
        for nsdb in (api_nsdb, checker, admin):
            with contextlib.suppress(Exception):
                nsdb.close()
    return result


def _until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def _merge(answers: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for answer in answers:
        if answer:
            out.update(answer)
    return out


def failure_rows(r: FailureResult) -> list[Row]:
    section = f"ZooKeeper failure, {r.agents} agents"
    wrong = sum(len(m) for m in r.mismatches.values())
    return [
        Row(section, f"{r.mode}: writes acknowledged", "", None, float(r.acked), "",
            note=f"{r.acked_before} before the failure; {r.failed} failed during the outage"),
        Row(section, "writes acknowledged but lost", "", None, float(len(r.lost)), "",
            goal="0", note="; ".join(r.lost[:3])),
        Row(section, "failure -> first write acknowledged again", "", None,
            round(r.outage, 2), "s"),
        Row(section, "failure -> every cache equal to a full read", "", None,
            round(r.resync, 2), "s", goal="converges",
            note=f"{len(r.mismatches)} agents wrong ({wrong} objects), "
            f"{len(r.unattached)} with unattached ports; before: "
            f"{'right' if r.before_ok else 'WRONG'}"),
    ]  # fmt: skip
