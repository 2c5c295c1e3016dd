"""An embedded ZooKeeper: the cluster node starts and supervises one member of the NSDB's
ensemble itself, so that three cluster nodes need no separate ZooKeeper deployment
(MidoNet 5's plan for its cluster; `tessera cluster serve --embedded-zookeeper`).

"Embedded" means owned, not in-process: ZooKeeper is Java, so the member is a child JVM
from Debian's `zookeeper` package, started with the same jars, command line and logging
as the lab's standalone server (`tessera.nsdb.zkserver`). The node writes its `zoo.cfg`
and `myid`, starts the JVM, and a supervisor thread restarts it with exponential back-off
whenever it dies; `stop()` ends exactly that process.

Every member of an ensemble is described by the same list of peers,
`HOST:CLIENT_PORT:PEER_PORT:ELECTION_PORT` in node-id order (ids from 1), so that every
node writes the same `server.N` lines; a single peer is a standalone server. A member
binds its client port and its quorum ports on its own peer's HOST only.

The JVM dies with its node: it runs in a session of its own (a Ctrl-C aimed at the node
must not reach it before the node has closed its clients), so no terminal signal takes
it along, and a node killed outright (SIGKILL, a crash) could not stop it. The kernel
does instead: the JVM is started with a parent-death signal (`prctl(PR_SET_PDEATHSIG,
SIGKILL)`), sent when the thread that started it ends, which for a node is when the
node's process ends (the main thread starts the member, the supervisor thread restarts
it and lives until `stop()`, which stops the JVM in order first). A member left running
by its node would hold the node's ports and keep serving an ensemble its node has left.
SIGKILL, as if the machine had crashed: the JVM's own shutdown takes a few hundred
milliseconds more, which the ensemble's other members would wait before electing a new
leader, and the member's writes are on disk already (`forceSync`).

In `data_dir`: `zoo.cfg`, `log4j.properties`, `data/` (snapshots, transaction logs and
`myid`), the log `zookeeper.log`, the JVM's own output `zookeeper.out` and the pid file
`zookeeper.pid` (by which a member still running from an earlier start, one that did not
exit on its parent-death signal, is found and stopped at the next start: it would hold
the ports, and its config may be stale).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tessera.nsdb.zkserver import (
    ZookeeperError,
    common_config,
    failure_reason,
    four_letter,
    is_zookeeper,
    java_command,
    port_free,
    terminate,
    write_log4j,
)

log = logging.getLogger(__name__)

_START_TIMEOUT = 30.0  # JVM start until the client port answers `ruok`
_POLL = 0.1  # how often the supervisor looks at its JVM, and waits poll the member


@dataclass(frozen=True)
class Peer:
    """One member of the ensemble as every member's `zoo.cfg` names it."""

    host: str
    client_port: int
    peer_port: int
    election_port: int

    @classmethod
    def parse(cls, text: str, *, standalone: bool = False) -> Peer:
        """`HOST:CLIENT_PORT:PEER_PORT:ELECTION_PORT`; ValueError naming the text. A
        standalone server has no quorum: its peer and election ports may be 0 (unused)."""
        parts = text.strip().rsplit(":", 3)
        form = "HOST:CLIENT_PORT:PEER_PORT:ELECTION_PORT"
        if len(parts) != 4 or not parts[0]:
            raise ValueError(f"ZooKeeper peer '{text}' is not {form}")
        try:
            ports = [int(p) for p in parts[1:]]
        except ValueError:
            raise ValueError(f"ZooKeeper peer '{text}' is not {form}") from None
        if standalone and ports[1:] == [0, 0]:
            ports[1:] = []
        if not all(0 < p < 65536 for p in ports) or len(set(ports)) != len(ports):
            raise ValueError(
                f"ZooKeeper peer '{text}': the three ports must be different, 1 to 65535"
            )
        return cls(parts[0], *ports, *([0, 0] if len(ports) == 1 else []))

    @property
    def client_address(self) -> str:
        return f"{self.host}:{self.client_port}"

    def __str__(self) -> str:
        return f"{self.host}:{self.client_port}:{self.peer_port}:{self.election_port}"


