"""ZooKeeper servers from Debian's `zookeeper` package: a standalone server for the lab and
tests (`ZookeeperServer`), and the JVM plumbing it shares with the cluster's embedded
ensemble (`tessera.cluster.embedded_zk`): finding Java and the jars, the command line,
logging, the common `zoo.cfg` lines, four-letter words, start-up failure reasons and
stopping exactly one process.

For the standalone server everything lives in one directory: `zoo.cfg`,
`log4j.properties`, the snapshots under `data/`, the log `zookeeper.log` and the pid file
`zookeeper.pid`. Because the config and pid file are on disk, another process can stop or
restart the same server (`tessera lab nsdb stop|start` runs in a different process than
`lab up`), and a restart in the same directory keeps its port and its data, sessions
included.

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
    def log4j_path(self) -> Path:
        return self.data_dir / "log4j.properties"

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
        lines = common_config(
            tick_ms=self.tick_ms,
            data_dir=self.data_dir / "data",
            host=self.host,
            client_port=port,
            force_sync=self.force_sync,
        )
        self.config_path.write_text("\n".join([*lines, ""]))
        write_log4j(self.log4j_path, self.log_path)

    # -- process --

    @staticmethod
    def _java() -> str:
        return find_java()

    def _read_pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_zookeeper(pid, self.config_path) else None

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
        command = java_command(self.config_path, self.log4j_path, self.heap_mb)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port(self.host)
        elif not port_free(self.host, self.port):
            raise ZookeeperError(
                f"cannot start ZooKeeper: {self.host}:{self.port} is already in use"
            )
        self._write_config(self.port)
        self._process = spawn(command, self.data_dir)
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
                raise ZookeeperError(
                    f"ZooKeeper exited during start-up: {failure_reason(self.log_path)}"
                )
            if "Mode: " in self.four_letter("srvr"):
                return
            time.sleep(0.05)
        raise ZookeeperError(f"ZooKeeper did not serve on {self.address} within {timeout:g}s")

    def four_letter(self, command: str, timeout: float = 1.0) -> str:
        """Send a four-letter word; '' if the server does not answer."""
        if self.port is None:
            return ""
        return four_letter(self.host, self.port, command, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop exactly our process (SIGTERM, then SIGKILL) and wait until it is gone."""
        pid = self.pid
        if pid is not None:
            terminate(pid, self.config_path, self._process, timeout)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=1.0)
            self._process = None
        if pid is not None:
            with contextlib.suppress(OSError):
                self.pid_path.unlink()

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


# -- shared with the embedded ensemble (tessera.cluster.embedded_zk) -------------------


def find_java() -> str:
    """The `java` binary, after checking that Debian's ZooKeeper is installed."""
    java = shutil.which("java")
    if java is None:
        raise ZookeeperError("Java is not installed (apt install default-jre-headless)")
    if not ZOOKEEPER_JAR.exists():
        raise ZookeeperError(
            f"ZooKeeper is not installed: {ZOOKEEPER_JAR} is missing (apt install zookeeper)"
        )
    return java


def java_command(config_path: Path, log4j_path: Path, heap_mb: int) -> list[str]:
    """The command line of one ZooKeeper server reading `config_path`: a small heap and
    the quick-starting JIT, since a tessera ZooKeeper is small; the config path on the
    command line is how `is_zookeeper` recognises the process later."""
    java = find_java()
    classpath = [str(ZOOKEEPER_JAR), *(str(j) for j in _LOGGING_JARS if j.exists())]
    return [
        java,
        f"-Xmx{heap_mb}m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",  # start fast: the server is small
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{log4j_path}",
        "-Dzookeeper.admin.enableServer=false",
        "-cp",
        ":".join(classpath),
        _MAIN,
        str(config_path),
    ]


