"""A standalone ZooKeeper server from Debian's `zookeeper` package, for the lab and tests.

Everything lives in one directory: `zoo.cfg`, `log4j.properties`, the snapshots under
`data/`, the log `zookeeper.log` and the pid file `zookeeper.pid`. Because the config and
pid file are on disk, another process can stop or restart the same server (`tessera lab
nsdb stop|start` runs in a different process than `lab up`), and a restart in the same
directory keeps its port and its data, sessions included.

The classpath is Debian's `zookeeper.jar` (its manifest names every dependency it needs)
plus one slf4j binding; `/usr/share/java/*` would load ~500 jars and several competing
slf4j bindings. The admin HTTP server is off; the `ruok`, `srvr`, `stat` and `mntr`
four-letter words are allowed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
_LOGGING_JARS = (Path("/usr/share/java/slf4j-log4j12.jar"), Path("/usr/share/java/log4j-1.2.jar"))
_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


class ZookeeperError(RuntimeError):
    """ZooKeeper cannot be started or stopped; the message says why in one line."""


class ZookeeperServer:
    """One ZooKeeper process owned by whoever started it (found again via its pid file)."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        tick_ms: int = 200,
        heap_mb: int = 256,
        force_sync: bool = False,
    ) -> None:
        """`port` None reuses the port of an existing config in `data_dir`, else picks a
        free one at `start`. A small tick makes session expiry and tests fast; sessions
        may still ask for up to 60 s (maxSessionTimeout). Without `force_sync` the
        transaction log is not fsynced per write: it survives the process being killed
        (the page cache has it), only a machine crash loses the last writes, and on one
        machine that crash takes the whole lab with it anyway."""
        self.data_dir = Path(data_dir)
        self.host = host
        self.tick_ms = tick_ms
        self.heap_mb = heap_mb
        self.force_sync = force_sync
        self.port = port if port is not None else self._configured_port()
        self._process: subprocess.Popen[bytes] | None = None

    # -- files --

    @property
    def config_path(self) -> Path:
        return self.data_dir / "zoo.cfg"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "zookeeper.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "zookeeper.pid"

    @property
    def address(self) -> str:
        """`HOST:PORT` as kazoo wants it."""
        if self.port is None:
            raise ZookeeperError("ZooKeeper has no port yet: start it first")
        return f"{self.host}:{self.port}"

    def url(self, root: str = "tessera") -> str:
        """The NSDB URL for `open_nsdb`."""
        return f"zk://{self.address}/{root.lstrip('/')}"

    def _configured_port(self) -> int | None:
        try:
            for line in self.config_path.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "clientPort":
                    return int(value)
        except (OSError, ValueError):
            pass
        return None

    def _write_config(self, port: int) -> None:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            "\n".join(
                [
                    f"tickTime={self.tick_ms}",
                    f"dataDir={self.data_dir / 'data'}",
                    f"clientPort={port}",
                    f"clientPortAddress={self.host}",
                    "maxClientCnxns=0",
                    "minSessionTimeout=1000",
                    "maxSessionTimeout=60000",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=ruok,srvr,stat,mntr",
                    "autopurge.snapRetainCount=3",
                    "autopurge.purgeInterval=1",
                    f"forceSync={'yes' if self.force_sync else 'no'}",
                    "",
                ]
            )
        )
        (self.data_dir / "log4j.properties").write_text(
            "\n".join(
                [
                    "log4j.rootLogger=INFO, FILE",
                    "log4j.appender.FILE=org.apache.log4j.RollingFileAppender",
                    f"log4j.appender.FILE.File={self.log_path}",
                    "log4j.appender.FILE.MaxFileSize=10MB",
                    "log4j.appender.FILE.MaxBackupIndex=2",
                    "log4j.appender.FILE.layout=org.apache.log4j.PatternLayout",
                    "log4j.appender.FILE.layout.ConversionPattern="
                    "%d{ISO8601} %-5p [%t] %c{1} - %m%n",
                    "",
                ]
            )
        )

    # -- process --

    @staticmethod
    def _java() -> str:
        java = shutil.which("java")
        if java is None:
            raise ZookeeperError("Java is not installed (apt install default-jre-headless)")
        if not ZOOKEEPER_JAR.exists():
            raise ZookeeperError(
                f"ZooKeeper is not installed: {ZOOKEEPER_JAR} is missing (apt install zookeeper)"
            )
        return java

    def _command(self, java: str) -> list[str]:
        classpath = [str(ZOOKEEPER_JAR), *(str(j) for j in _LOGGING_JARS if j.exists())]
        return [
            java,
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",  # start fast: the server is small
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.data_dir / 'log4j.properties'}",
            "-Dzookeeper.admin.enableServer=false",
            "-cp",
            ":".join(classpath),
            _MAIN,
            str(self.config_path),
        ]

    def _read_pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_ours(pid) else None

    def _is_ours(self, pid: int) -> bool:
        """The pid is a live QuorumPeerMain with our config (pids get reused)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        if status.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie is not running
            return False
        return _MAIN.encode() in cmdline and str(self.config_path).encode() in cmdline

    @property
    def pid(self) -> int | None:
        if self._process is not None and self._process.poll() is None:
            return self._process.pid
        return self._read_pid()

    @property
    def is_running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 30.0) -> None:
        """Start (idempotent) and wait until it serves requests."""
        if self.is_running:
            self._wait_serving(timeout)
            return
        java = self._java()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = _free_port(self.host)
        elif not _port_free(self.host, self.port):
            raise ZookeeperError(
                f"cannot start ZooKeeper: {self.host}:{self.port} is already in use"
            )
        self._write_config(self.port)
        with open(self.data_dir / "zookeeper.out", "ab") as out:
            # Its own session: a Ctrl-C aimed at whoever started it must not kill it.
            self._process = subprocess.Popen(
                self._command(java),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        self.pid_path.write_text(f"{self._process.pid}\n")
        try:
            self._wait_serving(timeout)
        except ZookeeperError:
            self.stop()
            raise

    def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running:
                raise ZookeeperError(f"ZooKeeper exited during start-up: {self._failure_reason()}")
            if "Mode: " in self.four_letter("srvr"):
                return
            time.sleep(0.05)
        raise ZookeeperError(f"ZooKeeper did not serve on {self.address} within {timeout:g}s")

    def four_letter(self, command: str, timeout: float = 1.0) -> str:
        """Send a four-letter word; '' if the server does not answer."""
        if self.port is None:
            return ""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
                sock.sendall(command.encode())
                chunks = []
                while chunk := sock.recv(4096):
                    chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
        except OSError:
            return ""

    def _failure_reason(self) -> str:
        """The first ERROR of the log and its root cause, on one line."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        errors = [ln.split(" - ", 1)[-1].strip() for ln in lines if " ERROR " in ln]
        causes = [ln.strip() for ln in lines if ln.startswith("Caused by:")]
        reason = errors[0] if errors else "no error logged"
        if causes:
            reason += f" ({causes[-1].removeprefix('Caused by: ')})"
        return f"{reason}; see {self.log_path}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop exactly our process (SIGTERM, then SIGKILL) and wait until it is gone."""
        pid = self.pid
        if pid is None:
            self._reap()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not self._wait_gone(pid, 5.0):
                raise ZookeeperError(f"ZooKeeper (pid {pid}) did not exit")
        self._reap()
        with contextlib.suppress(OSError):
            self.pid_path.unlink()

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.pid == pid:
                try:
                    self._process.wait(timeout=0.05)
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if not self._is_ours(pid):
                return True
            time.sleep(0.05)
        return False

    def _reap(self) -> None:
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=1.0)
            self._process = None

    def __enter__(self) -> ZookeeperServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
