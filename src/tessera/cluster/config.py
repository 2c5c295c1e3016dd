"""The cluster node's configuration: a TOML file, every key documented here (`KEYS`).

Precedence, lowest first: the defaults below, the file (`--config PATH` or
`TESSERA_CLUSTER_CONFIG`), the environment (`TESSERA_NSDB`), the command-line flags.
`tessera cluster config` prints the result as a commented TOML file, which is also the
way to start one. Unknown tables and keys are errors (a misspelt key silently ignored
is a setting that silently does not apply), except inside the table of an add-on
service, whose keys are that service's own options.
"""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tessera.cluster.registry import NAME_RE, addons
from tessera.cluster.services import Timing

__all__ = ["NAME_RE", "ConfigError", "NodeConfig", "build", "defaults", "render"]

CONFIG_ENV = "TESSERA_CLUSTER_CONFIG"
NSDB_ENV = "TESSERA_NSDB"
DEFAULT_NSDB = "zk://127.0.0.1:2181/tessera"


class ConfigError(ValueError):
    """The configuration cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class Key:
    table: str
    name: str
    type: type
    default: Any
    doc: str


# Service tables of the built-in services; an add-on's table holds `enabled` and its
# own options.
KEYS: tuple[Key, ...] = (
    Key("node", "name", str, "",
        "This node's name in the cluster (status, elections); unique among live nodes. "
        "Empty: HOSTNAME:PID."),
    Key("node", "nsdb", str, DEFAULT_NSDB,
        "The NSDB: zk://HOST:PORT[,HOST:PORT...]/ROOT, or memory (one process only)."),
    Key("node", "session_timeout", float, 4.0,
        "ZooKeeper session timeout, seconds: a dead node's singletons move to another "
        "node about this long after it died."),
    Key("cluster", "spread_delay", float, 0.5,
        "Seconds a node waits, per singleton it already leads, before volunteering for "
        "the next one (spreads leadership over nodes started together)."),
    Key("cluster", "rebalance_interval", float, 5.0,
        "Every this many seconds a node leading two services more than another node "
        "queued for one of them resigns its newest; 0 never."),
    Key("cluster", "restart_initial", float, 0.5,
        "Seconds before restarting a failed service the first time; doubled on each "
        "failure in a row."),
    Key("cluster", "restart_max", float, 30.0,
        "The longest pause between restarts, seconds; a run that lasted this long "
        "resets the back-off."),
    Key("zookeeper", "enabled", bool, False,
        "Start and supervise a ZooKeeper ensemble member (Debian's package) in this "
        "node; --embedded-zookeeper. With the default node.nsdb the node uses it."),
    Key("zookeeper", "id", int, 1, "This member's id (myid), 1..255, unique in the ensemble."),
    Key("zookeeper", "peers", list, [],
        "Every ensemble member as HOST:CLIENT_PORT:PEER_PORT:ELECTION_PORT, in id "
        "order (member k is id k); empty: a standalone ZooKeeper."),
    Key("zookeeper", "data_dir", str, "/var/lib/tessera/zookeeper",
        "Where the member keeps its snapshots and logs."),
    Key("zookeeper", "client_port", int, 2181, "The member's client port."),
    Key("services.api", "enabled", bool, True,
        "The REST API, /metrics, /docs and GET /cluster/services (every node)."),
    Key("services.api", "listen", str, "127.0.0.1:8181", "ADDR:PORT the API serves on."),
    Key("services.api", "cassandra", list, [],
        "Cassandra contact points (addresses) for /placement; empty: placement answers 503."),
    Key("services.api", "cassandra_keyspace", str, "tessera",
        "The keyspace placement keeps its tables in."),
    Key("services.metrics", "enabled", bool, False,
        "A listener of its own for /metrics only (every node): scraping without the "
        "API, or with the API disabled."),
    Key("services.metrics", "listen", str, "127.0.0.1:9181", "ADDR:PORT of /metrics."),
    Key("services.host-liveness", "enabled", bool, True,
        "The host-liveness janitor (singleton): Host.alive follows each agent's "
        "NSDB session."),
    Key("services.host-liveness", "full_pass_interval", float, 10.0,
        "Seconds between full comparisons of every host with the liveness table."),
    Key("services.neutron", "enabled", bool, False,
        "The Neutron v2.0 API (every node; docs/neutron.md)."),
    Key("services.neutron", "listen", str, "127.0.0.1:9696",
        "ADDR:PORT the Neutron API serves on."),
    Key("services.health-monitor", "enabled", bool, False,
        "The load balancer health monitor (singleton): probes pool members from a "
        "probe port on their router and writes their status (docs/load-balancer.md)."),
    Key("services.health-monitor", "host_id", str, "",
        "The host whose agent serves this node's probe ports (required when enabled)."),
    Key("services.health-monitor", "host_netns", str, "",
        "The network namespace that host's agent runs in; empty: this node's own."),
    Key("services.health-monitor", "netns_prefix", str, "tshm-",
        "Prefix of the probe namespaces this node makes (one per router); nodes on one "
        "machine need different ones."),
    Key("services.health-monitor", "resync_interval", float, 5.0,
        "Seconds between full passes (plumbing re-checked) besides those on changes."),
)  # fmt: skip

BUILTIN_SERVICES = ("api", "metrics", "host-liveness", "neutron", "health-monitor")
_FIXED_TABLES = ("node", "cluster", "zookeeper")


def addon_names() -> list[str]:
    """The add-on services installed beside tessera (entry points), by name."""
    return sorted(addons())


def _keys_of(table: str) -> dict[str, Key]:
    return {k.name: k for k in KEYS if k.table == table}


def defaults(addons: Iterable[str] = ()) -> dict[str, Any]:
    """The default configuration, with an `enabled = true` table per add-on."""
    data: dict[str, Any] = {}
    for key in KEYS:
        table = data
        for part in key.table.split("."):
            table = table.setdefault(part, {})
        table[key.name] = copy.deepcopy(key.default)
    for name in addons:
        data["services"].setdefault(name, {"enabled": True})
    return data


def load(path: Path) -> dict[str, Any]:
    """The file's tables as a dict (ConfigError naming the file for any problem)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` laid over `base`, table by table (a new dict)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_value(where: str, key: Key, value: object) -> object:
    if key.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, key.type) or (key.type is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {key.type.__name__}, got {value!r}")
    if isinstance(value, float) and value < 0:
        raise ConfigError(f"{where}: must not be negative, got {value!r}")
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    return value


def validate(data: Mapping[str, Any], source: str = "the configuration") -> dict[str, Any]:
    """Checks every table and key of a merged configuration; returns it with numbers
    normalised (an int where a float is expected)."""
    out = copy.deepcopy(dict(data))
    for table in out:
        if table not in (*_FIXED_TABLES, "services"):
            raise ConfigError(f"{source}: unknown table [{table}]")
    for table in _FIXED_TABLES:
        section = out.get(table, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: [{table}] must be a table")
        known = _keys_of(table)
        for name, value in section.items():
            if name not in known:
                raise ConfigError(f"{source}: unknown key '{name}' in [{table}]")
            section[name] = _check_value(f"{source}: {table}.{name}", known[name], value)
    services = out.get("services", {})
    if not isinstance(services, dict):
        raise ConfigError(f"{source}: [services] must hold one table per service")
    for service, section in services.items():
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: [services.{service}] must be a table")
        known = _keys_of(f"services.{service}")
        for name, value in section.items():
            where = f"{source}: services.{service}.{name}"
            if name == "enabled" and not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true or false, got {value!r}")
            if name in known:
                section[name] = _check_value(where, known[name], value)
            elif service in BUILTIN_SERVICES:
                raise ConfigError(f"{source}: unknown key '{name}' in [services.{service}]")
    zk_id = out.get("zookeeper", {}).get("id", 1)
    if not 1 <= zk_id <= 255:
        raise ConfigError(f"{source}: zookeeper.id must be 1..255, got {zk_id}")
    return out


@dataclass(frozen=True)
class NodeConfig:
    """The effective configuration, as the node uses it."""

    data: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.data["node"]["name"])

    @property
    def nsdb(self) -> str:
        return str(self.data["node"]["nsdb"])

    @property
    def session_timeout(self) -> float:
        return float(self.data["node"]["session_timeout"])

    @property
    def timing(self) -> Timing:
        c = self.data["cluster"]
        return Timing(
            spread_delay=c["spread_delay"],
            rebalance_interval=c["rebalance_interval"],
            restart_initial=c["restart_initial"],
            restart_max=max(c["restart_max"], c["restart_initial"]),
        )

    @property
    def zookeeper(self) -> dict[str, Any]:
        return dict(self.data["zookeeper"])

    def enabled(self, service: str) -> bool:
        return bool(self.data["services"].get(service, {}).get("enabled", True))

    def options(self, service: str) -> dict[str, Any]:
        """The service's table without `enabled` (given to the service)."""
        return {k: v for k, v in self.data["services"].get(service, {}).items() if k != "enabled"}


def build(
    *,
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    addons: Iterable[str] = (),
) -> NodeConfig:
    """defaults < file < environment < `overrides` (from flags), validated."""
    data = defaults(addons)
    if path is not None:
        data = merge(data, validate(load(path), str(path)))
    if env is not None and env.get(NSDB_ENV):
        data = merge(data, {"node": {"nsdb": env[NSDB_ENV]}})
    if overrides:
        data = merge(data, overrides)
    return NodeConfig(validate(data, "the configuration"))


# -- printing ------------------------------------------------------------------------


def _toml_key(name: str) -> str:
    bare = name.replace("-", "").replace("_", "").isalnum() and name.isascii()
    return name if bare else json.dumps(name)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"cannot write {value!r} as TOML")


def _comment(text: str, width: int = 88) -> list[str]:
    lines: list[str] = []
    line = "#"
    for word in text.split():
        if len(line) + 1 + len(word) > width:
            lines.append(line)
            line = "#"
        line += " " + word
    lines.append(line)
    return lines


def render(data: Mapping[str, Any], docs: bool = True) -> str:
    """The configuration as a TOML file, each key preceded by its documentation."""
    out: list[str] = []
    tables = [(name, name, data.get(name, {})) for name in _FIXED_TABLES]
    tables += [
        (f"services.{service}", f"services.{_toml_key(service)}", section)
        for service, section in data.get("services", {}).items()
    ]
    for table, title, section in tables:
        known = _keys_of(table)
        out.append(f"[{title}]")
        for name, value in section.items():
            if docs and name in known:
                out.extend(_comment(known[name].doc))
            elif docs and name == "enabled" and table.startswith("services."):
                out.append("# An add-on service (entry point group tessera.cluster_services).")
            out.append(f"{_toml_key(name)} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)
