"""`tessera bridge ...`: virtual L2 switches, their ports and their learned MAC table."""

from __future__ import annotations

from tessera.cli import crud
from tessera.cli.devices import add_device_commands, object_id
from tessera.cli.options import IdArg
from tessera.cli.ports import bridge_port_app
from tessera.client.rest import seg
from tessera.clikit.commands import command, sub_app
from tessera.clikit.output import Column, column, id_column
from tessera.clikit.session import Session

MAC_TABLE_COLUMNS: list[Column] = [
    column("mac_addr", "mac"),
    column("vlan_id", "vlan"),
    id_column("port_id", "port"),
]

bridge_app = sub_app("Virtual L2 switches: learn MACs, flood, serve DHCP.")
add_device_commands(bridge_app, "bridge", "/bridges")
bridge_app.add_typer(bridge_port_app, name="port")


@command(bridge_app, "mac-table")
def mac_table(s: Session, bridge_id: IdArg) -> None:
    """Show the MACs a bridge has learned, and on which port."""
    path = f"/bridges/{seg(object_id(bridge_id))}/mac_table"
    crud.list_objects(s, path, MAC_TABLE_COLUMNS, empty="no MAC entries")
