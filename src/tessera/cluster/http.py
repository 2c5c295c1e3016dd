"""Serving an ASGI app as a cluster service: uvicorn on the service's thread, on a
socket the service bound when the node started.

Shared by every HTTP service of a node (the REST API, the Neutron API): uvicorn closes
the sockets it served on, so it gets a copy and the service keeps its own for a restart
by the node; readiness is reported once uvicorn listens; the node's stop asks uvicorn
to exit. A server that stops by itself is a failure, which the node restarts with
back-off like any other.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import uvicorn

from tessera.cluster.service import ServiceContext

_STOP_POLL = 0.1


def serve_until_stopped(
    app: Any, sock: socket.socket, ctx: ServiceContext, name: str, log_level: str = "info"
) -> None:
    """Serve `app` on a copy of `sock` until `ctx.stop`; `ctx.ready()` once listening.
    Raises RuntimeError if the server stops while the node did not ask it to."""
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    done = threading.Event()

    def watch() -> None:
        ready = False
        while not done.is_set():
            if not ready and server.started:
                ready = True
                ctx.ready()
            if ctx.stop.wait(_STOP_POLL):
                server.should_exit = True
                return

    watcher = threading.Thread(target=watch, name=f"{name}-watch", daemon=True)
    watcher.start()
    try:
        # It installs no signal handlers off the main thread.
        server.run(sockets=[sock.dup()])
    finally:
        done.set()
        watcher.join(5.0)
    if not ctx.stop.is_set() and not server.should_exit:
        raise RuntimeError(f"the {name} HTTP server stopped by itself")
