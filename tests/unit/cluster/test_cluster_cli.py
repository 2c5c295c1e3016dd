"""`tessera cluster config|serve|services`: options over the file, one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tessera.cli.main import build_app


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(build_app(), list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TESSERA_NSDB", raising=False)
    monkeypatch.delenv("TESSERA_CLUSTER_CONFIG", raising=False)


def test_config_prints_the_defaults_as_a_documented_file() -> None:
    code, out, _ = _run("cluster", "config")
    assert code == 0
    data = tomllib.loads(out)
    assert data["services"]["api"] == {
        "enabled": True,
        "listen": "127.0.0.1:8181",
        "cassandra": [],
        "cassandra_keyspace": "tessera",
    }
    assert data["node"]["nsdb"] == "zk://127.0.0.1:2181/tessera"
    assert "# The REST API" in out


def test_options_override_the_file_named_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\nname = "from-file"\n[services.metrics]\nenabled = true\n')
    monkeypatch.setenv("TESSERA_CLUSTER_CONFIG", str(path))
    monkeypatch.setenv("TESSERA_NSDB", "zk://env:2181/x")
    code, out, err = _run(
        "cluster", "config", "--bare", "--disable", "metrics,host-liveness",
        "--listen", "0.0.0.0:9000", "--listen", "metrics=127.0.0.1:9100",
        "--session-timeout", "2.5", "--embedded-zookeeper",
    )  # fmt: skip
    assert code == 0, err
    assert "#" not in out
    data = tomllib.loads(out)
    assert data["node"] == {"name": "from-file", "nsdb": "zk://env:2181/x", "session_timeout": 2.5}
    assert data["services"]["metrics"] == {"enabled": False, "listen": "127.0.0.1:9100"}
    assert data["services"]["api"]["listen"] == "0.0.0.0:9000"
    assert not data["services"]["host-liveness"]["enabled"]
    assert data["zookeeper"]["enabled"] is True
    code, out, _ = _run("cluster", "config", "--nsdb", "memory")
    assert tomllib.loads(out)["node"]["nsdb"] == "memory"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--enable", "api", "--disable", "api"), "--enable and --disable both name api"),
        (("--enable", "Bad Name"), "is not a service name"),
        (("--listen", "api=nowhere"), "--listen"),
        (("--nsdb", "mysql://x"), "is not an NSDB URL"),
        (("--session-timeout", "0"), "must be positive"),
        (("--config", "/nonexistent/node.toml"), "does not exist"),
    ],
)
def test_mistakes_are_one_line_errors(args: tuple[str, ...], message: str) -> None:
    for command in ("config", "serve"):
        code, out, err = _run("cluster", command, *args)
        assert code != 0
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], err
        assert "Traceback" not in out + err


def test_serve_refuses_an_unknown_service_before_serving() -> None:
    code, _, err = _run("cluster", "serve", "--nsdb", "memory", "--enable", "nosuch")
    assert code != 0 and "unknown service nosuch" in err and len(err.strip().splitlines()) == 1


def test_serve_refuses_a_taken_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, _, err = _run("cluster", "serve", "--nsdb", "memory", "--listen", f"127.0.0.1:{port}")
    assert code != 0 and f"cannot listen on 127.0.0.1:{port}" in err


def test_services_lists_the_built_ins() -> None:
    code, out, _ = _run("cluster", "services")
    assert code == 0
    for name, redundancy in (("api", "every-node"), ("host-liveness", "singleton")):
        assert any(line.split()[:2] == [name, redundancy] for line in out.splitlines()), out
