"""The lab's Neutron API without root: the port it is given, node 1's config table,
old state files, and the MAC `vm add --port` takes from a Neutron port (against the
Neutron app served over an in-memory NSDB)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tessera.cluster import config as cluster_config
from tessera.lab import api, services, state, up
from tessera.lab.errors import LabError
from tessera.lab.state import LabState
from tessera.neutron.serve import NeutronServer, serve_neutron
from tessera.nsdb.memory import MemoryNsdb


@pytest.fixture
def labs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(state.LAB_DIR_ENV, str(tmp_path))
    return tmp_path


@pytest.fixture
def neutron() -> Iterator[NeutronServer]:
    nsdb = MemoryNsdb()
    server = serve_neutron(nsdb, "127.0.0.1", 0)
    try:
        yield server
    finally:
        server.stop()
        nsdb.close()


def _port_of(url: str) -> int:
    return int(url.rstrip("/").rpartition(":")[2])


def test_a_state_file_from_before_neutron_loads_without_it(labs_dir: Path) -> None:
    lab = LabState(name="old", index=0, api_port=8181)
    lab.dir.mkdir(parents=True)
    data = json.loads(lab.model_dump_json())
    del data["neutron_port"]
    (lab.dir / state.STATE_FILE).write_text(json.dumps(data))
    loaded = state.load("old")
    assert loaded is not None and loaded.api_port == 8181
    assert loaded.neutron_port is None and loaded.neutron_url is None


def test_the_neutron_port_is_the_recorded_one_when_free_and_never_the_apis(
    labs_dir: Path,
) -> None:
    lab = LabState(name="n", index=0)
    lab.dir.mkdir(parents=True)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        lab.neutron_port = taken  # recorded, but another process holds it
        port = services._choose_neutron_port(lab)
        assert port != taken and lab.neutron_port == port
    assert lab.neutron_url == f"http://127.0.0.1:{port}"
    assert services._choose_neutron_port(lab) == port  # free again: kept across repairs
    lab.api_port = port
    assert services._choose_neutron_port(lab) != port


def test_node_1_of_an_embedded_lab_serves_the_neutron_api(labs_dir: Path) -> None:
    lab = LabState(name="ens", index=3, cluster_nodes=3, embedded_zookeeper=True)
    lab.dir.mkdir(parents=True)
    lab.neutron_port = 19696
    for k in (1, 2, 3):
        path = services._write_node_config(lab, k)
        given = cluster_config.validate(cluster_config.load(path), str(path))
        if k == 1:
            assert given["services"]["neutron"] == {"enabled": True, "listen": "127.0.0.1:19696"}
        else:  # the others leave it to the default: not served
            assert "neutron" not in given.get("services", {})


def test_vm_add_takes_the_mac_of_a_neutron_port(neutron: NeutronServer) -> None:
    lab = LabState(name="n", index=0, neutron_port=_port_of(neutron.url))
    with httpx.Client(base_url=neutron.url, timeout=10) as client:
        net = client.post("/v2.0/networks", json={"network": {"name": "n1"}}).json()
        body = {"port": {"network_id": net["network"]["id"], "mac_address": "FA:16:3E:00:00:07"}}
        port = client.post("/v2.0/ports", json=body).json()["port"]
    assert api.neutron_port_mac(lab, port["id"]) == "fa:16:3e:00:00:07"
    # A v1 port (unknown to Neutron) and a lab without a Neutron API: no MAC of its own.
    assert api.neutron_port_mac(lab, "6e1f7b6e-0000-4000-8000-000000000000") is None
    assert api.neutron_port_mac(LabState(name="old", index=0), port["id"]) is None


def test_an_unreachable_neutron_api_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    lab = LabState(name="n", index=0, neutron_port=free)
    with pytest.raises(LabError, match=r"Neutron API at .* does not answer.*pass --mac"):
        api.neutron_port_mac(lab, "6e1f7b6e-0000-4000-8000-000000000000")


def test_up_prints_the_neutron_url_or_why_there_is_none() -> None:
    assert up._neutron(LabState(name="n", index=0, neutron_port=9696)) == "http://127.0.0.1:9696"
    # An API process started before the lab served Neutron: no URL to print, a reason.
    assert "not served by this API process" in up._neutron(LabState(name="n", index=0))
