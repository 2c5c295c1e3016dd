"""`NeutronService`: the Neutron API as an `every-node` cluster service.

It follows the cluster service interface (`tessera.cluster.service`: a `name`, a
`redundancy`, `__init__(env)` once per node, `run(ctx)` until `ctx.stop`), like the
built-in `api` service: the socket is bound when the node starts (a taken port stops
the start-up with one line), uvicorn serves on the service's thread, and `ctx.ready()`
is called once it listens. Its one option is `listen` (default 127.0.0.1:9696).

It is written against the interface by shape only (`env` and `ctx` are duck-typed), so
this package does not depend on the node's internals.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import uvicorn

from tessera.neutron.app import create_neutron_app
from tessera.neutron.serve import DEFAULT_NEUTRON_LISTEN, bind, split_listen

_STOP_POLL = 0.1


class NeutronService:
    """The Neutron v2.0 API of this node (service `neutron`, option `listen`)."""

    name = "neutron"
    redundancy = "every-node"
    ready_when_started = False  # ready once uvicorn listens

    def __init__(self, env: Any) -> None:
        listen = str(env.options.get("listen", DEFAULT_NEUTRON_LISTEN))
        self.host, self.port = split_listen(listen)
        self.sock: socket.socket = bind(self.host, self.port)
        self.port = int(self.sock.getsockname()[1])  # the real one when 0 was asked
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        self.app = create_neutron_app(env.nsdb)
        cluster = getattr(env, "cluster", None)
        if cluster is not None and isinstance(getattr(cluster, "info", None), dict):
            cluster.info["neutron"] = self.url

    def run(self, ctx: Any) -> None:
        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=5)
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

        watcher = threading.Thread(target=watch, name="neutron-watch", daemon=True)
        watcher.start()
        try:
            # uvicorn closes the sockets it served on: give it a copy, keep ours for a
            # restart by the node.
            server.run(sockets=[self.sock.dup()])
        finally:
            done.set()
            watcher.join(5.0)
        if not ctx.stop.is_set() and not server.should_exit:
            raise RuntimeError("the Neutron HTTP server stopped by itself")

    def close(self) -> None:
        self.sock.close()
