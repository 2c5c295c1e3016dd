"""`tessera tunnel-zone ...`: hosts that reach each other through VXLAN."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from tessera.cli import crud
from tessera.cli.devices import new_id, object_id
from tessera.cli.options import IdArg, Name, NewId
from tessera.client.rest import seg
from tessera.clikit.commands import command, sub_app
from tessera.clikit.output import Column, column, id_column
from tessera.clikit.params import convert, convert_one, parse_choice, parse_ipv4
from tessera.clikit.session import Session

TUNNEL_TYPES = ("vxlan",)


def _members(row: Mapping[str, Any]) -> str:
    hosts = row.get("hosts") or []
    return ", ".join(f"{h.get('host_id')}@{h.get('ip_address')}" for h in hosts) or "-"


TUNNEL_ZONE_COLUMNS: list[Column] = [
    id_column(),
    column("name"),
    column("type"),
    Column("hosts (host@underlay address)", _members),
]

TunnelType = Annotated[
    str | None, typer.Option("--type", metavar="TYPE", help="Encapsulation: vxlan (default).")
]
ZoneArg = Annotated[str, typer.Argument(metavar="ZONE_ID", show_default=False)]
HostArg = Annotated[str, typer.Argument(metavar="HOST_ID", show_default=False)]

tunnel_zone_app = sub_app("Tunnel zones: hosts joined by VXLAN over their underlay addresses.")


@command(tunnel_zone_app, "list")
def tunnel_zone_list(s: Session) -> None:
    """List tunnel zones with their member hosts."""
    crud.list_objects(s, "/tunnel_zones", TUNNEL_ZONE_COLUMNS, empty="no tunnel zones")


@command(tunnel_zone_app, "show")
def tunnel_zone_show(s: Session, zone_id: IdArg) -> None:
    """Show one tunnel zone."""
    crud.show_object(s, f"/tunnel_zones/{seg(object_id(zone_id))}")


@command(tunnel_zone_app, "create")
def tunnel_zone_create(
    s: Session, name: Name = None, tunnel_type: TunnelType = None, id: NewId = None
) -> None:
    """Create an empty tunnel zone; prints it (with -q only its id)."""
    kind = convert("--type", tunnel_type, parse_choice(TUNNEL_TYPES))
    crud.create_object(s, "/tunnel_zones", crud.body(id=new_id(id), name=name, type=kind))


@command(tunnel_zone_app, "update")
def tunnel_zone_update(s: Session, zone_id: IdArg, name: Name = None) -> None:
    """Rename a tunnel zone."""
    changes = crud.body(name=name)
    crud.update_object(s, f"/tunnel_zones/{seg(object_id(zone_id))}", changes)


@command(tunnel_zone_app, "delete")
def tunnel_zone_delete(s: Session, zone_id: IdArg) -> None:
    """Delete a tunnel zone."""
    zid = object_id(zone_id)
    crud.delete_object(s, f"/tunnel_zones/{seg(zid)}", f"tunnel zone {zid}")


@command(tunnel_zone_app, "add-host")
def tunnel_zone_add_host(
    s: Session,
    zone_id: ZoneArg,
    host_id: HostArg,
    ip: Annotated[
        str,
        typer.Option("--ip", "--ip-address", metavar="ADDR", help="The host's underlay address."),
    ],
) -> None:
    """Add a host, reached at its underlay address --ip."""
    zid, hid = object_id(zone_id, "ZONE_ID"), object_id(host_id, "HOST_ID")
    address = convert_one("--ip", ip, parse_ipv4)
    answer = s.api.post(f"/tunnel_zones/{seg(zid)}/hosts", {"host_id": hid, "ip_address": address})
    s.out.done(f"added host {hid} ({address}) to tunnel zone {zid}", answer)


@command(tunnel_zone_app, "remove-host")
def tunnel_zone_remove_host(s: Session, zone_id: ZoneArg, host_id: HostArg) -> None:
    """Remove a host from the zone."""
    zid, hid = object_id(zone_id, "ZONE_ID"), object_id(host_id, "HOST_ID")
    answer = s.api.delete(f"/tunnel_zones/{seg(zid)}/hosts/{seg(hid)}")
    s.out.done(f"removed host {hid} from tunnel zone {zid}", answer)
