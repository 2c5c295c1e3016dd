"""The REST API as a cluster service, and `tessera api serve`.

`ApiService` is the built-in `api` service of a cluster node (`every-node`): the REST
API, Prometheus `/metrics` (the API's own metrics and the node's per-service ones) and
`/docs`. It binds its socket when the node starts (a taken port stops the start-up with
one line), and serves with uvicorn on its own thread, so that the node can restart it
like any other service.

`run` is `tessera api serve`: a cluster node with only the API and the host-liveness
janitor enabled, as before clusters had services to choose. Several servers may share
one ZooKeeper: all serve the API, one (the elected leader) also runs the janitor. The
ZooKeeper session timeout bounds how long a killed leader keeps its role, hence the
short `ZK_SESSION_TIMEOUT`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from tessera.api.app import create_app
from tessera.cluster import config as cluster_config
from tessera.cluster.http import serve_until_stopped
from tessera.cluster.node import ServeError, bind_socket, run_node, split_listen
from tessera.cluster.service import EVERY_NODE, Redundancy, ServiceContext, ServiceEnv
from tessera.placement.backend import PlacementBackend

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_NSDB",
    "ApiService",
    "ServeError",
    "api_serve_config",
    "parse_listen",
    "run",
]

DEFAULT_LISTEN = "127.0.0.1:8181"
# The agent's default too (`tessera agent`): started side by side with defaults, both
# meet in one ZooKeeper; `--nsdb memory` is for a quick look at the API alone.
DEFAULT_NSDB = cluster_config.DEFAULT_NSDB
ZK_SESSION_TIMEOUT = 4.0  # seconds; a dead leader is replaced about this long after it died


def parse_listen(listen: str) -> tuple[str, int]:
    """`ADDR:PORT` (`[v6]:PORT` for IPv6) → (addr, port)."""
    return split_listen(listen)


class _RegistryBridge(Collector):
    """The node's registry inside the API's: one `/metrics` shows both. It describes
    nothing, so registering it never clashes with the API's own names."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


class ApiService:
    """The REST API of this node (built-in service `api`, option `listen`)."""

    name = "api"
    redundancy: Redundancy = EVERY_NODE
    ready_when_started = False  # ready once uvicorn listens

    def __init__(self, env: ServiceEnv) -> None:
        listen = str(env.options.get("listen", DEFAULT_LISTEN))
        self.host, self.port = split_listen(listen, "services.api.listen")
        self.sock = bind_socket(self.host, self.port)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}/api/v1"
        contacts = [str(c) for c in env.options.get("cassandra", [])]
        keyspace = str(env.options.get("cassandra_keyspace", "tessera"))
        self.app = create_app(env.nsdb, env.cluster, PlacementBackend(contacts, keyspace))
        self.app.state.metrics.registry.register(_RegistryBridge(env.registry))
        if env.cluster is not None:
            env.cluster.info["api"] = self.url

    def run(self, ctx: ServiceContext) -> None:
        self.app.state.waiter.warm()  # --wait's first answer should not load the cloud
        serve_until_stopped(self.app, self.sock, ctx, "api")

    def close(self) -> None:
        self.sock.close()
        self.app.state.waiter.close()


def api_serve_config(
    nsdb_url: str = DEFAULT_NSDB,
    listen: str = DEFAULT_LISTEN,
    services: Mapping[str, Mapping[str, Any]] | None = None,
) -> cluster_config.NodeConfig:
    """The node `tessera api serve` runs: the API and the janitor, no add-on, no config
    file; `services` enables more built-ins with their options (`--neutron-listen` is
    `{"neutron": {"enabled": True, "listen": ...}}`)."""
    addons = cluster_config.addon_names()
    overrides: dict[str, Any] = {
        "node": {"nsdb": nsdb_url, "session_timeout": ZK_SESSION_TIMEOUT},
        "services": {
            **{name: {"enabled": False} for name in addons},
            "api": {"enabled": True, "listen": listen},
            "metrics": {"enabled": False},
            "host-liveness": {"enabled": True},
        },
    }
    overrides = cluster_config.merge(overrides, {"services": dict(services or {})})
    try:
        return cluster_config.build(overrides=overrides, addons=addons)
    except cluster_config.ConfigError as exc:
        raise ServeError(str(exc)) from None


def run(
    nsdb_url: str = DEFAULT_NSDB,
    listen: str = DEFAULT_LISTEN,
    services: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """`tessera api serve`: serve until SIGINT/SIGTERM. Raises `ServeError` when it
    cannot start."""
    host, port = split_listen(listen)
    config = api_serve_config(nsdb_url, listen, services)
    run_node(config, name=f"{socket.gethostname()}:{os.getpid()}@{host}:{port}")
