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
from tessera.clikit.commands import API_HELP, JSON_HELP, QUIET_HELP
from tessera.clikit.group import Plugin, TesseraGroup
from tessera.clikit.session import current_session

_RUN = "Run"
_NET = "Virtual network"
_SEC = "Firewall and NAT"
_LB = "Load balancing"
_HOSTS = "Hosts and bindings"


def _resource(name: str, target: str, panel: str, help: str) -> Plugin:
    return Plugin(name, f"tessera.cli.{target}", help, panel, group=name not in _COMMANDS)


_COMMANDS = ("bind", "unbind")  # top-level commands, not groups


# Every command is loaded when it runs, not before: `tessera bridge list` imports the
# bridge commands and what they use, not the load balancer's models (a few hundred
# milliseconds saved on every call of a script). The help here is the sub-app's own
# (a unit test keeps them equal).
RESOURCES: tuple[Plugin, ...] = (
    _resource("api", "serve:api_app", _RUN,
              "The cluster service: REST API, Prometheus /metrics, OpenAPI /docs."),
    _resource("bridge", "bridges:bridge_app", _NET,
              "Virtual L2 switches: learn MACs, flood, serve DHCP."),
    _resource("router", "routers:router_app", _NET,
              "Virtual L3 routers: routes, ARP, ICMP errors."),
    _resource("port", "ports:port_app", _NET,
              "Ports of bridges and routers: show, change, link, delete."),
    _resource("route", "routes:route_app", _NET, "Routes of a router."),
    _resource("dhcp", "dhcp:dhcp_app", _NET,
              "DHCP served by bridges: subnets and their static hosts."),
    _resource("chain", "chains:chain_app", _SEC,
              "Chains: ordered lists of rules, used as inbound/outbound filters."),
    _resource("rule", "rules:rule_app", _SEC,
              "Rules of a chain: conditions and an action, evaluated by position."),
    _resource("port-group", "groups:port_group_app", _SEC,
              "Port groups: sets of ports matched by rules (--port-group)."),
    _resource("ip-addr-group", "groups:ip_addr_group_app", _SEC,
              "IP address groups: sets of addresses matched by rules."),
    _resource("mirror", "mirrors:mirror_app", _SEC,
              "Port mirrors: copy matching packets to another port."),
    _resource("load-balancer", "load_balancers:load_balancer_app", _LB,
              "Load balancers: a router's VIPs and pools (one per router)."),
    _resource("pool", "pools:pool_app", _LB,
              "Pools: the members a VIP spreads its connections over."),
    _resource("pool-member", "pools:pool_member_app", _LB,
              "Pool members: the backends (address, TCP port) of a pool."),
    _resource("vip", "load_balancers:vip_app", _LB,
              "VIPs: the addresses and TCP ports of a load balancer clients connect to."),
    _resource("health-monitor", "load_balancers:health_monitor_app", _LB,
              "Health monitors: how the members of the pools naming one are probed."),
    _resource("host", "hosts:host_app", _HOSTS,
              "Hypervisor hosts (registered by their agents) and their bindings."),
    _resource("tunnel-zone", "tunnel_zones:tunnel_zone_app", _HOSTS,
              "Tunnel zones: hosts joined by VXLAN over their underlay addresses."),
    _resource("place", "place:place_app", _HOSTS,
              "Placement: resource providers, inventories and allocations."),
    _resource("bind", "hosts:bind_app", _HOSTS,
              "Bind a virtual port to a local interface (e.g. a VM's tap or veth)."),
    _resource("unbind", "hosts:unbind_app", _HOSTS,
              "Undo a port's binding (on the host it is bound to, unless --host says)."),
)  # fmt: skip

#: Commands provided by other packages (see the module docstring).
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


def _aliases() -> dict[str, tuple[str, ...]]:
    aliases: dict[str, tuple[str, ...]] = {
        "dhcp-subnet": ("dhcp", "subnet"),
        "dhcp-host": ("dhcp", "host"),
        # `tessera link A B` / `tessera unlink A`, as MidoNet's CLI had them.
        "link": ("port", "link"),
        "unlink": ("port", "unlink"),
    }
    for plugin in RESOURCES:
        name = plugin.name
        if name == "api" or name in _COMMANDS:
            continue
        for alias in (name + "s", name.replace("-", "_"), name.replace("-", "_") + "s"):
            if alias != name:
                aliases[alias] = (name,)
    return aliases


class RootGroup(TesseraGroup):
    plugins = RESOURCES + PLUGINS
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
    return app


def main() -> None:
    """Console-script entry point (`tessera`)."""
    typer.main.get_command(build_app()).main(prog_name="tessera")
