"""The cluster service interface: what a service declares and what it gets from its node.

A service is a class with two class attributes and one method:

    class Beacon:
        name = "beacon"              # (for add-ons the entry point's name wins)
        redundancy = "singleton"     # or "every-node"

        def __init__(self, env: ServiceEnv) -> None: ...   # once per node, at start
        def run(self, ctx: ServiceContext) -> None: ...    # work until ctx.stop is set

`every-node` services run on every node where they are enabled (the REST API);
`singleton` services run on exactly one node at a time, the leader of the service's
own election (the host-liveness janitor). `run` should return soon after `ctx.stop` is
set; raising (or returning without being asked) counts as a failure, and the node runs
the service again after an exponential back-off, without giving up any leadership.

A service that needs time before it is useful (a first full pass, a socket to open)
sets the class attribute `ready_when_started = False` and calls `ctx.ready()` when it
is; otherwise it is ready as soon as `run` is entered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from prometheus_client import CollectorRegistry

from tessera.nsdb.base import Nsdb

if TYPE_CHECKING:
    from tessera.cluster.services import ClusterServices

Redundancy = Literal["every-node", "singleton"]
EVERY_NODE: Redundancy = "every-node"
SINGLETON: Redundancy = "singleton"
REDUNDANCIES: tuple[Redundancy, ...] = (EVERY_NODE, SINGLETON)


@dataclass(frozen=True)
class ServiceEnv:
    """Given to a service's constructor: the node's shared resources.

    `nsdb` is the node's one NSDB client (services share its session: when it ends, the
    node's leaderships end with it); `options` is the service's table of the config file
    (`[services.NAME]`, without `enabled`); `registry` is where the service registers
    its own Prometheus metrics, exposed at the node's `/metrics`; `cluster` is the
    node's service manager (the API reports it), None outside a node."""

    name: str
    node: str
    nsdb: Nsdb
    options: Mapping[str, Any] = field(default_factory=dict)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    cluster: ClusterServices | None = None


class ServiceContext:
    """Given to each `run`: the stop signal and the readiness report of this run."""

    def __init__(
        self, env: ServiceEnv, stop: threading.Event, on_ready: Callable[[], None]
    ) -> None:
        self.env = env
        self.stop = stop
        self._on_ready = on_ready

    @property
    def nsdb(self) -> Nsdb:
        return self.env.nsdb

    @property
    def node(self) -> str:
        return self.env.node

    @property
    def options(self) -> Mapping[str, Any]:
        return self.env.options

    def ready(self) -> None:
        """Report this run ready (shown in status and `tessera_cluster_service_up`)."""
        self._on_ready()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when the service must stop."""
        return self.stop.wait(seconds)


class ClusterService(Protocol):
    """A service instance (see the module docstring)."""

    name: str
    redundancy: Redundancy

    def run(self, ctx: ServiceContext) -> None: ...


ServiceFactory = Callable[[ServiceEnv], ClusterService]


def redundancy_of(obj: object) -> Redundancy:
    """The declared redundancy of a service class or instance; ValueError if absent or
    not one of the two (a service must say how it fails over)."""
    value = getattr(obj, "redundancy", None)
    if value not in REDUNDANCIES:
        raise ValueError(
            f"declares redundancy {value!r}; it must be one of {', '.join(REDUNDANCIES)}"
        )
    return value  # type: ignore[return-value]


def ready_when_started(obj: object) -> bool:
    return bool(getattr(obj, "ready_when_started", True))
