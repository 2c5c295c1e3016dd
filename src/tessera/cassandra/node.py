"""One Cassandra node: a JVM started in its own directory, found again by pid file.

Everything of a node lives in its directory: `cassandra.yaml`, `logback.xml`, the data,
commit log and hints, the log `system.log`, the JVM's output `cassandra.out` and the pid
file `cassandra.pid`. Another process can therefore stop or restart the same node
(`tessera lab cassandra stop|start` runs in a different process than `lab up`), and a
restart in the same directory keeps its data and its place in the ring.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tessera.cassandra import install
from tessera.cassandra.config import CQL_PORT, STORAGE_PORT, NodeConfig, java_command
from tessera.cassandra.errors import CassandraError


class CassandraNode:
    """One node process owned by whoever started it."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return self.config.address

    @property
    def directory(self) -> Path:
        return self.config.directory

    @property
    def pid_path(self) -> Path:
        return self.directory / "cassandra.pid"

    @property
    def out_path(self) -> Path:
        return self.directory / "cassandra.out"

    @property
    def log_path(self) -> Path:
        return self.config.log_path

    @property
    def pid(self) -> int | None:
        if self._process is not None and self._process.poll() is None:
            return self._process.pid
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_node(pid, self.config.yaml_path) else None

    @property
    def is_running(self) -> bool:
        return self.pid is not None

    def serves_cql(self, timeout: float = 1.0) -> bool:
        """The CQL port accepts a connection (the last thing a node opens at start-up)."""
        try:
            with socket.create_connection((self.address, CQL_PORT), timeout=timeout):
                return True
        except OSError:
            return False

    def launch(self) -> int:
        """Start the JVM (idempotent) without waiting: a cluster's nodes start at once."""
        pid = self.pid
        if pid is not None:
            return pid
        java, lib = install.check_installed()
        for port in (CQL_PORT, STORAGE_PORT):
            if not _port_free(self.address, port):
                raise CassandraError(
                    f"cannot start Cassandra on {self.address}: port {port} is already in use"
                )
        self.config.write()
        command = java_command(java, lib, self.config, install.MAIN_CLASS)
        with open(self.out_path, "ab") as out:
            # Its own session: a Ctrl-C aimed at whoever started it must not kill it.
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
            )
        self.pid_path.write_text(f"{self._process.pid}\n")
        return self._process.pid

    def wait_cql(self, deadline: float) -> None:
        """Until the node serves CQL; a CassandraError if it exits or `deadline`
        (time.monotonic) passes first."""
        while not self.serves_cql():
            if not self.is_running:
                raise CassandraError(
                    f"Cassandra {self.address} exited during start-up: "
                    f"{failure_reason(self.log_path, self.out_path)}"
                )
            if time.monotonic() >= deadline:
                raise CassandraError(
                    f"Cassandra {self.address} did not serve CQL in time; see {self.log_path}"
                )
            time.sleep(0.25)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop exactly this node (SIGTERM, then SIGKILL after `timeout`), wait until it
        is gone and its ports are free."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not self._wait_gone(pid, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if not self._wait_gone(pid, 10.0):
                    raise CassandraError(f"Cassandra {self.address} (pid {pid}) did not exit")
        self._process = None
        with contextlib.suppress(OSError):
            self.pid_path.unlink()

    def terminate(self) -> None:
        """SIGTERM without waiting (`stop` waits)."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash, for failure tests."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 10.0)
        self._process = None

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.pid == pid:
                try:
                    self._process.wait(timeout=0.1)
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if not is_node(pid, self.config.yaml_path):
                return True
            time.sleep(0.1)
        return False


def is_node(pid: int, yaml_path: Path) -> bool:
    """`pid` is a live CassandraDaemon reading `yaml_path` (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if status.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    return install.MAIN_CLASS.encode() in cmdline and any(
        str(yaml_path).encode() in arg for arg in cmdline
    )


def kill_nodes_under(directory: Path) -> list[int]:
    """SIGKILL every node whose directory is a child of `directory` and wait until each
    is gone (for removing a cluster whose data goes too); returns the pids that would
    not die."""
    stuck: list[int] = []
    for pid_path in sorted(Path(directory).glob("*/cassandra.pid")):
        yaml_path = pid_path.parent / "cassandra.yaml"
        try:
            pid = int(pid_path.read_text().strip())
        except (OSError, ValueError):
            continue
        if not is_node(pid, yaml_path):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while is_node(pid, yaml_path) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if is_node(pid, yaml_path):
            stuck.append(pid)
    return stuck


def failure_reason(log_path: Path, out_path: Path) -> str:
    """The first ERROR of the log (or the JVM's last output line) and where to look."""
    lines: list[str] = []
    for path in (log_path, out_path):
        with contextlib.suppress(OSError):
            lines += path.read_text(errors="replace").splitlines()
    errors = [ln.split(" - ", 1)[-1].strip() for ln in lines if ln.startswith("ERROR")]
    if errors:
        reason = errors[0]
    else:
        tail = [ln.strip() for ln in lines if ln.strip()]
        reason = tail[-1] if tail else "no error logged"
    return f"{reason}; see {log_path}"


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
