"""`tessera route ...`: a router's routes (longest prefix, then source, then weight)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from tessera.cli import crud
from tessera.cli.devices import new_id, object_id
from tessera.cli.options import IdArg, NewId
from tessera.client.errors import BadArgument
from tessera.client.rest import seg
from tessera.clikit.commands import command, sub_app
from tessera.clikit.output import Column, column, id_column
from tessera.clikit.params import (
    Cidr,
    convert,
    convert_clearable,
    parse_choice,
    parse_cidr,
    parse_int,
    parse_ipv4,
    parse_uuid,
)
from tessera.clikit.session import Session

ROUTE_TYPES = ("Normal", "BlackHole", "Reject")


def _prefix(addr_field: str, len_field: str) -> Column:
    def cell(row: Mapping[str, Any]) -> str:
        if row.get(addr_field) is None:
            return "-"
        return f"{row[addr_field]}/{row.get(len_field)}"

    return Column(addr_field.split("_")[0], cell)


ROUTE_COLUMNS: list[Column] = [
    id_column(),
    _prefix("dst_network_addr", "dst_network_length"),
    _prefix("src_network_addr", "src_network_length"),
    column("type"),
    id_column("next_hop_port", "next hop port"),
    column("next_hop_gateway", "gateway"),
    column("weight"),
]

Dst = Annotated[str | None, typer.Option("--dst", metavar="ADDR/LEN", help="Destination network.")]
Src = Annotated[
    str | None,
    typer.Option("--src", metavar="ADDR/LEN", help="Source network (default: 0.0.0.0/0, any)."),
]
NextHopPort = Annotated[
    str | None,
    typer.Option(
        "--next-hop-port", "--port", metavar="PORT_ID", help="The router port to send out of."
    ),
]
Gateway = Annotated[
    str | None,
    typer.Option(
        "--gateway",
        "--next-hop-gateway",
        metavar="ADDR",
        help="Next-hop router address; absent means on-link ('none' clears).",
    ),
]
RouteType = Annotated[
    str | None,
    typer.Option("--type", metavar="TYPE", help="Normal (default), BlackHole or Reject."),
]
Weight = Annotated[
    str | None, typer.Option("--weight", metavar="N", help="Lower wins among equals.")
]

route_app = sub_app("Routes of a router.")


def _route_fields(
    dst: str | None,
    src: str | None,
    port: str | None,
    gateway: str | None,
    route_type: str | None,
    weight: str | None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for option, raw, prefix in (("--dst", dst, "dst"), ("--src", src, "src")):
        cidr: Cidr | None = convert(option, raw, parse_cidr)
        if cidr is not None:
            fields[f"{prefix}_network_addr"] = cidr.address
            fields[f"{prefix}_network_length"] = cidr.length
    return {
        **fields,
        **crud.body(
            next_hop_port=convert("--next-hop-port", port, parse_uuid),
            next_hop_gateway=convert_clearable("--gateway", gateway, parse_ipv4),
            type=convert("--type", route_type, parse_choice(ROUTE_TYPES)),
            weight=convert("--weight", weight, parse_int(0, 65535)),
        ),
    }


@command(route_app, "list")
def route_list(
    s: Session,
    router_id: Annotated[str, typer.Argument(metavar="ROUTER_ID", show_default=False)],
) -> None:
    """List a router's routes."""
    path = f"/routers/{seg(object_id(router_id, 'ROUTER_ID'))}/routes"
    crud.list_objects(s, path, ROUTE_COLUMNS, empty="no routes")


@command(route_app, "show")
def route_show(s: Session, route_id: IdArg) -> None:
    """Show one route."""
    crud.show_object(s, f"/routes/{seg(object_id(route_id))}")


@command(route_app, "create")
def route_create(
    s: Session,
    router_id: Annotated[str, typer.Argument(metavar="ROUTER_ID", show_default=False)],
    dst: Dst = None,
    src: Src = None,
    next_hop_port: NextHopPort = None,
    gateway: Gateway = None,
    route_type: RouteType = None,
    weight: Weight = None,
    id: NewId = None,
) -> None:
    """Add a route, e.g. --dst 0.0.0.0/0 --next-hop-port PORT --gateway ADDR."""
    rid = object_id(router_id, "ROUTER_ID")
    if dst is None:
        raise BadArgument("a route needs --dst ADDR/LEN (0.0.0.0/0 for a default route)")
    fields = _route_fields(dst, src, next_hop_port, gateway, route_type, weight)
    if fields.get("type", "Normal") == "Normal" and "next_hop_port" not in fields:
        raise BadArgument("a Normal route needs --next-hop-port PORT_ID")
    fields = {**crud.body(id=new_id(id)), **fields}
    crud.create_object(s, f"/routers/{seg(rid)}/routes", fields)


@command(route_app, "update")
def route_update(
    s: Session,
    route_id: IdArg,
    dst: Dst = None,
    src: Src = None,
    next_hop_port: NextHopPort = None,
    gateway: Gateway = None,
    route_type: RouteType = None,
    weight: Weight = None,
) -> None:
    """Change a route."""
    changes = _route_fields(dst, src, next_hop_port, gateway, route_type, weight)
    crud.update_object(s, f"/routes/{seg(object_id(route_id))}", changes)


@command(route_app, "delete")
def route_delete(s: Session, route_id: IdArg) -> None:
    """Delete a route."""
    rid = object_id(route_id)
    crud.delete_object(s, f"/routes/{seg(rid)}", f"route {rid}")
