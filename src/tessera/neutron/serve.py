"""Serving the Neutron app: one helper the server process calls beside the v1 API.

The server (`tessera api serve` / `tessera cluster serve`) owns the NSDB session and
the process's lifetime; it hands both here. `neutron_server` builds the uvicorn server
on an already-bound socket (so a busy port fails at start, with the v1 API's wording),
and `serve_neutron` runs it in a daemon thread until `stop()`.
"""

from __future__ import annotations

import socket
import threading

import uvicorn

from tessera.neutron.app import DEFAULT_PORT, create_neutron_app
from tessera.nsdb.base import Nsdb

DEFAULT_NEUTRON_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"


class NeutronServer:
    """The Neutron API served on a bound socket from a background thread."""

    def __init__(self, nsdb: Nsdb, sock: socket.socket) -> None:
        config = uvicorn.Config(
            create_neutron_app(nsdb), log_level="warning", timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        # uvicorn installs signal handlers only in the main thread; the owner handles
        # signals and calls stop().
        self._sock = sock
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="neutron-api", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        self._thread.start()

    def wait_started(self, timeout: float = 10.0) -> bool:
        """True once uvicorn accepts connections (bounded wait)."""
        deadline = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if self._server.started:
                return True
            if not self._thread.is_alive():
                return False
            deadline.wait(0.02)
        return self._server.started

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()


def serve_neutron(nsdb: Nsdb, host: str, port: int) -> NeutronServer:
    """Bind HOST:PORT and start serving the Neutron API in the background; the caller
    calls `stop()` before closing `nsdb`. OSError when the address cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    server = NeutronServer(nsdb, sock)
    server.start()
    return server
