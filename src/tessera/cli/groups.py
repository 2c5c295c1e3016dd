"""`tessera port-group ...` and `tessera ip-addr-group ...`: the sets rules refer to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from tessera.cli import crud
from tessera.cli.devices import new_id, object_id
from tessera.cli.options import IdArg, Name, NewId, TenantId
from tessera.client.rest import seg
from tessera.clikit.commands import command, sub_app
from tessera.clikit.output import Column, column, id_column
from tessera.clikit.params import convert_one, parse_ipv4
from tessera.clikit.session import Session


def _port_count(row: Mapping[str, Any]) -> str:
    return str(len(row.get("port_ids") or []))


PORT_GROUP_COLUMNS: list[Column] = [
    id_column(),
    column("name"),
    column("tenant_id", "tenant"),
    column("stateful"),
    Column("ports", _port_count),
]
IP_ADDR_GROUP_COLUMNS: list[Column] = [id_column(), column("name"), column("addrs")]

Stateful = Annotated[
    bool | None,
    typer.Option(
        "--stateful/--stateless",
        help="Share connection state among the members (e.g. for ECMP).",
        show_default=False,
    ),
]
GroupArg = Annotated[str, typer.Argument(metavar="GROUP_ID", show_default=False)]
PortArg = Annotated[str, typer.Argument(metavar="PORT_ID", show_default=False)]
AddrArg = Annotated[str, typer.Argument(metavar="ADDR", show_default=False)]

port_group_app = sub_app("Port groups: sets of ports matched by rules (--port-group).")
ip_addr_group_app = sub_app("IP address groups: sets of addresses matched by rules.")


# -- port groups -----------------------------------------------------------------------


@command(port_group_app, "list")
def port_group_list(s: Session) -> None:
    """List port groups."""
    crud.list_objects(s, "/port_groups", PORT_GROUP_COLUMNS, empty="no port groups")


@command(port_group_app, "show")
def port_group_show(s: Session, group_id: IdArg) -> None:
    """Show one port group with its member ports."""
    crud.show_object(s, f"/port_groups/{seg(object_id(group_id))}")


@command(port_group_app, "create")
def port_group_create(
    s: Session,
    name: Name = None,
    tenant_id: TenantId = None,
    stateful: Stateful = None,
    id: NewId = None,
) -> None:
    """Create an empty port group; prints it (with -q only its id)."""
    fields = crud.body(id=new_id(id), name=name, tenant_id=tenant_id, stateful=stateful)
    crud.create_object(s, "/port_groups", fields)


@command(port_group_app, "update")
def port_group_update(
    s: Session,
    group_id: IdArg,
    name: Name = None,
    tenant_id: TenantId = None,
    stateful: Stateful = None,
) -> None:
    """Rename a port group or change whether it is stateful."""
    changes = crud.body(name=name, tenant_id=tenant_id, stateful=stateful)
    crud.update_object(s, f"/port_groups/{seg(object_id(group_id))}", changes)


@command(port_group_app, "delete")
def port_group_delete(s: Session, group_id: IdArg) -> None:
    """Delete a port group (rules naming it go too)."""
    gid = object_id(group_id)
    crud.delete_object(s, f"/port_groups/{seg(gid)}", f"port group {gid}")


@command(port_group_app, "add-port")
def port_group_add_port(s: Session, group_id: GroupArg, port_id: PortArg) -> None:
    """Make a port a member of the group."""
    gid, pid = object_id(group_id, "GROUP_ID"), object_id(port_id, "PORT_ID")
    answer = s.api.post(f"/port_groups/{seg(gid)}/ports", {"port_id": pid})
    s.out.done(f"added port {pid} to port group {gid}", answer)


@command(port_group_app, "remove-port")
def port_group_remove_port(s: Session, group_id: GroupArg, port_id: PortArg) -> None:
    """Take a port out of the group."""
    gid, pid = object_id(group_id, "GROUP_ID"), object_id(port_id, "PORT_ID")
    answer = s.api.delete(f"/port_groups/{seg(gid)}/ports/{seg(pid)}")
    s.out.done(f"removed port {pid} from port group {gid}", answer)


# -- IP address groups -----------------------------------------------------------------


@command(ip_addr_group_app, "list")
def ip_addr_group_list(s: Session) -> None:
    """List IP address groups."""
    crud.list_objects(s, "/ip_addr_groups", IP_ADDR_GROUP_COLUMNS, empty="no IP address groups")


@command(ip_addr_group_app, "show")
def ip_addr_group_show(s: Session, group_id: IdArg) -> None:
    """Show one IP address group with its addresses."""
    crud.show_object(s, f"/ip_addr_groups/{seg(object_id(group_id))}")


@command(ip_addr_group_app, "create")
def ip_addr_group_create(s: Session, name: Name = None, id: NewId = None) -> None:
    """Create an empty IP address group; prints it (with -q only its id)."""
    crud.create_object(s, "/ip_addr_groups", crud.body(id=new_id(id), name=name))


@command(ip_addr_group_app, "update")
def ip_addr_group_update(s: Session, group_id: IdArg, name: Name = None) -> None:
    """Rename an IP address group."""
    changes = crud.body(name=name)
    crud.update_object(s, f"/ip_addr_groups/{seg(object_id(group_id))}", changes)


@command(ip_addr_group_app, "delete")
def ip_addr_group_delete(s: Session, group_id: IdArg) -> None:
    """Delete an IP address group (rules naming it go too)."""
    gid = object_id(group_id)
    crud.delete_object(s, f"/ip_addr_groups/{seg(gid)}", f"IP address group {gid}")


@command(ip_addr_group_app, "add-addr")
def ip_addr_group_add_addr(s: Session, group_id: GroupArg, addr: AddrArg) -> None:
    """Add an IPv4 address to the group."""
    gid = object_id(group_id, "GROUP_ID")
    address = convert_one("ADDR", addr, parse_ipv4)
    answer = s.api.post(f"/ip_addr_groups/{seg(gid)}/ip_addrs", {"addr": address})
    s.out.done(f"added {address} to IP address group {gid}", answer)


@command(ip_addr_group_app, "remove-addr")
def ip_addr_group_remove_addr(s: Session, group_id: GroupArg, addr: AddrArg) -> None:
    """Remove an address from the group."""
    gid = object_id(group_id, "GROUP_ID")
    address = convert_one("ADDR", addr, parse_ipv4)
    answer = s.api.delete(f"/ip_addr_groups/{seg(gid)}/ip_addrs/{seg(address)}")
    s.out.done(f"removed {address} from IP address group {gid}", answer)
