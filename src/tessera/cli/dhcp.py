"""`tessera dhcp subnet ...` and `tessera dhcp host ...`: DHCP served by a bridge.

A subnet is named by its network in paths (`10.0.0.0_24`); the CLI accepts the usual
`10.0.0.0/24` too. Static hosts are named by their MAC.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from tessera.cli import crud
from tessera.cli.devices import object_id
from tessera.client.rest import seg
from tessera.clikit.commands import command, option, option_group, sub_app
from tessera.clikit.output import Column, column
from tessera.clikit.params import (
    CLEAR_WORDS,
    convert,
    convert_clearable,
    convert_many,
    convert_one,
    parse_int,
    parse_ipv4,
    parse_mac,
    parse_network,
    parse_opt121_route,
    parse_subnet_key,
)
from tessera.clikit.session import Session


def _subnet(row: Mapping[str, Any]) -> str:
    return f"{row.get('subnet_prefix')}/{row.get('subnet_length')}"


def _host_count(row: Mapping[str, Any]) -> str:
    return str(len(row.get("hosts") or []))


SUBNET_COLUMNS: list[Column] = [
    Column("subnet", _subnet),
    column("default_gateway", "gateway"),
    column("server_addr", "server"),
    column("dns_server_addrs", "dns"),
    column("interface_mtu", "mtu"),
    column("enabled"),
    Column("hosts", _host_count),
]
HOST_COLUMNS: list[Column] = [
    column("mac_addr", "mac"),
    column("ip_addr", "address"),
    column("name"),
]

BridgeArg = Annotated[str, typer.Argument(metavar="BRIDGE_ID", show_default=False)]
SubnetArg = Annotated[
    str, typer.Argument(metavar="SUBNET", help="e.g. 10.0.0.0/24", show_default=False)
]
MacArg = Annotated[str, typer.Argument(metavar="MAC", show_default=False)]

SUBNET_OPTIONS = [
    option("gateway", "--gateway", "--default-gateway", metavar="ADDR",
           help="Default router offered to clients ('none' clears)."),
    option("server_addr", "--server-addr", metavar="ADDR",
           help="Address the DHCP answers come from."),
    option("dns", "--dns", "--dns-server", metavar="ADDR", multiple=True,
           help="DNS server (repeatable or comma-separated; 'none' clears)."),
    option("mtu", "--mtu", "--interface-mtu", metavar="N",
           help="Interface MTU offered (option 26)."),
    option("routes", "--opt121-route", "--route", metavar="DEST/LEN,GATEWAY", multiple=True,
           help="Classless static route (option 121; repeatable; 'none' clears)."),
    option("enabled", "--enabled/--disabled", flag=True, help="Whether the bridge answers."),
]  # fmt: skip

dhcp_app = sub_app("DHCP served by bridges: subnets and their static hosts.")
subnet_app = sub_app("DHCP subnets of a bridge.")
dhcp_host_app = sub_app("Static hosts (MAC -> address) of a DHCP subnet.")
dhcp_app.add_typer(subnet_app, name="subnet")
dhcp_app.add_typer(dhcp_host_app, name="host")


def _subnets_path(bridge_id: str) -> str:
    return f"/bridges/{seg(object_id(bridge_id, 'BRIDGE_ID'))}/dhcp_subnets"


def _subnet_path(bridge_id: str, subnet: str) -> str:
    return f"{_subnets_path(bridge_id)}/{seg(convert_one('SUBNET', subnet, parse_subnet_key))}"


def _listed(option_name: str, raws: list[str] | None, parser: Any) -> list[Any] | None:
    if raws is None:
        return None
    if any(r.strip().lower() in CLEAR_WORDS for r in raws):
        return []
    result: list[Any] = convert_many(option_name, raws, parser)
    return result


def subnet_fields(o: Mapping[str, Any]) -> dict[str, Any]:
    routes = None
    if o["routes"] is not None:
        # A route holds a comma itself (DEST/LEN,GATEWAY): never split one further.
        clear = any(r.strip().lower() in CLEAR_WORDS for r in o["routes"])
        routes = [] if clear else [convert_one("--opt121-route", r, parse_opt121_route)
                                   for r in o["routes"]]  # fmt: skip
    return crud.body(
        default_gateway=convert_clearable("--gateway", o["gateway"], parse_ipv4),
        server_addr=convert_clearable("--server-addr", o["server_addr"], parse_ipv4),
        dns_server_addrs=_listed("--dns", o["dns"], parse_ipv4),
        interface_mtu=convert_clearable("--mtu", o["mtu"], parse_int(68, 65535)),
        opt121_routes=routes,
        enabled=o["enabled"],
    )


# -- subnets ---------------------------------------------------------------------------


@command(subnet_app, "list")
def subnet_list(s: Session, bridge_id: BridgeArg) -> None:
    """List a bridge's DHCP subnets."""
    crud.list_objects(s, _subnets_path(bridge_id), SUBNET_COLUMNS, empty="no DHCP subnets")


