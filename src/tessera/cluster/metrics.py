"""The `metrics` service: the node's Prometheus metrics on a listener of their own.

The API already serves `/metrics`; this every-node service is for nodes that run no
API, or whose scrapers should not reach the API. It serves the node's registry: the
per-service metrics and whatever metrics the node's services registered.
"""

from __future__ import annotations

import threading

from prometheus_client import start_http_server

from tessera.cluster.node import split_listen
from tessera.cluster.service import EVERY_NODE, Redundancy, ServiceContext, ServiceEnv


class MetricsService:
    name = "metrics"
    redundancy: Redundancy = EVERY_NODE
    ready_when_started = False

    def __init__(self, env: ServiceEnv) -> None:
        listen = str(env.options.get("listen", "127.0.0.1:9181"))
        self.host, self.port = split_listen(listen, "services.metrics.listen")
        self.registry = env.registry

    def run(self, ctx: ServiceContext) -> None:
        server, thread = start_http_server(self.port, self.host, registry=self.registry)
        try:
            ctx.ready()
            ctx.stop.wait()
        finally:
            server.shutdown()
            server.server_close()
            if isinstance(thread, threading.Thread):
                thread.join(5.0)
