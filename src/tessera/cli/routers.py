"""`tessera router ...`: virtual L3 routers, their ports and their ARP table."""

from __future__ import annotations

from tessera.cli import crud
from tessera.cli.devices import add_device_commands, object_id
from tessera.cli.options import IdArg
from tessera.cli.ports import router_port_app
from tessera.client.rest import seg
from tessera.clikit.commands import command, sub_app
from tessera.clikit.output import Column, column
from tessera.clikit.session import Session

ARP_TABLE_COLUMNS: list[Column] = [
    column("ip_addr", "address"),
    column("mac_addr", "mac"),
    column("expiry"),
]

router_app = sub_app("Virtual L3 routers: routes, ARP, ICMP errors.")
add_device_commands(router_app, "router", "/routers")
router_app.add_typer(router_port_app, name="port")


@command(router_app, "arp-table")
def arp_table(s: Session, router_id: IdArg) -> None:
    """Show the addresses a router has resolved (ARP cache)."""
    path = f"/routers/{seg(object_id(router_id))}/arp_table"
    crud.list_objects(s, path, ARP_TABLE_COLUMNS, empty="no ARP entries")
