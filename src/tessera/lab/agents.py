"""Agents in namespaces: one way to run a `tessera agent` inside a host namespace.

Three callers run real agents in namespaces: the lab (`lab.hosts`), the datapath
benchmark and the agent system tests. They differ in who owns the process — the lab's
agents outlive the command that starts them (spawned by pid file), the bench's and the
tests' are children stopped by whoever started them — but not in what an agent is: the
same command line, the same control socket under a run directory, the same pinned maps
left under `BPF_PIN_ROOT`, the same question "did it die, and what did it say". Those
live here once:

- `AgentSpec.argv()`: the agent's command line, spelt in one place;
- `AgentProcess`: a child agent inside a namespace (start, exit check with the last log
  lines, control-socket requests, stop by signal) for the bench and the tests;
- `remove_agent_leftovers()`: what an agent leaves outside its namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tessera.agent.control import RUN_DIR_ENV, agents_dir, request
from tessera.lab import procs
from tessera.lab.errors import LabError

# Agents pin their maps under <root>/<host id> (tessera.datapath.ebpf_backend, not
# imported here: it loads the whole eBPF toolchain).
BPF_PIN_ROOT = Path("/sys/fs/bpf/tessera")


@dataclass(frozen=True)
class AgentSpec:
    """What one agent is told on its command line."""

    host_id: str
    name: str
    nsdb: str
    datapath: str
    underlay_ip: str
    tunnel_zone: str
    state_dir: Path
    log_level: str | None = None  # None: the agent's default
    cassandra: str | None = None  # contact points: flow state kept in Cassandra too

    def argv(self, tessera: Sequence[str] | None = None) -> list[str]:
        """`tessera agent ...` (not yet inside a namespace: the caller prefixes that)."""
        argv = [
            *(tessera if tessera is not None else procs.tessera_command()), "agent",
            "--host-id", self.host_id,
            "--name", self.name,
            "--nsdb", self.nsdb,
            "--datapath", self.datapath,
            "--underlay-ip", self.underlay_ip,
            "--tunnel-zone", self.tunnel_zone,
            "--state-dir", str(self.state_dir),
        ]  # fmt: skip
        if self.log_level is not None:
            argv += ["--log-level", self.log_level]
        if self.cassandra is not None:
            argv += ["--flow-state", "cassandra", "--cassandra", self.cassandra]
        return argv


Popen = Callable[..., "subprocess.Popen[bytes]"]


class AgentProcess:
    """An agent this process runs as a child inside a namespace, and stops itself.

    `enter` turns a command line into one that runs inside the host namespace (e.g.
    `Sandbox.argv`); `run_dir` is the agent's TESSERA_RUN_DIR, where its control socket
    is; the agent's output is appended to `log`. `popen` lets a caller that tracks its
    children (the bench's `Lab.popen`) start it. The same object can be started again
    after a stop (a restart keeps the host id, state directory and log).
    """

    def __init__(
        self,
        spec: AgentSpec,
        enter: Callable[[list[str]], list[str]],
        run_dir: Path,
        log: Path,
        popen: Popen = subprocess.Popen,
    ) -> None:
        self.spec = spec
        self.enter = enter
        self.run_dir = run_dir
        self.log = log
        self._popen = popen
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        """The agent's control socket."""
        return agents_dir(self.run_dir) / f"{self.spec.host_id}.sock"

    def start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, RUN_DIR_ENV: str(self.run_dir)}
        with self.log.open("ab") as out:
            self.proc = self._popen(
                self.enter(self.spec.argv()),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        return self.proc

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Raise LabError, with the agent's last log lines, if it was started and exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise LabError(
                f"agent {self.spec.name} exited ({self.proc.returncode}): {self.log_tail(5)}"
            )

    def serving(self) -> bool:
        """Whether this very process answers on the control socket (a restarted agent's
        predecessor may have left its registration file behind)."""
        if self.proc is None:
            return False
        info = agents_dir(self.run_dir) / f"{self.spec.host_id}.json"
        try:
            return bool(json.loads(info.read_text())["pid"] == self.proc.pid)
        except (OSError, ValueError, KeyError):
            return False

    def request(self, op: str, timeout: float = 5.0, **args: Any) -> Any:
        """One control-socket request; raises OSError when the agent cannot be reached."""
        return request(self.socket, op, timeout=timeout, **args)

    def log_tail(self, lines: int = 60, sep: str = " | ") -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return sep.join(text[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Signal the agent and wait; kill it if it outlives `timeout`."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def remove_agent_leftovers(host_id: str, run_dir: Path | None = None) -> None:
    """What an agent leaves outside its namespace: pinned maps, control socket files."""
    pins = BPF_PIN_ROOT / host_id
    if pins.exists():
        shutil.rmtree(pins, ignore_errors=True)
    for suffix in (".sock", ".json"):
        with contextlib.suppress(FileNotFoundError):
            (agents_dir(run_dir) / f"{host_id}{suffix}").unlink()


def remove_pin_root_if_empty() -> None:
    """The shared pin root goes only when no agent (of anyone) still pins under it."""
    with contextlib.suppress(OSError):
        BPF_PIN_ROOT.rmdir()
