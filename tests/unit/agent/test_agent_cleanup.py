"""`tessera agent --cleanup`: refused while the host's agent runs, never makes a host id
up, and clears the stale control files a killed agent left. (What it removes from the
kernel is tested in the lab: tests/system/lab/test_lab_agent_restart.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from support.local import TESSERA
from tessera.agent import setup


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TESSERA_RUN_DIR", str(tmp_path / "run"))
    (tmp_path / "run" / "agents").mkdir(parents=True)
    return tmp_path / "run" / "agents"


def _announce(agents: Path, host_id: str, pid: int) -> None:
    sock = agents / f"{host_id}.sock"
    sock.touch()
    record = {"host_id": host_id, "name": "h", "pid": pid, "socket": str(sock)}
    (agents / f"{host_id}.json").write_text(json.dumps(record))


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_cleanup_is_refused_while_the_agent_of_the_host_runs(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_id = str(uuid.uuid4())
    _announce(run_dir, host_id, os.getpid())
    removed: list[str] = []

    def cleanup(h: str) -> list[str]:
        removed.append(h)
        return []

    monkeypatch.setattr(setup, "cleanup", cleanup)
    with pytest.raises(setup.SetupError, match=r"is running \(pid \d+\): stop it first"):
        setup.cleanup_host(host_id)
    assert removed == [] and (run_dir / f"{host_id}.sock").exists()


def test_cleanup_after_a_kill_removes_the_stale_control_files(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    _announce(run_dir, host_id, _dead_pid())
    _announce(run_dir, other, os.getpid())  # another host's running agent: not ours
    monkeypatch.setattr(setup, "cleanup", lambda h: [f"pins of {h}"])
    lines = setup.cleanup_host(host_id)
    assert lines[0] == f"host {host_id}: removed pins of {host_id}"
    assert not (run_dir / f"{host_id}.sock").exists()
    assert not (run_dir / f"{host_id}.json").exists()
    assert (run_dir / f"{other}.sock").exists()
    monkeypatch.setattr(setup, "cleanup", lambda h: [])
    assert setup.cleanup_host(host_id) == [f"host {host_id}: no datapath to remove"]


def test_cleanup_without_a_kept_host_id_makes_none_up(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "TESSERA_HOST_ID_FILE"}
    proc = subprocess.run(
        [str(TESSERA), "agent", "--cleanup", "--state-dir", str(state)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"no host id kept in {state / 'host_id'}: no datapath to remove\n"
    assert not state.exists()
