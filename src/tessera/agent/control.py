"""The agent's local control socket: how `tessera flows` reads the flow table.

Why a unix socket rather than a state table: flow counters change with every packet, and
publishing them to the NSDB would cost every agent a write stream nobody reads. The CLI
asks only when a user does, the answer is always current, and nothing crosses the
network. Sockets are found through the run directory (`$TESSERA_RUN_DIR`, default
/run/tessera): each agent keeps `agents/<host id>.json` (its host id, name, pid and socket
path) next to `agents/<host id>.sock`. A unix socket is reached through the filesystem,
so the CLI finds agents running inside other network namespaces too (the lab's hosts).

Protocol: one JSON request line (`{"op": "flows"}`, `{"op": "status"}` or
`{"op": "conntrack"}`), one JSON answer, then the server closes the connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_DIR_ENV = "TESSERA_RUN_DIR"
DEFAULT_RUN_DIR = Path("/run/tessera")
_MAX_REQUEST = 4096

Handler = Callable[[dict[str, Any]], Any]


def run_dir() -> Path:
    return Path(os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR)


def agents_dir(base: Path | None = None) -> Path:
    return (base or run_dir()) / "agents"


@dataclass(frozen=True)
class AgentEndpoint:
    host_id: str
    name: str
    pid: int
    socket: Path

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return self.socket.exists()


def list_endpoints(base: Path | None = None) -> list[AgentEndpoint]:
    """The agents of this machine that announced themselves and still run."""
    out: list[AgentEndpoint] = []
    directory = agents_dir(base)
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            ep = AgentEndpoint(
                str(data["host_id"]), str(data.get("name", "")), int(data["pid"]),
                Path(data["socket"]),
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if ep.alive():
            out.append(ep)
    return out


def request(path: Path, op: str, timeout: float = 5.0, **args: Any) -> Any:
    """Ask the agent at `path`; raises OSError when it cannot be reached."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        chunks = []
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    answer = json.loads(b"".join(chunks) or b"null")
    if isinstance(answer, dict) and "error" in answer and len(answer) == 1:
        raise OSError(f"agent answered: {answer['error']}")
    return answer


class ControlServer:
    """Serves `handlers[op](request)` on a unix socket, one thread, one client at a time
    (requests are rare and answered from memory)."""

    def __init__(
        self, host_id: str, name: str, handlers: dict[str, Handler], base: Path | None = None
    ) -> None:
        self.host_id = host_id
        self.name = name
        self.handlers = handlers
        directory = agents_dir(base)
        self.socket_path = directory / f"{host_id}.sock"
        self.info_path = directory / f"{host_id}.json"
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake: tuple[socket.socket, socket.socket] | None = None

    def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o600)
        sock.listen(8)
        sock.setblocking(False)
        self._sock = sock
        self._wake = socket.socketpair()  # stop() wakes the thread at once
        info = {
            "host_id": self.host_id,
            "name": self.name,
            "pid": os.getpid(),
            "socket": str(self.socket_path),
        }
        tmp = self.info_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.info_path)
        self._thread = threading.Thread(target=self._serve, name="agent-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._wake is not None:
            with contextlib.suppress(OSError):
                self._wake[1].send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        if self._wake is not None:
            for end in self._wake:
                end.close()
            self._wake = None
        for path in (self.socket_path, self.info_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _serve(self) -> None:
        assert self._sock is not None and self._wake is not None
        waker = self._wake[0]
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([self._sock, waker], [], [])
                if self._sock not in readable:
                    continue
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except (OSError, ValueError):
                return
            conn.setblocking(True)
            with conn:
                conn.settimeout(5)
                try:
                    self._answer(conn)
                except Exception:  # a broken client must not end the server
                    log.exception("control request failed")

    def _answer(self, conn: socket.socket) -> None:
        data = b""
        while b"\n" not in data and len(data) < _MAX_REQUEST:
            chunk = conn.recv(_MAX_REQUEST)
            if not chunk:
                break
            data += chunk
        try:
            req = json.loads(data.split(b"\n", 1)[0] or b"{}")
            handler = self.handlers.get(str(req.get("op")))
            if handler is None:
                answer: Any = {"error": f"unknown request {req.get('op')!r}"}
            else:
                answer = handler(req)
        except ValueError as exc:
            answer = {"error": f"bad request: {exc}"}
        conn.sendall(json.dumps(answer).encode())
