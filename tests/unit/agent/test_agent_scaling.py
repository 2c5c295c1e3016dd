"""Relative performance checks (Faucet's guard against O(n²) regressions): invalidating
one tag must cost the same whatever else is installed, and the metrics must count."""

from __future__ import annotations

import time

from agent_harness import Cloud
from prometheus_client import generate_latest

from tessera.agent.flowtable import DesiredFlow, FlowTable
from tessera.datapath.base import Flow, Match, Output


def _table(n: int) -> FlowTable:
    table = FlowTable()
    for i in range(n):
        match = Match.of(in_port=1 + i % 4000, ip_dst=i)
        table.add(DesiredFlow(Flow(match, (Output(1),)), frozenset({f"t{i}", "shared"})))
    return table


def _invalidate_one(table: FlowTable, n: int) -> float:
    started = time.perf_counter()
    for i in range(0, n, max(1, n // 100)):
        assert len(table.invalidate([f"t{i}"])) == 1
    return time.perf_counter() - started


def test_invalidating_one_tag_does_not_scan_every_flow() -> None:
    small, big = _table(100), _table(20_000)
    t_small = min(_invalidate_one(_table(100), 100) for _ in range(3))
    t_big = _invalidate_one(big, 20_000)
    assert t_big < 20 * t_small + 0.01, (t_small, t_big)
    assert len(small) == 100 and len(big) == 20_000 - 100


def test_metrics_count_misses_installs_and_invalidations(cloud: Cloud) -> None:
    h = cloud.host("h1", "198.18.0.1")
    br = cloud.bridge()
    vm1 = cloud.vm(h, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(h, br, "tap2", "02:00:00:00:00:02", "10.0.0.2")
    cloud.settle()
    cloud.send(vm1, vm1.frame(vm2))  # vm2 unknown: a flood, tagged with vm2's MAC entry
    cloud.send(vm2, vm2.frame(vm1))  # vm2 learned: the flood flow goes
    text = generate_latest(h.agent.metrics.registry).decode()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["tessera_agent_misses_total"] == 2
    assert values["tessera_agent_flows_installed_total"] >= 1
    assert values["tessera_agent_flows_invalidated_total"] >= 1  # learning vm2 ended a flood
    assert values["tessera_agent_flows"] == len(h.agent.flows)
