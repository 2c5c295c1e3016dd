"""Hooks for commands of other packages: `tessera api serve` and lazily loaded sub-apps."""

from __future__ import annotations

import socket
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from cli_fake_api import FakeApi
from cli_harness import Run

from tessera import __version__
from tessera.cli.main import PLUGINS, RESOURCES, RootGroup
from tessera.clikit.group import Plugin


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []
    module = types.ModuleType("tessera.api.server")
    module.run = lambda *args: calls.append(args)  # type: ignore[attr-defined]
    module.ServeError = type("ServeError", (Exception,), {})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tessera.api.server", module)
    monkeypatch.delenv("TESSERA_NSDB", raising=False)
    return calls


def test_api_serve_hands_its_options_to_the_server(
    run: Run, fake_server: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("api", "serve").exit_code == 0
    out = run("api", "serve", "--nsdb", "zk://127.0.0.1:2181/tessera", "--listen", "0.0.0.0:9")
    assert out.exit_code == 0, out.stderr
    monkeypatch.setenv("TESSERA_NSDB", "memory:lab")
    run("api", "serve")
    out = run("api", "serve", "--nsdb", "memory", "--neutron-listen", "127.0.0.1:9696")
    assert out.exit_code == 0, out.stderr
    assert run("api", "serve", "--neutron-listen", "nowhere").exit_code != 0
    neutron = {"neutron": {"enabled": True, "listen": "127.0.0.1:9696"}}
    assert fake_server == [
        ("zk://127.0.0.1:2181/tessera", "127.0.0.1:8181", {}),
        ("zk://127.0.0.1:2181/tessera", "0.0.0.0:9", {}),
        ("memory:lab", "127.0.0.1:8181", {}),
        ("memory", "127.0.0.1:8181", neutron),
    ]


def test_the_api_server_and_the_agent_default_to_the_same_nsdb() -> None:
    """Both started with defaults must meet in one NSDB, not in two different worlds."""
    from tessera.agent import cli as agent_cli
    from tessera.api import server
    from tessera.cli import serve

    assert server.DEFAULT_NSDB == serve.DEFAULT_NSDB == agent_cli.DEFAULT_NSDB
    assert agent_cli.DEFAULT_NSDB.startswith("zk://")


def test_api_serve_errors_from_the_server_are_one_line(
    run: Run, fake_server: list[tuple[Any, ...]]
) -> None:
    server = sys.modules["tessera.api.server"]

    def refuse(*args: object) -> None:
        raise server.ServeError("cannot listen on 127.0.0.1:8181: address already in use")

    server.run = refuse  # type: ignore[attr-defined]
    run("api", "serve").assert_one_line_error(
        "cannot listen on 127.0.0.1:8181: address already in use", code=1
    )
    assert "internal error" not in run("api", "serve").stderr


def test_api_serve_with_the_real_server_reports_a_taken_port(run: Run, unused_port: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run("api", "serve", "--nsdb", "memory", "--listen", f"127.0.0.1:{port}")
    out.assert_one_line_error(str(port), code=1)
    assert "internal error" not in out.stderr


def test_help_lists_each_resource_once_and_no_alias(run: Run) -> None:
    listed = [line.strip("│ ").split(" ")[0] for line in run("--help").stdout.splitlines()]
    for name in ("bridge", "router", "port-group", "tunnel-zone", "dhcp", "bind", "api"):
        assert listed.count(name) == 1
    for alias in ("bridges", "port_group", "dhcp-subnet", "link"):
        assert alias not in listed


def test_version(run: Run) -> None:
    out = run("--version")
    assert (out.exit_code, out.stdout) == (0, f"tessera {__version__}\n")


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "tessera_test_plugin_ok.py").write_text(
        "import typer\n"
        "app = typer.Typer()\n"
        "@app.command()\n"
        "def up(hosts: int = 2) -> None:\n"
        "    'Bring the lab up.'\n"
        "    print(f'up with {hosts} hosts')\n"
        "    raise typer.Exit(0 if hosts else 4)\n"
        "@app.command()\n"
        "def down() -> None:\n"
        "    print('down')\n"
    )
    (tmp_path / "tessera_test_plugin_single.py").write_text(
        "import typer\n"
        "app = typer.Typer()\n"
        "@app.command()\n"
        "def agent(host_id: str = typer.Option(..., '--host-id')) -> None:\n"
        "    'Run the agent.'\n"
        "    print(f'agent {host_id}')\n"
    )
    (tmp_path / "tessera_test_plugin_broken.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "tessera_test_plugin_wrong.py").write_text("app = 42\n")
    plugins = (
        Plugin("labx", "tessera_test_plugin_ok:app", "A test lab.", "Run"),
        Plugin("agentx", "tessera_test_plugin_single:app", "A one-command plugin."),
        Plugin("broken", "tessera_test_plugin_broken:app", "Broken."),
        Plugin("wrong", "tessera_test_plugin_wrong:app", "Not an app."),
        Plugin("absent", "tessera_test_plugin_absent:app", "Never written."),
    )
    monkeypatch.setattr(RootGroup, "plugins", RESOURCES + plugins)
    for name in (
        "tessera_test_plugin_ok",
        "tessera_test_plugin_single",
        "tessera_test_plugin_broken",
    ):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def test_plugins_run_when_present(run: Run, plugin_dir: Path) -> None:
    out = run("labx", "up", "--hosts", "3")
    assert (out.exit_code, out.stdout) == (0, "up with 3 hosts\n")
    assert run("labx", "up", "--hosts", "0").exit_code == 4
    assert run("labx", "down").stdout == "down\n"


def test_a_one_command_plugin_takes_options_directly(run: Run, plugin_dir: Path) -> None:
    assert run("agentx", "--host-id", "h1").stdout == "agent h1\n"
    assert "--host-id" in run("agentx", "--help").stdout
    run("agentx").assert_one_line_error("Missing option '--host-id'", code=2)


def test_help_lists_present_plugins_without_importing_them(run: Run, plugin_dir: Path) -> None:
    out = run("--help")
    assert "labx" in out.stdout and "A test lab." in out.stdout
    assert "absent" not in out.stdout
    assert "tessera_test_plugin_ok" not in sys.modules
    assert "tessera_test_plugin_broken" not in sys.modules
    assert run("absent").exit_code == 2


def test_broken_plugins_fail_alone_in_one_line(api: FakeApi, run: Run, plugin_dir: Path) -> None:
    run("broken", "x").assert_one_line_error(
        "'tessera broken' is unavailable", "no_such_dependency_xyz", code=1
    )
    run("wrong").assert_one_line_error("is not a typer app")
    assert run("bridge", "list").exit_code == 0


def test_the_registered_plugins_name_the_contract_commands() -> None:
    assert {p.name for p in PLUGINS} >= {"agent", "lab", "trace", "flows"}
    assert all(":" in p.target for p in PLUGINS)


def test_each_lazily_loaded_command_is_listed_with_its_own_help() -> None:
    """`tessera --help` shows a resource's help without importing it: the text in
    `RESOURCES` must be what the sub-app itself says."""
    for plugin in RESOURCES:
        loaded = plugin.load()
        own = (loaded.help or "").strip().splitlines()[0]
        assert own == plugin.help, plugin.name


def test_a_resource_command_does_not_import_the_others() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from tessera.cli.main import build_app\n"
        "import typer\n"
        "cmd = typer.main.get_command(build_app())\n"
        "cmd.main(['bridge', '--help'], standalone_mode=False)\n"
        "print(sorted(m for m in sys.modules if m.startswith('tessera.cli.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = out.stdout.strip().splitlines()[-1]
    assert "tessera.cli.bridges" in loaded
    assert "tessera.cli.load_balancers" not in loaded and "tessera.cli.rules" not in loaded
