"""Serving the Neutron app outside a cluster node: `serve_neutron(nsdb, host, port)`
starts it on a background thread (tests, `tessera lab`, a script), `stop()` ends it.

Inside a node, the app is served by `NeutronService` (`service.py`) instead; both bind
the socket first, so a taken port fails at start with one line.
"""

from __future__ import annotations

import socket
import threading

import uvicorn

from tessera.neutron.app import DEFAULT_PORT, create_neutron_app
from tessera.nsdb.base import Nsdb

DEFAULT_NEUTRON_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"


class ListenError(ValueError):
    """A listen address that is not ADDR:PORT, or cannot be bound; one line."""


def split_listen(listen: str) -> tuple[str, int]:
    """`ADDR:PORT` (`[v6]:PORT` for IPv6) → (addr, port); port 0 picks a free one."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ListenError(
            f"Neutron listen address '{listen}' is not ADDR:PORT (e.g. {DEFAULT_NEUTRON_LISTEN})"
        )
    return host, int(port)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ListenError(
            f"cannot listen on {host}:{port} for the Neutron API: {exc.strerror or exc}"
        ) from None
    sock.set_inheritable(True)
    return sock


class NeutronServer:
    """The Neutron API served on a bound socket from a background thread."""

    def __init__(self, nsdb: Nsdb, sock: socket.socket) -> None:
        config = uvicorn.Config(
            create_neutron_app(nsdb), log_level="warning", timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        self._sock = sock
        addr = sock.getsockname()
        self.port = int(addr[1])
        host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
        self.url = f"http://{host}:{self.port}"
        # uvicorn installs signal handlers only in the main thread: the owner handles
        # signals and calls stop().
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="neutron-api", daemon=True
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; returns once uvicorn accepts connections (bounded wait)."""
        self._thread.start()
        stopped = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if self._server.started or not self._thread.is_alive():
                break
            stopped.wait(0.02)
        if not self._server.started:
            self.stop()
            raise ListenError(f"the Neutron API did not start within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()


def serve_neutron(nsdb: Nsdb, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> NeutronServer:
    """Serve the Neutron API on HOST:PORT (0: a free port, see `.port`) until `stop()`;
    the caller keeps `nsdb` open until then. `ListenError` when it cannot bind."""
    server = NeutronServer(nsdb, bind(host, port))
    server.start()
    return server
