"""Agents in namespaces (`tessera.lab.agents`): the one command line, and a child agent's
life — start, exit with its last words, stop by signal — without root or a namespace
(the `enter` step is where a namespace would be entered; here a stand-in process runs)."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tessera.lab.agents import AgentProcess, AgentSpec, remove_agent_leftovers
from tessera.lab.errors import LabError

SPEC = AgentSpec(
    host_id="h-1",
    name="host1",
    nsdb="zk://198.18.0.254:2181/t",
    datapath="ebpf",
    underlay_ip="198.18.0.1",
    tunnel_zone="tz-1",
    state_dir=Path("/var/lib/x"),
)


def test_the_command_line_names_every_setting_once() -> None:
    argv = SPEC.argv(["tessera"])
    assert argv[:2] == ["tessera", "agent"]
    opts = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert opts == {
        "--host-id": "h-1",
        "--name": "host1",
        "--nsdb": "zk://198.18.0.254:2181/t",
        "--datapath": "ebpf",
        "--underlay-ip": "198.18.0.1",
        "--tunnel-zone": "tz-1",
        "--state-dir": "/var/lib/x",
    }
    verbose = AgentSpec(**{**SPEC.__dict__, "log_level": "DEBUG"}).argv(["tessera"])
    assert verbose[-2:] == ["--log-level", "DEBUG"]


def _stand_in(code: str) -> Callable[[list[str]], list[str]]:
    """An `enter` that runs `code` instead of the agent, given the agent's argv."""

    def enter(argv: list[str]) -> list[str]:
        assert argv[1] == "agent"
        return [sys.executable, "-c", code, *argv]

    return enter


def test_an_agent_that_exits_is_reported_with_its_last_log_lines(tmp_path: Path) -> None:
    agent = AgentProcess(
        SPEC, _stand_in("import sys; print('bad nsdb url'); sys.exit(3)"), tmp_path,
        tmp_path / "agent.log",
    )  # fmt: skip
    proc = agent.start()
    proc.wait(timeout=30)
    assert not agent.running()
    with pytest.raises(LabError, match=r"host1 exited \(3\): bad nsdb url"):
        agent.check()


def test_stop_signals_the_agent_and_a_restart_appends_to_its_log(tmp_path: Path) -> None:
    # The stand-in records its run dir and host id, then serves until SIGTERM, as the
    # agent writes <run dir>/agents/<host id>.json with its pid. Its handler is set
    # first: a SIGTERM right after the pid file must not meet the default action.
    code = (
        "import json, os, signal, sys, time\n"
        "d = os.path.join(os.environ['TESSERA_RUN_DIR'], 'agents')\n"
        "os.makedirs(d, exist_ok=True)\n"
        "host = sys.argv[sys.argv.index('--host-id') + 1]\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('stopping', flush=True), sys.exit(0)))\n"
        "open(os.path.join(d, host + '.json'), 'w').write(json.dumps({'pid': os.getpid()}))\n"
        "print('serving', flush=True)\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "agent.log"
    agent = AgentProcess(SPEC, _stand_in(code), tmp_path, log)
    for _ in range(2):
        agent.start()
        info = tmp_path / "agents" / "h-1.json"
        for _ in range(300):
            if agent.serving():
                break
            agent.check()
            time.sleep(0.05)
        assert agent.serving()
        assert json.loads(info.read_text())["pid"] == agent.proc.pid  # type: ignore[union-attr]
        agent.check()  # running: nothing to report
        agent.stop(signal.SIGTERM, timeout=20)
        assert agent.proc is None and not agent.running()
    assert log.read_text().split() == ["serving", "stopping"] * 2
    assert agent.socket == tmp_path / "agents" / "h-1.sock"
    remove_agent_leftovers("h-1", tmp_path)
    assert not info.exists()
