"""`tessera trace` sends the description to `POST /traces` and draws the answer."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sim_topo import NOW, Topo
from typer.testing import CliRunner

from tessera.cli.main import build_app
from tessera.clikit.session import Session
from tessera.simulation.trace import trace_packet

API = "http://tessera.test/api/v1"


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[dict[str, Any]], str]:
    """`invoke(*args)` against an API whose /traces runs `trace_packet` on a bridge."""
    monkeypatch.delenv("TESSERA_API", raising=False)
    t = Topo()
    br = t.bridge("br")
    a, _b = t.bridge_port(br), t.bridge_port(br)
    bodies: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path == "/api/v1/traces"
        body = json.loads(request.content)
        bodies.append(body)
        return httpx.Response(201, json=trace_packet(t.snapshot(), body, NOW))

    runner = CliRunner()
    app = build_app()

    def invoke(*args: str) -> Any:
        session = Session(api_url=API, transport=httpx.MockTransport(handle))
        return runner.invoke(app, ["trace", *args], obj=session)

    return invoke, bodies, a.id


def test_trace_draws_the_path_and_the_result(cli: tuple[Any, list[dict[str, Any]], str]) -> None:
    invoke, bodies, port = cli
    result = invoke("--port", port, "--src-mac", "02:00:00:00:00:01", "--src-ip", "10.0.0.1",
                    "--dst-ip", "10.0.0.2", "--protocol", "tcp", "--dst-port", "80")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "bridge br" in result.output and "result: forward" in result.output
    assert bodies == [{"port_id": port, "src_mac": "02:00:00:00:00:01", "src_ip": "10.0.0.1",
                       "dst_ip": "10.0.0.2", "protocol": "tcp", "dst_port": 80}]  # fmt: skip


def test_trace_json_prints_the_api_answer(cli: tuple[Any, list[dict[str, Any]], str]) -> None:
    invoke, _, port = cli
    result = invoke("--port", port, "--src-mac", "02:00:00:00:00:01", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["verdict"] == "forward" and answer["trace"]["kind"] == "packet"


@pytest.mark.parametrize(("args", "message"), [
    (["--protocol", "gre"], "--protocol 'gre'"),
    (["--src-ip", "10.0.0.1"], "give both src_ip and dst_ip"),
    (["--src-ip", "10.0.0.1", "--dst-ip", "10.0.0.2", "--protocol", "udp"], "needs dst_port"),
    (["--ttl", "300"], "ttl"),
])  # fmt: skip
def test_bad_descriptions_fail_in_one_line_before_any_request(
    cli: tuple[Any, list[dict[str, Any]], str], args: list[str], message: str
) -> None:
    invoke, bodies, port = cli
    result = invoke("--port", port, "--src-mac", "02:00:00:00:00:01", *args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert bodies == []
