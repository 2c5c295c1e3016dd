"""What bridges and routers share on the command line: the five CRUD commands over
`name`, `tenant_id`, `admin_state_up`, the two filters and the two mirror lists."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tessera.cli import crud
from tessera.cli.options import (
    AdminState,
    IdArg,
    InboundFilter,
    Name,
    NewId,
    OutboundFilter,
    TenantId,
)
from tessera.client.rest import seg
from tessera.clikit.commands import command
from tessera.clikit.output import Column, column, id_column
from tessera.clikit.params import (
    CLEAR_WORDS,
    convert,
    convert_clearable,
    convert_many,
    convert_one,
    parse_uuid,
)
from tessera.clikit.session import Session

DEVICE_COLUMNS: list[Column] = [
    id_column(),
    column("name"),
    column("tenant_id", "tenant"),
    column("admin_state_up", "up"),
    column("inbound_filter_id", "inbound filter"),
    column("outbound_filter_id", "outbound filter"),
]


def filter_fields(inbound: str | None, outbound: str | None) -> dict[str, Any]:
    return {
        "inbound_filter_id": convert_clearable("--inbound-filter-id", inbound, parse_uuid),
        "outbound_filter_id": convert_clearable("--outbound-filter-id", outbound, parse_uuid),
    }


InboundMirrors = Annotated[
    list[str] | None,
    typer.Option(
        "--inbound-mirror",
        metavar="MIRROR_ID[,..]",
        help="Mirror of packets entering (repeatable; replaces the list; 'none' empties it).",
    ),
]
OutboundMirrors = Annotated[
    list[str] | None,
    typer.Option(
        "--outbound-mirror",
        metavar="MIRROR_ID[,..]",
        help="Mirror of packets leaving (repeatable; replaces the list; 'none' empties it).",
    ),
]


def _mirror_list(option: str, raws: list[str] | None) -> list[str] | None:
    if raws is None:
        return None
    if any(r.strip().lower() in CLEAR_WORDS for r in raws):
        return []
    return convert_many(option, raws, parse_uuid)


def mirror_fields(inbound: list[str] | None, outbound: list[str] | None) -> dict[str, Any]:
    """The mirror lists the options set: each option replaces its whole list."""
    return {
        "inbound_mirror_ids": _mirror_list("--inbound-mirror", inbound),
        "outbound_mirror_ids": _mirror_list("--outbound-mirror", outbound),
    }


def new_id(raw: str | None) -> str | None:
    return convert("--id", raw, parse_uuid)


def object_id(raw: str, what: str = "ID") -> str:
    """A positional id argument, checked so a typo is not sent as a path."""
    return convert_one(what, raw, parse_uuid)


def add_device_commands(app: typer.Typer, singular: str, path: str) -> None:
    """list/show/create/update/delete for a device kind (`bridge` at `/bridges`)."""
    plural = singular + "s"

    def list_devices(s: Session) -> None:
        crud.list_objects(s, path, DEVICE_COLUMNS, empty=f"no {plural}")

    def show_device(s: Session, device_id: IdArg) -> None:
        crud.show_object(s, f"{path}/{seg(object_id(device_id))}")

    def create_device(
        s: Session,
        name: Name = None,
        tenant_id: TenantId = None,
        admin_state: AdminState = None,
        inbound_filter: InboundFilter = None,
        outbound_filter: OutboundFilter = None,
        inbound_mirror: InboundMirrors = None,
        outbound_mirror: OutboundMirrors = None,
        id: NewId = None,
    ) -> None:
        fields = crud.body(
            id=new_id(id),
            name=name,
            tenant_id=tenant_id,
            admin_state_up=admin_state,
            **filter_fields(inbound_filter, outbound_filter),
            **mirror_fields(inbound_mirror, outbound_mirror),
        )
        crud.create_object(s, path, fields)

    def update_device(
        s: Session,
        device_id: IdArg,
        name: Name = None,
        tenant_id: TenantId = None,
        admin_state: AdminState = None,
        inbound_filter: InboundFilter = None,
        outbound_filter: OutboundFilter = None,
        inbound_mirror: InboundMirrors = None,
        outbound_mirror: OutboundMirrors = None,
    ) -> None:
        changes = crud.body(
            name=name,
            tenant_id=tenant_id,
            admin_state_up=admin_state,
            **filter_fields(inbound_filter, outbound_filter),
            **mirror_fields(inbound_mirror, outbound_mirror),
        )
        crud.update_object(s, f"{path}/{seg(object_id(device_id))}", changes)

    def delete_device(s: Session, device_id: IdArg) -> None:
        did = object_id(device_id)
        crud.delete_object(s, f"{path}/{seg(did)}", f"{singular} {did}")

    list_devices.__doc__ = f"List {plural}."
    show_device.__doc__ = f"Show one {singular}."
    create_device.__doc__ = f"Create a {singular}; prints it (with -q only its id)."
    update_device.__doc__ = f"Change a {singular}'s name, tenant, state, filters or mirrors."
    delete_device.__doc__ = f"Delete a {singular} with its ports (and their links)."
    command(app, "list")(list_devices)
    command(app, "show")(show_device)
    command(app, "create")(create_device)
    command(app, "update")(update_device)
    command(app, "delete")(delete_device)
