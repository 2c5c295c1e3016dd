"""`tessera cluster serve|config|status|services`: run a cluster node and look at the
cluster.

    tessera cluster serve [--config PATH] [--nsdb URL] [--name NAME]
                          [--enable NAME]... [--disable NAME]...
                          [--listen ADDR:PORT | --listen SERVICE=ADDR:PORT]...
                          [--session-timeout S] [--embedded-zookeeper]
    tessera cluster config [same options]    the effective configuration, as TOML
    tessera cluster status [--nsdb URL] [--json]   every node's services (from the NSDB)
    tessera cluster services                  the services this installation offers

The configuration is read from `--config` or `$TESSERA_CLUSTER_CONFIG`; every key is
documented in the output of `tessera cluster config` (docs/cluster.md). The node code
is imported only when `serve` runs, so the other commands stay light.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from tessera.client.errors import BadArgument, UserError
from tessera.clikit.output import Column, Output, column
from tessera.clikit.params import convert_one, parse_listen, parse_nsdb_url
from tessera.clikit.session import current_session
from tessera.cluster import config as cfg

app = typer.Typer(
    help="A cluster node: services enabled, disabled or added as plugins (docs/cluster.md).",
    no_args_is_help=True,
    add_completion=False,
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="PATH",
        envvar=cfg.CONFIG_ENV,
        help="The node's TOML configuration file.",
        show_default=False,
    ),
]
NsdbOpt = Annotated[
    str | None,
    typer.Option(
        "--nsdb",
        metavar="zk://HOST:PORT/ROOT|memory",
        help=f"The NSDB (default: the config file's, ${cfg.NSDB_ENV}, {cfg.DEFAULT_NSDB}).",
        show_default=False,
    ),
]
NameOpt = Annotated[
    str | None,
    typer.Option("--name", help="This node's name (default HOSTNAME:PID).", show_default=False),
]
EnableOpt = Annotated[
    list[str] | None,
    typer.Option("--enable", metavar="SERVICE", help="Run this service here (repeatable)."),
]
DisableOpt = Annotated[
    list[str] | None,
    typer.Option("--disable", metavar="SERVICE", help="Never run it here (repeatable)."),
]
ListenOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--listen",
        metavar="[SERVICE=]ADDR:PORT",
        help="Where a service listens (no SERVICE: the API). Repeatable.",
    ),
]
SessionOpt = Annotated[
    float | None,
    typer.Option("--session-timeout", metavar="S", help="ZooKeeper session timeout, seconds."),
]
EmbeddedOpt = Annotated[
    bool,
    typer.Option(
        "--embedded-zookeeper",
        help="Start and supervise a ZooKeeper member here (see [zookeeper] in the config).",
    ),
]


def _names(option: str, values: list[str] | None) -> list[str]:
    out: list[str] = []
    for raw in values or ():
        for name in raw.split(","):
            name = name.strip()
            if not name:
                continue
            if not cfg.NAME_RE.match(name):
                raise BadArgument(f"invalid value for {option}: '{name}' is not a service name")
            out.append(name)
    return out


def effective_config(
    *,
    config: Path | None,
    nsdb: str | None,
    name: str | None,
    enable: list[str] | None,
    disable: list[str] | None,
    listen: list[str] | None,
    session_timeout: float | None,
    embedded_zookeeper: bool,
) -> cfg.NodeConfig:
    """The configuration the options describe (BadArgument / UserError on mistakes)."""
    overrides: dict[str, Any] = {"node": {}, "services": {}, "zookeeper": {}}
    if nsdb is not None:
        overrides["node"]["nsdb"] = convert_one("--nsdb", nsdb, parse_nsdb_url)
    if name is not None:
        if not name.strip():
            raise BadArgument("invalid value for --name: empty")
        overrides["node"]["name"] = name.strip()
    if session_timeout is not None:
        if session_timeout <= 0:
            raise BadArgument("invalid value for --session-timeout: must be positive")
        overrides["node"]["session_timeout"] = float(session_timeout)
    enabled, disabled = _names("--enable", enable), _names("--disable", disable)
    both = sorted(set(enabled) & set(disabled))
    if both:
        raise BadArgument(f"--enable and --disable both name {', '.join(both)}")
    services: dict[str, dict[str, Any]] = overrides["services"]
    for svc in enabled:
        services.setdefault(svc, {})["enabled"] = True
    for svc in disabled:
        services.setdefault(svc, {})["enabled"] = False
    for raw in listen or ():
        svc, sep, address = raw.rpartition("=")
        svc = svc.strip() if sep else "api"
        if not cfg.NAME_RE.match(svc):
            raise BadArgument(f"invalid value for --listen: '{svc}' is not a service name")
        services.setdefault(svc, {})["listen"] = convert_one("--listen", address, parse_listen)
    if embedded_zookeeper:
        overrides["zookeeper"]["enabled"] = True
    try:
        return cfg.build(path=config, env=os.environ, overrides=overrides, addons=cfg.addon_names())
    except cfg.ConfigError as exc:
        raise UserError(str(exc)) from None


@app.command("serve")
def serve(
    config: ConfigOpt = None,
    nsdb: NsdbOpt = None,
    name: NameOpt = None,
    enable: EnableOpt = None,
    disable: DisableOpt = None,
    listen: ListenOpt = None,
    session_timeout: SessionOpt = None,
    embedded_zookeeper: EmbeddedOpt = False,
) -> None:
    """Run a cluster node until interrupted (SIGINT/SIGTERM)."""
    conf = effective_config(
        config=config,
        nsdb=nsdb,
        name=name,
        enable=enable,
        disable=disable,
        listen=listen,
        session_timeout=session_timeout,
        embedded_zookeeper=embedded_zookeeper,
    )
    try:
        from tessera.cluster.node import ServeError, run_node
    except ImportError as exc:
        raise UserError(f"the cluster node is unavailable: {exc}") from None
    try:
        run_node(conf)
    except ServeError as exc:
        raise UserError(str(exc)) from None


@app.command("config")
def show_config(
    config: ConfigOpt = None,
    nsdb: NsdbOpt = None,
    name: NameOpt = None,
    enable: EnableOpt = None,
    disable: DisableOpt = None,
    listen: ListenOpt = None,
    session_timeout: SessionOpt = None,
    embedded_zookeeper: EmbeddedOpt = False,
    bare: Annotated[bool, typer.Option("--bare", help="Without the comments.")] = False,
) -> None:
    """Print the effective configuration (the defaults without options) as TOML."""
    conf = effective_config(
        config=config,
        nsdb=nsdb,
        name=name,
        enable=enable,
        disable=disable,
        listen=listen,
        session_timeout=session_timeout,
        embedded_zookeeper=embedded_zookeeper,
    )
    typer.echo(cfg.render(conf.data, docs=not bare), nl=False)


def _leaders(nodes: list[dict[str, Any]]) -> dict[str, list[str]]:
    leaders: dict[str, list[str]] = {}
    for node in nodes:
        for svc in node.get("services", []):
            if svc.get("redundancy") == "singleton":
                leaders.setdefault(svc["name"], [])
                if svc.get("role") == "leader":
                    leaders[svc["name"]].append(str(node.get("node")))
    return leaders


@app.command("status")
def status(
    ctx: typer.Context,
    nsdb: Annotated[
        str,
        typer.Option(
            "--nsdb",
            metavar="zk://HOST:PORT/ROOT",
            envvar=cfg.NSDB_ENV,
            help="The cluster's NSDB.",
        ),
    ] = cfg.DEFAULT_NSDB,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every live node's services: role, readiness, restarts, last error."""
    url = convert_one("--nsdb", nsdb, parse_nsdb_url)
    from tessera.cluster.services import read_cluster_status
    from tessera.nsdb.connect import open_connected
    from tessera.nsdb.errors import NsdbError

    try:
        client = open_connected(url, hint="pass --nsdb zk://HOST:PORT/ROOT")
    except NsdbError as exc:
        raise UserError(str(exc)) from None
    try:
        nodes = read_cluster_status(client)
    except NsdbError as exc:
        raise UserError(f"cannot read the cluster's status: {exc}") from None
    finally:
        client.close()
    leaders = _leaders(nodes)
    if json_output or current_session(ctx).json_output:
        typer.echo(json.dumps({"nodes": nodes, "leaders": leaders}, indent=2))
        return
    if not nodes:
        typer.echo(f"no cluster node is running on {url}")
        return
    rows = [
        {"node": node.get("node"), "api": node.get("api"), **svc}
        for node in nodes
        for svc in node.get("services", [])
    ]
    rows.sort(key=lambda r: (str(r["name"]), str(r["node"])))
    columns: list[Column] = [
        column("name", "service"),
        column("node"),
        column("role"),
        column("ready"),
        column("since"),
        column("restarts"),
        column("last_error", "last error"),
    ]
    Output(json_output=False, quiet=False).objects(rows, columns, empty="")
    typer.echo("")
    for svc, who in sorted(leaders.items()):
        typer.echo(f"{svc}: " + (", ".join(who) if who else "NO LEADER"))


@app.command("services")
def services(ctx: typer.Context) -> None:
    """The services this installation offers: built-in and add-ons (entry points)."""
    from tessera.cluster.registry import BUILTIN_REDUNDANCY, available

    rows = [
        {
            "name": a.name,
            "origin": a.origin,
            "target": a.target,
            "redundancy": BUILTIN_REDUNDANCY.get(a.name, "(declared by the add-on)"),
        }
        for a in available().values()
    ]
    out = current_session(ctx).out
    out.objects(
        rows,
        [column("name"), column("redundancy"), column("origin"), column("target")],
        empty="no services",
    )