class Backoff:
    """Delays between restarts: `initial`, doubling up to `maximum`; back to `initial`
    once a member has run `stable_after` seconds (a member that crashes once a day
    should not wait as long as one that crashes at every start)."""

    def __init__(self, initial: float = 1.0, maximum: float = 30.0, stable_after: float = 60.0):
        if not 0 < initial <= maximum:
            raise ValueError("back-off: need 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.stable_after = stable_after
        self._next = initial

    def delay(self, ran_for: float) -> float:
        """The pause before the next restart of a member that ran `ran_for` seconds."""
        if ran_for >= self.stable_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay


class EmbeddedZooKeeper:
    """One ensemble member, a child JVM of this process (see the module docstring)."""

    def __init__(
        self,
        node_id: int,
        peers: Sequence[str],
        data_dir: Path,
        client_port: int,
        *,
        tick_ms: int = 500,
        init_limit: int = 10,
        sync_limit: int = 5,
        heap_mb: int = 256,
        force_sync: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        """ValueError for peers that cannot form an ensemble (a one-line message).

        No peers at all is a standalone server on `host:client_port` (whatever
        `node_id`); otherwise the member binds on its own peer's host and `host` is not
        used. The default tick of 500 ms lets sessions be as short as 1 s and a follower
        find a dead leader within `sync_limit` ticks (2.5 s); `init_limit` ticks (5 s)
        bound a follower's first synchronisation. Unlike the lab's server, writes are
        fsynced (`force_sync`): this is a deployment's NSDB, and a machine that crashes
        must not lose writes its clients were told are done."""
        if not peers:
            if node_id < 1:
                raise ValueError(f"ZooKeeper node id {node_id} is not 1 or more")
            peers, node_id = [f"{host}:{client_port}:0:0"], 1
        self.peers = tuple(Peer.parse(p, standalone=len(peers) == 1) for p in peers)
        if not 1 <= node_id <= len(self.peers):
            raise ValueError(
                f"ZooKeeper node id {node_id} is not one of the {len(self.peers)} peers "
                f"(ids are 1 to {len(self.peers)}, in the order of the peers)"
            )
        addresses = [(p.host, port) for p in self.peers for port in _ports(p) if port]
        if len(set(addresses)) != len(addresses):
            raise ValueError("ZooKeeper peers share a HOST:PORT: " + ", ".join(map(str, peers)))
        self.node_id = node_id
        self.me = self.peers[node_id - 1]
        if self.me.client_port != client_port:
            raise ValueError(
                f"ZooKeeper client port {client_port} is not that of peer {node_id} ({self.me})"
            )
        self.data_dir = Path(data_dir)
        self.client_port = client_port
        self.tick_ms = tick_ms
        self.init_limit = init_limit
        self.sync_limit = sync_limit
        self.heap_mb = heap_mb
        self.force_sync = force_sync
        #: How many times the supervisor started the JVM again after it died.
        self.restarts = 0
        #: Why the last restart failed, or how the JVM last exited ('' if never).
        self.last_error = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        _LIVE.add(self)

    # -- addresses and files --

    @property
    def host(self) -> str:
        return self.me.host

    @property
    def connect_string(self) -> str:
        """Every member's client address, comma-separated, as kazoo takes them."""
        return ",".join(p.client_address for p in self.peers)

    def url(self, root: str = "tessera") -> str:
        """The NSDB URL of the whole ensemble, for `open_nsdb`."""
        return f"zk://{self.connect_string}/{root.lstrip('/')}"

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
    def myid_path(self) -> Path:
        return self.data_dir / "data" / "myid"

    def config_lines(self) -> list[str]:
        """The `zoo.cfg` of this member: the common lines, then the ensemble's."""
        lines = common_config(
            tick_ms=self.tick_ms,
            data_dir=self.data_dir / "data",
            host=self.host,
            client_port=self.client_port,
            force_sync=self.force_sync,
        )
        if len(self.peers) == 1:
            return lines  # standalone: no quorum, no myid needed
        return [
            *lines,
            f"initLimit={self.init_limit}",
            f"syncLimit={self.sync_limit}",
            *(
                f"server.{i}={p.host}:{p.peer_port}:{p.election_port}"
                for i, p in enumerate(self.peers, start=1)
            ),
        ]

    def write_config(self) -> None:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join([*self.config_lines(), ""]))
        self.myid_path.write_text(f"{self.node_id}\n")
        write_log4j(self.data_dir / "log4j.properties", self.log_path)

    # -- state --

    @property
    def pid(self) -> int | None:
        process = self._process
        if process is not None and process.poll() is None:
            return process.pid
        return None

    @property
    def alive(self) -> bool:
        """The JVM runs (it may not serve yet: a member serves only within a quorum)."""
        return self.pid is not None

    @property
    def supervised(self) -> bool:
        thread = self._supervisor
        return thread is not None and thread.is_alive()

    def four_letter(self, command: str, timeout: float = 1.0) -> str:
        """A four-letter word to this member; '' if it does not answer."""
        return four_letter(self.host, self.client_port, command, timeout)

    @property
    def mode(self) -> str | None:
        """`leader`, `follower` or `standalone` while the member serves, else None."""
        for line in self.four_letter("srvr").splitlines():
            if line.startswith("Mode: "):
                return line.removeprefix("Mode: ").strip()
        return None

    # -- start and stop --

    def start(self, timeout: float = _START_TIMEOUT) -> None:
        """Start the JVM (idempotent) and return once it answers on its client port.

        It does not wait for a quorum: the first member of a new ensemble cannot serve
        until a second one runs (`wait_serving` waits for that)."""
        self._start(timeout, abort=None)

    def _start(self, timeout: float, abort: threading.Event | None) -> None:
        with self._lock:
            if self.alive or (abort is not None and abort.is_set()):
                return  # running, or the supervisor's restart lost the race with stop()
            command = java_command(
                self.config_path, self.data_dir / "log4j.properties", self.heap_mb
            )
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._stop_leftover()
            listens = [("client", self.client_port)]
            if len(self.peers) > 1:  # a standalone server opens no quorum ports
                listens += [("quorum", self.me.peer_port), ("election", self.me.election_port)]
            for what, port in listens:
                if not port_free(self.host, port):
                    raise ZookeeperError(
                        f"cannot start ZooKeeper member {self.node_id}: its {what} port "
                        f"{self.host}:{port} is already in use"
                    )
            self.write_config()
            self._process = process = spawn_tied(command, self.data_dir)
            self._started_at = time.monotonic()
            self.pid_path.write_text(f"{process.pid}\n")
            deadline = time.monotonic() + timeout
            while self.four_letter("ruok", timeout=0.5) != "imok":
                if process.poll() is not None:
                    self._forget()
                    raise ZookeeperError(
                        f"ZooKeeper member {self.node_id} exited during start-up: "
                        f"{failure_reason(self.log_path)}"
                    )
                if time.monotonic() >= deadline or (abort is not None and abort.is_set()):
                    self._terminate()
                    raise ZookeeperError(
                        f"ZooKeeper member {self.node_id} did not answer on "
                        f"{self.me.client_address} within {timeout:g}s; see {self.log_path}"
                    )
                time.sleep(_POLL)
            log.info("ZooKeeper member %d started (pid %d)", self.node_id, process.pid)

    def _stop_leftover(self) -> None:
        """Stop a member of ours that a killed node left running (found by pid file)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return
        if is_zookeeper(pid, self.config_path):
            log.warning("stopping ZooKeeper pid %d left over from a previous run", pid)
            terminate(pid, self.config_path)
        with contextlib.suppress(OSError):
            self.pid_path.unlink()

    def wait_serving(self, timeout: float) -> str:
        """Wait until this member serves clients (it is in a quorum); its mode.

        ZookeeperError if it does not within `timeout`, or if its JVM is gone and no
        supervisor will start it again."""
        deadline = time.monotonic() + timeout
        while True:
            mode = self.mode
            if mode is not None:
                return mode
            if not self.alive and not self.supervised:
                raise ZookeeperError(
                    f"ZooKeeper member {self.node_id} is not running: "
                    f"{failure_reason(self.log_path)}"
                )
            if time.monotonic() >= deadline:
                quorum = len(self.peers) // 2 + 1
                raise ZookeeperError(
                    f"ZooKeeper member {self.node_id} did not serve on "
                    f"{self.me.client_address} within {timeout:g}s (it needs {quorum} of "
                    f"{len(self.peers)} members running); see {self.log_path}"
                )
            time.sleep(_POLL)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop supervising, then stop the JVM (SIGTERM, SIGKILL after `timeout`) and
        wait until it is gone.

        The JVM is stopped before the supervisor thread is joined: a JVM that thread
        restarted gets its parent-death signal (SIGKILL) when the thread ends, and a
        member that stops cleanly leaves its peers at once."""
        self._stopping.set()
        with self._lock:
            self._terminate(timeout)
        thread = self._supervisor
        if thread is not None:
            thread.join(timeout=_START_TIMEOUT + timeout)
            self._supervisor = None

    def _terminate(self, timeout: float = 10.0) -> None:
        process = self._process
        if process is not None:
            if process.poll() is None:
                terminate(process.pid, self.config_path, process, timeout)
            self._forget()

    def _forget(self) -> None:
        """The JVM is gone: reap it and drop its pid file."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1.0)
        with contextlib.suppress(OSError):
            self.pid_path.unlink()

    # -- supervision --

    def supervise(
        self,
        *,
        initial_backoff: float = 1.0,
        max_backoff: float = 30.0,
        stable_after: float = 60.0,
    ) -> None:
        """Start the member if it is not running, then keep it running from a
        background thread until `stop()`: when the JVM dies it is started again after
        a back-off (`Backoff`), each attempt counted in `restarts`."""
        backoff = Backoff(initial_backoff, max_backoff, stable_after)
        with self._lock:
            if self.supervised:
                return
            self._stopping.clear()
            self.start()
            self._supervisor = threading.Thread(
                target=self._supervise,
                args=(backoff,),
                name=f"zookeeper-{self.node_id}-supervisor",
                daemon=True,
            )
            self._supervisor.start()

    def _supervise(self, backoff: Backoff) -> None:
        while not self._stopping.wait(_POLL):
            with self._lock:
                if self._stopping.is_set():
                    return  # stop() took the lock first and stopped the JVM
                process = self._process
                code = None if process is None else process.poll()
                if process is not None and code is None:
                    continue
                ran_for = 0.0  # a start that failed ran for no time
                if process is not None:
                    ran_for = time.monotonic() - self._started_at
                    self.last_error = f"exited with status {code}"
                    self._forget()
            delay = backoff.delay(ran_for)
            log.warning(
                "ZooKeeper member %d is not running (%s); starting it again in %.1fs",
                self.node_id,
                self.last_error,
                delay,
            )
            if self._stopping.wait(delay):
                return
            self.restarts += 1
            try:
                self._start(_START_TIMEOUT, abort=self._stopping)
            except ZookeeperError as exc:
                self.last_error = str(exc)
                log.warning("%s", exc)

    # -- context manager --

    def __enter__(self) -> EmbeddedZooKeeper:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedZooKeeper({self.node_id}, {self.me}, pid={self.pid})"


def _ports(peer: Peer) -> tuple[int, int, int]:
    return (peer.client_port, peer.peer_port, peer.election_port)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child after fork only calls it


def spawn_tied(command: list[str], directory: Path) -> subprocess.Popen[bytes]:
    """Start the JVM in `directory` (output appended to `zookeeper.out`) in a session of
    its own, with SIGKILL as its parent-death signal (see the module docstring): the
    member ends when the thread that started it does, however that thread's process
    ended."""
    with open(directory / "zookeeper.out", "ab") as out:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),
        )


def _die_with_parent(parent: int) -> Callable[[], None]:
    """The child's last step before exec: ask for SIGKILL when its parent ends, and end
    at once if the parent already has (it died between fork and prctl: no signal would
    come). Only a system call and `os._exit`: a forked child of a threaded process must
    not take locks."""

    def preexec() -> None:
        if _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:
            os._exit(0)

    return preexec


# A node that exits without stopping its member (an exception on the way out) stops it
# in order here; the parent-death signal is for a node that cannot run this any more.
_LIVE: weakref.WeakSet[EmbeddedZooKeeper] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for member in list(_LIVE):
        with contextlib.suppress(ZookeeperError):
            member.stop()
