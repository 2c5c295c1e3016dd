"""`tessera lab up --embedded-zookeeper` without root or Java: which node counts it takes,
the ports each lab reserves, and the config file each node is given (read back as
`tessera cluster serve` reads it, and given to the member as the node gives it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.cluster import config as cluster_config
from tessera.cluster.embedded_zk import EmbeddedZooKeeper
from tessera.lab import faults, names, services, state, up
from tessera.lab.errors import LabError
from tessera.lab.state import LabState


@pytest.fixture
def labs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(state.LAB_DIR_ENV, str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("count", [1, 3, 5, 9])
def test_an_odd_number_of_nodes_is_taken(count: int) -> None:
    up.check_embedded(count, None)


@pytest.mark.parametrize("count", [2, 4])
def test_an_even_number_of_nodes_is_refused(count: int) -> None:
    with pytest.raises(LabError, match=f"odd number of cluster nodes .* not {count}"):
        up.check_embedded(count, None)


def test_another_nsdb_is_refused() -> None:
    with pytest.raises(LabError, match="--embedded-zookeeper and --nsdb exclude each other"):
        up.check_embedded(3, "zk://127.0.0.1:2181/tessera")


def test_each_lab_has_its_own_ports_below_the_ephemeral_range() -> None:
    every = [
        port
        for lab in range(names.MAX_LABS)
        for node in range(1, services.MAX_CLUSTER_NODES + 1)
        for port in names.embedded_zk_ports(lab, node)
    ]
    assert len(set(every)) == len(every)  # no two labs or nodes share a port
    assert min(every) >= 1024 and max(every) < 32768


def test_a_running_ensemble_keeps_its_size_and_a_plain_lab_stays_plain(labs_dir: Path) -> None:
    LabState(name="ens", index=0, cluster_nodes=3, embedded_zookeeper=True).save()
    LabState(name="plain", index=1).save()
    with pytest.raises(LabError, match="cannot grow or shrink"):
        up._existing_or_new("ens", None, None, 5, True)
    with pytest.raises(LabError, match="cannot grow or shrink"):
        up._existing_or_new("ens", None, None, 1, False)
    assert up._existing_or_new("ens", None, None, 3, False).embedded_zookeeper  # remembered
    with pytest.raises(LabError, match="its own ZooKeeper, not embedded members"):
        up._existing_or_new("plain", None, None, 3, True)
    made = up._existing_or_new("new", None, None, 3, True)
    assert made.embedded_zookeeper and made.cluster_nodes == 3


def test_each_node_is_given_a_member_of_one_ensemble(labs_dir: Path) -> None:
    lab = LabState(name="ens", index=4, cluster_nodes=3, embedded_zookeeper=True)
    lab.dir.mkdir(parents=True)
    url = services.embedded_nsdb_url(lab)
    clients = [names.embedded_zk_ports(4, k)[0] for k in (1, 2, 3)]
    assert url == "zk://" + ",".join(f"127.0.0.1:{p}" for p in clients) + "/tessera"
    assert services.zk_upstreams(url) == [("127.0.0.1", p) for p in clients]
    for k in (1, 2, 3):
        path = services._write_node_config(lab, k)
        assert path.parent == lab.dir  # nothing outside the lab's directory
        zk = cluster_config.validate(cluster_config.load(path), str(path))["zookeeper"]
        assert zk["enabled"] and zk["id"] == k
        assert Path(zk["data_dir"]) == lab.dir / f"zookeeper-c{k}"
        member = EmbeddedZooKeeper(
            node_id=zk["id"],
            peers=list(zk["peers"]),
            data_dir=Path(zk["data_dir"]),
            client_port=zk["client_port"],
        )
        # The node's NSDB (its member's connect string) is the lab's NSDB.
        assert f"zk://{member.connect_string}/tessera" == url


def test_nsdb_stop_points_at_the_nodes() -> None:
    lab = LabState(name="ens", index=0, cluster_nodes=3, embedded_zookeeper=True)
    with pytest.raises(LabError, match="members run inside its cluster nodes"):
        faults.nsdb_stop(lab)
