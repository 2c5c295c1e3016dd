"""`tessera api serve`: the REST API plus the cluster services, in one process.

Several servers may share one ZooKeeper: all serve the API, one (the elected leader)
also runs the singleton cluster services. The ZooKeeper session timeout bounds how long
a killed leader keeps its role, hence the short `ZK_SESSION_TIMEOUT`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

import uvicorn

from tessera.api.app import create_app
from tessera.cluster import ClusterServices, HostLivenessJanitor
from tessera.nsdb.base import Nsdb
from tessera.nsdb.connect import open_connected
from tessera.nsdb.errors import Unavailable

DEFAULT_LISTEN = "127.0.0.1:8181"
# The agent's default too (`tessera agent`): started side by side with defaults, both
# meet in one ZooKeeper; `--nsdb memory` is for a quick look at the API alone.
DEFAULT_NSDB = "zk://127.0.0.1:2181/tessera"
ZK_SESSION_TIMEOUT = 4.0  # seconds; a dead leader is replaced about this long after it died

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT once its graceful shutdown is done, which would
    kill the process before `run` closes its NSDB session (whose end is what hands the
    leadership to another server at once); here a signal just makes `run` return."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()


class ServeError(Exception):
    """The server cannot start; the message is one line for the user."""


def parse_listen(listen: str) -> tuple[str, int]:
    """`ADDR:PORT` (`[v6]:PORT` for IPv6) → (addr, port)."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ServeError(f"--listen '{listen}' is not ADDR:PORT (e.g. {DEFAULT_LISTEN})")
    return host, int(port)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def run(nsdb_url: str = DEFAULT_NSDB, listen: str = DEFAULT_LISTEN) -> None:
    """Serve until SIGINT/SIGTERM. Raises `ServeError` when it cannot start."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    host, port = parse_listen(listen)
    sock = _bind(host, port)
    nsdb: Nsdb | None = None
    services: ClusterServices | None = None
    try:
        try:
            nsdb = open_connected(
                nsdb_url,
                session_timeout=ZK_SESSION_TIMEOUT,
                hint="start ZooKeeper there, pass --nsdb zk://HOST:PORT/ROOT, "
                "or --nsdb memory for a quick look",
            )
        except ValueError as exc:
            raise ServeError(f"--nsdb: {exc}") from None
        except Unavailable as exc:
            raise ServeError(str(exc)) from None
        identifier = f"{socket.gethostname()}:{os.getpid()}@{host}:{port}"
        services = ClusterServices(nsdb, identifier, [HostLivenessJanitor(nsdb)])
        app = create_app(nsdb, services)
        services.start()
        log.info(
            "tessera API on http://%s:%d/api/v1 (NSDB %s) as %s", host, port, nsdb_url, identifier
        )
        config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5)
        _Server(config).run(sockets=[sock])
    finally:
        if services is not None:
            services.stop()
        if nsdb is not None:
            nsdb.close()
        sock.close()
