"""`tessera flows` through the agent's control socket, and the host id kept on disk."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_harness import Cloud
from typer.testing import CliRunner

from tessera.agent import hostid
from tessera.agent.control import RUN_DIR_ENV, ControlServer, list_endpoints, request
from tessera.agent.flows_cli import action_text
from tessera.agent.flows_cli import app as flows_app
from tessera.client.errors import BadArgument
from tessera.datapath.base import VNI_COMMIT, OutputTunnel, action_from_json, action_to_json
from tessera.packet.addr import ip_from_str


@pytest.fixture
def run_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # Unix socket paths are short (108 bytes): keep this one near the root of /tmp.
    path = Path("/tmp") / f"tsa-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    monkeypatch.setenv(RUN_DIR_ENV, str(path))
    yield path
    for p in sorted(path.rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() else p.rmdir()
    path.rmdir()


def test_flows_lists_match_actions_counters_and_tags(cloud: Cloud, run_dir: Path) -> None:
    h = cloud.host("h0", "198.18.0.1")
    br = cloud.bridge()
    vm1 = cloud.vm(h, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(h, br, "tap2", "02:00:00:00:00:02", "10.0.0.2")
    cloud.settle()
    server = ControlServer(
        h.host_id, "h1", {"flows": h.agent.flows_report, "status": h.agent.status}, run_dir
    )
    server.start()
    try:
        cloud.send(vm2, vm2.arp_request(vm1.ip))
        cloud.send(vm1, vm1.frame(vm2))
        cloud.send(vm1, vm1.frame(vm2))
        (endpoint,) = list_endpoints(run_dir)
        assert endpoint.name == "h1" and endpoint.host_id == h.host_id
        result = CliRunner().invoke(flows_app, ["--host", "h1", "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        # Datapath port numbers follow the order the agent attached the ports in.
        n1, n2 = h.number(vm1.port_id), h.number(vm2.port_id)
        unicast = [
            f for f in report["flows"]
            if f["match"].get("eth_dst") == "02:00:00:00:00:02" and f["match"]["in_port"] == n1
        ]  # fmt: skip
        assert len(unicast) == 1
        assert unicast[0]["actions"] == [{"type": "output", "port": n2}]
        assert unicast[0]["packets"] == 2 and unicast[0]["bytes"] > 0
        assert br.id in unicast[0]["tags"]
        human = CliRunner().invoke(flows_app, [])
        assert human.exit_code == 0 and f"output({n2})" in human.output
        bad = CliRunner().invoke(flows_app, ["--host", "nope"])
        assert bad.exit_code != 0 and "nope" in (bad.output + str(bad.exception))
        status = request(endpoint.socket, "status")
        assert status["flows"] == len(h.agent.flows) and len(status["ports"]) == 2
    finally:
        server.stop()
    assert list_endpoints(run_dir) == []


def test_flows_without_any_agent_is_one_clear_error(run_dir: Path) -> None:
    result = CliRunner().invoke(flows_app, [])
    assert result.exit_code != 0
    assert "no tessera agent" in str(result.exception)


def test_the_host_id_is_created_once_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(hostid.HOST_ID_ENV, raising=False)
    first = hostid.resolve(None, tmp_path)
    assert uuid.UUID(first) and (tmp_path / "host_id").read_text().strip() == first
    assert hostid.resolve(None, tmp_path) == first
    other = str(uuid.uuid4())
    assert hostid.resolve(other, tmp_path) == other
    assert hostid.resolve(None, tmp_path) == first  # --host-id does not overwrite
    monkeypatch.setenv(hostid.HOST_ID_ENV, str(tmp_path / "elsewhere"))
    assert hostid.resolve(None, tmp_path) != first
    assert (tmp_path / "elsewhere").exists()


def test_a_bad_host_id_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(hostid.HOST_ID_ENV, raising=False)
    with pytest.raises(hostid.HostIdError):
        hostid.resolve("not-a-uuid", tmp_path)
    (tmp_path / "host_id").write_text("garbage\n")
    with pytest.raises(hostid.HostIdError, match="does not hold a host id"):
        hostid.resolve(None, tmp_path)


def test_two_agents_with_one_name_need_the_host_id(run_dir: Path) -> None:
    ids = [str(uuid.uuid4()) for _ in range(2)]
    servers = [
        ControlServer(i, "h1", {"flows": lambda _r, i=i: {"host_id": i, "flows": []}}, run_dir)
        for i in ids
    ]
    for s in servers:
        s.start()
    try:
        ambiguous = CliRunner().invoke(flows_app, ["--host", "h1"])
        assert isinstance(ambiguous.exception, BadArgument)
        assert "give the host id" in str(ambiguous.exception)
        chosen = CliRunner().invoke(flows_app, ["--host", ids[1], "--json"])
        assert chosen.exit_code == 0 and json.loads(chosen.output)["host_id"] == ids[1]
    finally:
        for s in servers:
            s.stop()


def test_a_committing_tunnel_reads_as_such_in_json_and_text() -> None:
    """`tessera flows` shows the request to commit on arrival; the JSON round-trips."""
    plain = OutputTunnel(5, ip_from_str("198.18.0.2"))
    committing = OutputTunnel(5, ip_from_str("198.18.0.2"), commit=True)
    assert action_to_json(plain) == {"type": "tunnel", "vni": 5, "remote_ip": "198.18.0.2"}
    assert action_text(action_to_json(committing)) == "tunnel(5,198.18.0.2,commit)"
    for action in (plain, committing):
        assert action_from_json(action_to_json(action)) == action
    assert committing.wire_vni == 5 | VNI_COMMIT and plain.wire_vni == 5
    assert str(committing) == "tunnel(vni=5,remote=198.18.0.2,commit)"
    with pytest.raises(ValueError, match="out of"):
        OutputTunnel(VNI_COMMIT, ip_from_str("198.18.0.2"))
