"""`tessera bind` / `unbind`: which host, which port, and clear errors when unknown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_fake_api import FakeApi
from cli_harness import Run

P = "33333333-3333-4333-8333-333333333333"
H = "88888888-8888-4888-8888-888888888888"
H2 = "99999999-9999-4999-8999-999999999999"


@pytest.fixture
def host_id_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "host_id"
    monkeypatch.setenv("TESSERA_HOST_ID_FILE", str(path))
    return path


def test_bind_uses_the_local_host_id(api: FakeApi, run: Run, host_id_file: Path) -> None:
    host_id_file.write_text(H.upper() + "\n")
    api.on("POST", f"/hosts/{H}/ports", 201, {"port_id": P, "interface_name": "tap1"})
    out = run("bind", P, "tap1")
    assert out.exit_code == 0, out.stderr
    assert out.stdout.strip() == f"bound port {P} to tap1 on host {H}"
    assert api.last().body == {"port_id": P, "interface_name": "tap1"}
    as_json = run("bind", P, "tap1", "--json")
    assert json.loads(as_json.stdout) == {"port_id": P, "interface_name": "tap1"}


def test_bind_to_a_named_host_needs_no_file(api: FakeApi, run: Run, host_id_file: Path) -> None:
    out = run("bind", P, "veth-vm1", "--host", H2)
    assert out.exit_code == 0, out.stderr
    assert api.last().path == f"/hosts/{H2}/ports"


def test_bind_without_a_host_id_file(api: FakeApi, run: Run, host_id_file: Path) -> None:
    run("bind", P, "tap1").assert_one_line_error(
        f"no host id: {host_id_file} does not exist", "--host HOST_ID", code=1
    )
    assert api.sent == []


def test_bind_with_a_garbled_host_id_file(api: FakeApi, run: Run, host_id_file: Path) -> None:
    host_id_file.write_text("not-a-uuid\n")
    run("bind", P, "tap1").assert_one_line_error(f"{host_id_file} does not hold a host id")


def test_bind_with_an_unreadable_host_id_file(api: FakeApi, run: Run, host_id_file: Path) -> None:
    host_id_file.mkdir()  # reading a directory fails like an unreadable file
    run("bind", P, "tap1").assert_one_line_error("cannot read the host id from", str(host_id_file))


def test_bind_conflict_reports_the_api_message(api: FakeApi, run: Run, host_id_file: Path) -> None:
    host_id_file.write_text(H)
    api.on("POST", f"/hosts/{H}/ports", 409, {"message": "tap1 is already bound to a port"})
    run("bind", P, "tap1").assert_one_line_error("tap1 is already bound to a port (HTTP 409)")


def test_unbind_finds_the_host_from_the_port(api: FakeApi, run: Run) -> None:
    api.add("/ports", id=P, host_id=H2, interface_name="tap1")
    api.on("DELETE", f"/hosts/{H2}/ports/{P}", 204)
    out = run("unbind", P)
    assert out.exit_code == 0, out.stderr
    assert out.stdout.strip() == f"unbound port {P} from host {H2}"
    assert api.last().method == "DELETE"


def test_unbind_an_unbound_port(api: FakeApi, run: Run) -> None:
    api.add("/ports", id=P, host_id=None)
    run("unbind", P).assert_one_line_error(f"port {P} is not bound to any host")
    assert api.writes() == []


def test_unbind_on_a_named_host(api: FakeApi, run: Run) -> None:
    api.on("DELETE", f"/hosts/{H}/ports/{P}", 204)
    assert run("unbind", P, "--host", H).exit_code == 0
    assert [s.method for s in api.sent] == ["DELETE"]