@command(subnet_app, "show")
def subnet_show(s: Session, bridge_id: BridgeArg, subnet: SubnetArg) -> None:
    """Show one DHCP subnet."""
    crud.show_object(s, _subnet_path(bridge_id, subnet))


@command(subnet_app, "create")
@option_group("settings", SUBNET_OPTIONS)
def subnet_create(
    s: Session,
    bridge_id: BridgeArg,
    subnet: SubnetArg,
    settings: dict[str, Any] | None = None,
) -> None:
    """Serve DHCP for SUBNET on a bridge: --gateway 10.0.0.1 --dns 10.0.0.2 ..."""
    cidr = convert_one("SUBNET", subnet, parse_network)
    fields = {
        "subnet_prefix": cidr.address,
        "subnet_length": cidr.length,
        **subnet_fields(settings or {}),
    }
    crud.create_object(s, _subnets_path(bridge_id), fields)


@command(subnet_app, "update")
@option_group("settings", SUBNET_OPTIONS)
def subnet_update(
    s: Session,
    bridge_id: BridgeArg,
    subnet: SubnetArg,
    settings: dict[str, Any] | None = None,
) -> None:
    """Change a DHCP subnet's options."""
    crud.update_object(s, _subnet_path(bridge_id, subnet), subnet_fields(settings or {}))


@command(subnet_app, "delete")
def subnet_delete(s: Session, bridge_id: BridgeArg, subnet: SubnetArg) -> None:
    """Stop serving a subnet (its static hosts go too)."""
    key = convert_one("SUBNET", subnet, parse_subnet_key)
    crud.delete_object(s, _subnet_path(bridge_id, subnet), f"DHCP subnet {key}")


# -- static hosts ----------------------------------------------------------------------

IpOpt = Annotated[str | None, typer.Option("--ip", "--ip-addr", metavar="ADDR")]
HostName = Annotated[str | None, typer.Option("--name", help="Host name offered (option 12).")]


def _hosts_path(bridge_id: str, subnet: str) -> str:
    return f"{_subnet_path(bridge_id, subnet)}/hosts"


def _host_path(bridge_id: str, subnet: str, mac: str) -> str:
    return f"{_hosts_path(bridge_id, subnet)}/{seg(convert_one('MAC', mac, parse_mac))}"


@command(dhcp_host_app, "list")
def dhcp_host_list(s: Session, bridge_id: BridgeArg, subnet: SubnetArg) -> None:
    """List a subnet's static hosts."""
    crud.list_objects(s, _hosts_path(bridge_id, subnet), HOST_COLUMNS, empty="no DHCP hosts")


@command(dhcp_host_app, "show")
def dhcp_host_show(s: Session, bridge_id: BridgeArg, subnet: SubnetArg, mac: MacArg) -> None:
    """Show one static host."""
    crud.show_object(s, _host_path(bridge_id, subnet, mac))


@command(dhcp_host_app, "create")
def dhcp_host_create(
    s: Session,
    bridge_id: BridgeArg,
    subnet: SubnetArg,
    mac: Annotated[str, typer.Option("--mac", "--mac-addr", metavar="MAC")],
    ip: Annotated[str, typer.Option("--ip", "--ip-addr", metavar="ADDR")],
    name: HostName = None,
) -> None:
    """Always give the host with this MAC this address."""
    fields = crud.body(
        mac_addr=convert_one("--mac", mac, parse_mac),
        ip_addr=convert_one("--ip", ip, parse_ipv4),
        name=name,
    )
    crud.create_object(s, _hosts_path(bridge_id, subnet), fields)


@command(dhcp_host_app, "update")
def dhcp_host_update(
    s: Session,
    bridge_id: BridgeArg,
    subnet: SubnetArg,
    mac: MacArg,
    ip: IpOpt = None,
    name: HostName = None,
) -> None:
    """Change a static host's address or name."""
    changes = crud.body(ip_addr=convert("--ip", ip, parse_ipv4), name=name)
    crud.update_object(s, _host_path(bridge_id, subnet, mac), changes)


@command(dhcp_host_app, "delete")
def dhcp_host_delete(s: Session, bridge_id: BridgeArg, subnet: SubnetArg, mac: MacArg) -> None:
    """Forget a static host."""
    mac_addr = convert_one("MAC", mac, parse_mac)
    crud.delete_object(s, _host_path(bridge_id, subnet, mac), f"DHCP host {mac_addr}")
