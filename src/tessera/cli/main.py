"""The `tessera` command: assembles the resource sub-apps and the plugins of other packages.

Adding a command from another package (the agent, the lab, the tracer...): write a
module holding a `typer.Typer` named `app` (one command without a callback becomes
`tessera NAME [OPTIONS]`; several become `tessera NAME SUBCOMMAND`), then add or fix its
line in `PLUGINS` below. Nothing else in `tessera.cli` needs to change. The module is
imported only when its command runs; raise `typer.Exit(code)` to set the exit status and
`tessera.client.errors.UserError` (or `BadArgument`) for a one-line error. Global options
given before the command (`--json`, `--api`) are in `current_session(ctx)`
(`tessera.clikit.session`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from tessera import __version__
from tessera.cli.bridges import bridge_app
from tessera.cli.chains import chain_app
from tessera.cli.dhcp import dhcp_app
from tessera.cli.groups import ip_addr_group_app, port_group_app
from tessera.cli.hosts import BINDING_PANEL, binding_app, host_app
from tessera.cli.load_balancers import health_monitor_app, load_balancer_app, vip_app
from tessera.cli.mirrors import mirror_app
from tessera.cli.place import place_app
from tessera.cli.pools import pool_app, pool_member_app
from tessera.cli.ports import port_app
from tessera.cli.routers import router_app
from tessera.cli.routes import route_app
from tessera.cli.rules import rule_app
from tessera.cli.serve import api_app
from tessera.cli.tunnel_zones import tunnel_zone_app
from tessera.clikit.commands import API_HELP, JSON_HELP, QUIET_HELP
from tessera.clikit.group import Plugin, TesseraGroup
from tessera.clikit.session import current_session

_RUN = "Run"
_NET = "Virtual network"
_SEC = "Firewall and NAT"
_LB = "Load balancing"
_HOSTS = BINDING_PANEL

#: Commands provided by other packages, loaded lazily (see the module docstring).
PLUGINS: tuple[Plugin, ...] = (
    Plugin("agent", "tessera.agent.cli:app", "The per-hypervisor agent.", _RUN),
    Plugin("lab", "tessera.lab.cli:app", "The emulated cloud on one machine.", _RUN),
    Plugin("cluster", "tessera.cli.cluster:app", "A cluster node and its services.", _RUN),
    Plugin("trace", "tessera.cli.trace:app", "Explain a packet's path.", _RUN),
    Plugin("flows", "tessera.agent.flows_cli:app", "The local agent's installed flows.", _RUN),
    Plugin(
        "conntrack",
        "tessera.agent.flows_cli:conntrack_app",
        "The local agent's connection-tracking and NAT entries.",
        _RUN,
    ),
)

# (name, app, help panel); plural and underscore spellings are accepted too, unlisted.
RESOURCES: tuple[tuple[str, typer.Typer, str], ...] = (
    ("bridge", bridge_app, _NET),
    ("router", router_app, _NET),
    ("port", port_app, _NET),
    ("route", route_app, _NET),
    ("dhcp", dhcp_app, _NET),
    ("chain", chain_app, _SEC),
    ("rule", rule_app, _SEC),
    ("port-group", port_group_app, _SEC),
    ("ip-addr-group", ip_addr_group_app, _SEC),
    ("mirror", mirror_app, _SEC),
    ("load-balancer", load_balancer_app, _LB),
    ("pool", pool_app, _LB),
    ("pool-member", pool_member_app, _LB),
    ("vip", vip_app, _LB),
    ("health-monitor", health_monitor_app, _LB),
    ("host", host_app, _HOSTS),
    ("tunnel-zone", tunnel_zone_app, _HOSTS),
    ("place", place_app, _HOSTS),
)


def _aliases() -> dict[str, tuple[str, ...]]:
    aliases: dict[str, tuple[str, ...]] = {
        "dhcp-subnet": ("dhcp", "subnet"),
        "dhcp-host": ("dhcp", "host"),
        # `tessera link A B` / `tessera unlink A`, as MidoNet's CLI had them.
        "link": ("port", "link"),
        "unlink": ("port", "unlink"),
    }
    for name, _app, _panel in RESOURCES:
        for alias in (name + "s", name.replace("-", "_"), name.replace("-", "_") + "s"):
            if alias != name:
                aliases[alias] = (name,)
    return aliases


class RootGroup(TesseraGroup):
    plugins = PLUGINS
    aliases = _aliases()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tessera {__version__}")
        raise typer.Exit()


def _root(
    ctx: typer.Context,
    api: Annotated[
        str | None, typer.Option("--api", metavar="URL", help=API_HELP, show_default=False)
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = None,
) -> None:
    """tessera: virtual bridges, routers, firewalls and DHCP over a cluster of hosts."""
    session = current_session(ctx)
    session.apply(api_url=api, json_output=json_output, quiet=quiet)
    ctx.call_on_close(session.close)


def build_app() -> typer.Typer:
    """The whole command tree (tests invoke it with `typer.testing.CliRunner`)."""
    app = typer.Typer(
        cls=RootGroup,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    app.add_typer(api_app, name="api", rich_help_panel=_RUN)
    for name, sub, panel in RESOURCES:
        app.add_typer(sub, name=name, rich_help_panel=panel)
    app.add_typer(binding_app)
    return app


def main() -> None:
    """Console-script entry point (`tessera`)."""
    typer.main.get_command(build_app()).main(prog_name="tessera")