def common_config(
    *, tick_ms: int, data_dir: Path, host: str, client_port: int, force_sync: bool
) -> list[str]:
    """The `zoo.cfg` lines every tessera ZooKeeper has: clients on `host:client_port`
    only, sessions of up to 60 s, no admin HTTP server, the four-letter words tessera
    uses for health checks, old snapshots purged."""
    return [
        f"tickTime={tick_ms}",
        f"dataDir={data_dir}",
        f"clientPort={client_port}",
        f"clientPortAddress={host}",
        "maxClientCnxns=0",
        f"minSessionTimeout={max(1000, 2 * tick_ms)}",
        "maxSessionTimeout=60000",
        "admin.enableServer=false",
        "4lw.commands.whitelist=ruok,srvr,stat,mntr",
        "autopurge.snapRetainCount=3",
        "autopurge.purgeInterval=1",
        f"forceSync={'yes' if force_sync else 'no'}",
    ]


def write_log4j(path: Path, log_path: Path) -> None:
    """Log INFO and above to `log_path` (rolled at 10 MB, two old files kept)."""
    path.write_text(
        "\n".join(
            [
                "log4j.rootLogger=INFO, FILE",
                "log4j.appender.FILE=org.apache.log4j.RollingFileAppender",
                f"log4j.appender.FILE.File={log_path}",
                "log4j.appender.FILE.MaxFileSize=10MB",
                "log4j.appender.FILE.MaxBackupIndex=2",
                "log4j.appender.FILE.layout=org.apache.log4j.PatternLayout",
                "log4j.appender.FILE.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{1} - %m%n",
                "",
            ]
        )
    )


def spawn(command: list[str], directory: Path) -> subprocess.Popen[bytes]:
    """Start the JVM in `directory`, its stdout and stderr appended to `zookeeper.out`."""
    with open(directory / "zookeeper.out", "ab") as out:
        # Its own session: a Ctrl-C aimed at whoever started it must not kill it; the
        # owner stops it in order (clients first, then the server).
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
            start_new_session=True,
        )


def is_zookeeper(pid: int, config_path: Path) -> bool:
    """`pid` is a live QuorumPeerMain reading `config_path` (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if status.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie is not running
        return False
    return _MAIN.encode() in cmdline and str(config_path).encode() in cmdline


def terminate(
    pid: int,
    config_path: Path,
    process: subprocess.Popen[bytes] | None = None,
    timeout: float = 10.0,
) -> None:
    """Stop exactly the ZooKeeper `pid` (SIGTERM, then SIGKILL after `timeout`) and wait
    until it is gone; `process`, if it is that pid's Popen, is reaped on the way."""
    if not is_zookeeper(pid, config_path):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, config_path, process, timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, config_path, process, 5.0):
        raise ZookeeperError(f"ZooKeeper (pid {pid}) did not exit")


def _wait_gone(
    pid: int, config_path: Path, process: subprocess.Popen[bytes] | None, timeout: float
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.pid == pid:
            try:
                process.wait(timeout=0.05)
                return True
            except subprocess.TimeoutExpired:
                continue
        if not _ours_or_exiting(pid, config_path):
            return True
        time.sleep(0.05)
    return False


def _ours_or_exiting(pid: int, config_path: Path) -> bool:
    """`pid` is still our ZooKeeper, or a process on its way out: an exiting process
    loses its command line before it becomes a zombie, but may hold its ports a little
    longer, and a restart must not find them taken."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if status.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    return not cmdline or is_zookeeper(pid, config_path)


def four_letter(host: str, port: int, command: str, timeout: float = 1.0) -> str:
    """Send a four-letter word (`ruok`, `srvr`...); '' if nothing answers."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(command.encode())
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def failure_reason(log_path: Path) -> str:
    """The first ERROR of the log and its root cause, on one line."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    errors = [ln.split(" - ", 1)[-1].strip() for ln in lines if " ERROR " in ln]
    causes = [ln.strip() for ln in lines if ln.startswith("Caused by:")]
    reason = errors[0] if errors else "no error logged"
    if causes:
        reason += f" ({causes[-1].removeprefix('Caused by: ')})"
    return f"{reason}; see {log_path}"


def free_port(host: str) -> int:
    """A TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """Nothing listens on `host:port` (a port in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
