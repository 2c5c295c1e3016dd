"""Which services a node can run: the built-in ones and the add-ons of other packages.

An add-on is a Python entry point in the group `tessera.cluster_services`, declared by
any package installed beside tessera (its `pyproject.toml`):

    [project.entry-points."tessera.cluster_services"]
    beacon = "tessera_beacon:Beacon"

The entry point's name is the service's name (`[services.beacon]` in the config file,
`--enable beacon`); its object is called with a `ServiceEnv` and returns the service
(a class whose constructor takes the env is the usual form). Entry points are found
through `importlib.metadata`, so a package on `sys.path` (a venv, or a directory in
`PYTHONPATH`) is enough: nothing in tessera changes. Add-on code is imported only when
the service is enabled.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from importlib.metadata import entry_points

from tessera.cluster.service import EVERY_NODE, SINGLETON, Redundancy, ServiceFactory

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tessera.cluster_services"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

BUILTINS: dict[str, str] = {
    "api": "tessera.api.server:ApiService",
    "metrics": "tessera.cluster.metrics:MetricsService",
    "host-liveness": "tessera.cluster.janitor:HostLivenessJanitor.from_env",
    "neutron": "tessera.neutron.service:NeutronService",
    "health-monitor": "tessera.cluster.health_monitor:HealthMonitorService.from_env",
}

BUILTIN_REDUNDANCY: dict[str, Redundancy] = {
    "api": EVERY_NODE,
    "metrics": EVERY_NODE,
    "host-liveness": SINGLETON,
    "neutron": EVERY_NODE,
    "health-monitor": SINGLETON,
}


class ServiceLoadError(Exception):
    """A service's code cannot be imported or is not a service factory (one line)."""


@dataclass(frozen=True)
class Available:
    """A service this node could run; `origin` is "built-in" or the distribution."""

    name: str
    target: str  # module:attribute
    origin: str

    @property
    def builtin(self) -> bool:
        return self.origin == "built-in"

    def load(self) -> ServiceFactory:
        module_name, _, attr = self.target.partition(":")
        try:
            obj: object = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # third-party code may fail any way at import
            raise ServiceLoadError(
                f"service {self.name}: cannot load {self.target} ({self.origin}): "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if not callable(obj):
            raise ServiceLoadError(f"service {self.name}: {self.target} is not callable")
        return obj  # type: ignore[return-value]


def addons() -> dict[str, Available]:
    """Add-on services declared by installed packages (invalid names are skipped)."""
    found: dict[str, Available] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        origin = f"{dist.name} {dist.version}" if dist is not None else "an add-on"
        if not NAME_RE.match(ep.name):
            log.warning("ignoring cluster service %r of %s: not a valid name", ep.name, origin)
            continue
        if ep.name in BUILTINS:
            log.warning("ignoring cluster service %r of %s: a built-in's name", ep.name, origin)
            continue
        if ep.name in found:
            log.warning("cluster service %r is declared twice; using %s", ep.name, origin)
        found[ep.name] = Available(ep.name, ep.value, origin)
    return found


def available() -> dict[str, Available]:
    """Built-ins first, then add-ons by name."""
    out = {name: Available(name, target, "built-in") for name, target in BUILTINS.items()}
    out.update(sorted(addons().items()))
    return out
