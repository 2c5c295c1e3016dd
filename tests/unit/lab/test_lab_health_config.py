"""The health monitor each lab cluster node is given, without root: its config table, read
back as `tessera cluster serve` reads it and built into the service as a node builds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.cluster import config as cluster_config
from tessera.cluster.health_monitor import HealthMonitorService
from tessera.cluster.service import ServiceEnv
from tessera.lab import hosts, names, services, state
from tessera.lab.state import LabState
from tessera.nsdb.memory import MemoryNsdb


@pytest.fixture
def labs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(state.LAB_DIR_ENV, str(tmp_path))
    return tmp_path


def _lab(host_count: int, nodes: int, embedded: bool = False) -> LabState:
    lab = LabState(name="hm", index=5, cluster_nodes=nodes, embedded_zookeeper=embedded)
    lab.dir.mkdir(parents=True)
    lab.hosts = [hosts.host_state(lab, k) for k in range(1, host_count + 1)]
    return lab


@pytest.mark.parametrize(
    ("host_count", "nodes", "expected"),
    [(2, 2, ["h2", "h1"]), (3, 3, ["h2", "h3", "h1"]), (1, 3, ["h1", "h1", "h1"])],
)
def test_node_k_probes_from_host_k_mod_n_plus_one(
    labs_dir: Path, host_count: int, nodes: int, expected: list[str]
) -> None:
    lab = _lab(host_count, nodes)
    prefixes = set()
    for k in range(1, nodes + 1):
        path = services._write_node_config(lab, k)
        config = cluster_config.build(path=path)
        assert config.enabled("health-monitor")
        options = config.options("health-monitor")
        host = lab.host(expected[k - 1])
        assert options["host_id"] == host.host_id
        assert options["host_netns"] == lab.netns(host.name)
        assert options["netns_prefix"].startswith(names.netns_prefix(lab.name))
        prefixes.add(options["netns_prefix"])
        nsdb = MemoryNsdb()
        try:
            env = ServiceEnv("health-monitor", f"hm-c{k}", nsdb, options)
            service = HealthMonitorService.from_env(env)
        finally:
            nsdb.close()
        probe_ns = service.site.namespace("6e1f7b6e-0000-4000-8000-000000000000")
        assert probe_ns.startswith(names.netns_prefix(lab.name))
        assert names.host_index(probe_ns.removeprefix(names.netns_prefix(lab.name))) is None
    assert len(prefixes) == nodes  # a node removes what it finds with its prefix: its own


def test_an_embedded_lab_node_gets_its_member_and_the_health_monitor(labs_dir: Path) -> None:
    lab = _lab(2, 3, embedded=True)
    lab.neutron_port = 19696
    given = cluster_config.validate(
        cluster_config.load(services._write_node_config(lab, 1)), "node 1"
    )
    assert given["zookeeper"]["id"] == 1 and given["zookeeper"]["enabled"]
    assert given["services"]["neutron"]["listen"] == "127.0.0.1:19696"
    assert given["services"]["health-monitor"]["enabled"]
