"""One cluster node: `tessera cluster serve` (and `tessera api serve`, a node running
only the API and the host-liveness janitor).

Start-up checks everything it can before joining the cluster, so that a mistake is one
line on stderr rather than a node that half works: the configuration, the services'
code (an add-on that cannot be loaded is listed as disabled, with the reason), the
NSDB, and the listening sockets (built-in services bind in their constructors). Then
the node runs until SIGINT/SIGTERM, and on the way out leaves every election and
closes its NSDB session, which hands its singletons to other nodes at once.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from tessera.cluster.config import DEFAULT_NSDB, NodeConfig
from tessera.cluster.registry import BUILTIN_REDUNDANCY, ServiceLoadError, available
from tessera.cluster.service import ServiceEnv, redundancy_of
from tessera.cluster.services import ClusterServices, DisabledService, ServiceCollector
from tessera.nsdb.base import Nsdb
from tessera.nsdb.connect import open_connected
from tessera.nsdb.errors import Unavailable

log = logging.getLogger(__name__)

EMBEDDED_ZK_MODULE = "tessera.cluster.embedded_zk"
EMBEDDED_QUORUM_WAIT = 120.0  # seconds a node with an embedded member waits for a quorum


class ServeError(Exception):
    """The node cannot start; the message is one line for the user."""


def split_listen(listen: str, what: str = "--listen") -> tuple[str, int]:
    """`ADDR:PORT` (`[v6]:PORT` for IPv6) → (addr, port)."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ServeError(f"{what} '{listen}' is not ADDR:PORT (e.g. 127.0.0.1:8181)")
    return host, int(port)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, or ServeError naming the address (port taken...)."""
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


def default_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def embedded_zookeeper(config: NodeConfig) -> Iterator[str | None]:
    """Runs this node's ZooKeeper ensemble member while the node runs (when enabled);
    yields its connect string (None when not enabled)."""
    zk_conf = config.zookeeper
    if not zk_conf["enabled"]:
        yield None
        return
    try:
        module: Any = importlib.import_module(EMBEDDED_ZK_MODULE)
    except ImportError as exc:
        raise ServeError(f"--embedded-zookeeper is unavailable: {exc}") from None
    try:
        zk = module.EmbeddedZooKeeper(
            node_id=int(zk_conf["id"]),
            peers=list(zk_conf["peers"]),
            data_dir=Path(zk_conf["data_dir"]),
            client_port=int(zk_conf["client_port"]),
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ServeError(f"[zookeeper]: {exc}".splitlines()[0]) from None
    try:
        # `supervise` starts the member and restarts it whenever it dies; a bare
        # `start` (no supervision) is the fallback of a simpler implementation.
        supervise = getattr(zk, "supervise", None)
        (supervise if callable(supervise) else zk.start)()
    except (OSError, ValueError, RuntimeError) as exc:
        zk.stop()
        raise ServeError(f"the embedded ZooKeeper cannot start: {exc}".splitlines()[0]) from None
    try:
        yield str(zk.connect_string)
    finally:
        zk.stop()


def open_node_nsdb(
    url: str, session_timeout: float, *, wait: float = 0.0, stop: threading.Event | None = None
) -> Nsdb:
    """The node's NSDB client. With `wait`, keep trying that long: the members of a new
    embedded ensemble start one node at a time, and none serves before a quorum runs."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return open_connected(
                url,
                session_timeout=session_timeout,
                hint="start ZooKeeper there, pass --nsdb zk://HOST:PORT/ROOT, "
                "or --nsdb memory for a quick look",
            )
        except ValueError as exc:
            raise ServeError(f"--nsdb: {exc}") from None
        except Unavailable as exc:
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                raise ServeError(str(exc)) from None
            log.info("waiting for the ZooKeeper ensemble to form a quorum (%s)", url)
            if stop is not None and stop.wait(1.0):
                raise ServeError(str(exc)) from None


def build_services(
    config: NodeConfig, nsdb: Nsdb, name: str, info: dict[str, Any] | None = None
) -> ClusterServices:
    """The node's services, constructed (built-ins may raise ServeError: a port taken)."""
    registry = CollectorRegistry()
    known = available()
    unknown = [s for s in config.data["services"] if s not in known and config.enabled(s)]
    if unknown:
        raise ServeError(
            f"unknown service {', '.join(sorted(unknown))} (available: {', '.join(known)})"
        )
    disabled: list[DisabledService] = []
    enabled: list[tuple[str, Callable[[ServiceEnv], Any], bool]] = []
    for svc in known.values():
        if not config.enabled(svc.name):
            disabled.append(DisabledService(svc.name, BUILTIN_REDUNDANCY.get(svc.name)))
            continue
        try:
            enabled.append((svc.name, svc.load(), svc.builtin))
        except ServiceLoadError as exc:
            if svc.builtin:
                raise ServeError(str(exc)) from None
            log.error("%s; it stays disabled", exc)
            disabled.append(DisabledService(svc.name, reason=str(exc)))
    services = ClusterServices(
        nsdb,
        name,
        [],
        timing=config.timing,
        disabled=disabled,
        registry=registry,
        info=info,
        claim_wait=config.session_timeout + 2.0,
    )
    registry.register(ServiceCollector(services))
    for svc_name, factory, builtin in enabled:
        env = ServiceEnv(svc_name, name, nsdb, config.options(svc_name), registry, services)
        try:
            instance = factory(env)
            redundancy_of(instance)
        except ServeError:
            services.close_services()
            raise
        except Exception as exc:
            message = f"service {svc_name}: {exc}".splitlines()[0]
            if builtin:
                services.close_services()
                raise ServeError(message) from None
            log.error("%s; it stays disabled", message)
            services.disabled.append(DisabledService(svc_name, reason=message))
            continue
        services.add(instance, env)
    return services


def run_node(
    config: NodeConfig, *, name: str | None = None, stop: threading.Event | None = None
) -> None:
    """Run a node until SIGINT/SIGTERM (or `stop`). Raises ServeError when it cannot
    start."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = stop or threading.Event()
    node_name = name or config.name or default_name()
    with _signals_set(stop), embedded_zookeeper(config) as zk_connect:
        nsdb_url = config.nsdb
        if zk_connect is not None and nsdb_url == DEFAULT_NSDB:
            nsdb_url = f"zk://{zk_connect}/tessera"
        wait = EMBEDDED_QUORUM_WAIT if zk_connect is not None else 0.0
        nsdb = open_node_nsdb(nsdb_url, config.session_timeout, wait=wait, stop=stop)
        services: ClusterServices | None = None
        try:
            info = {"nsdb": nsdb_url}
            services = build_services(config, nsdb, node_name, info)
            try:
                services.start()
            except ValueError as exc:  # the name is taken by a live node
                raise ServeError(str(exc)) from None
            log.info(
                "cluster node %s (NSDB %s): %s",
                node_name,
                nsdb_url,
                ", ".join(f"{r.name} ({r.redundancy})" for r in services.runners) or "no service",
            )
            while not stop.wait(0.5):
                pass
            log.info("cluster node %s stopping", node_name)
        finally:
            if services is not None:
                services.stop()
                services.close_services()
            nsdb.close()


@contextmanager
def _signals_set(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set `stop` (in the main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
