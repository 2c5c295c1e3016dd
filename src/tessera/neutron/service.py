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
from typing import Any

from tessera.cluster.http import serve_until_stopped
from tessera.neutron.app import create_neutron_app
from tessera.neutron.serve import DEFAULT_NEUTRON_LISTEN, bind, split_listen


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
        serve_until_stopped(self.app, self.sock, ctx, "neutron", log_level="warning")

    def close(self) -> None:
        self.sock.close()
