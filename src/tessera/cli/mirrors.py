"""`tessera mirror ...`: port mirrors, which copy matching packets to another port.

A mirror's conditions are a list (a packet is copied when any matches). The rule
condition options (`--nw-src`, `--tp-dst`, `--in-ports`...) describe one condition, which
covers the common case; `--conditions JSON` gives the whole list (`'[]'` mirrors
everything). Ports, bridges and routers name mirrors with `--inbound-mirror` /
`--outbound-mirror` on their own `update`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from tessera.cli import crud
from tessera.cli.devices import new_id, object_id
from tessera.cli.options import IdArg, Name, NewId, TenantId
from tessera.cli.rule_text import rule_match
from tessera.cli.rules import RULE_OPTIONS, rule_fields
from tessera.client.errors import BadArgument
from tessera.client.rest import seg
from tessera.clikit.commands import command, option_group, sub_app
from tessera.clikit.output import Column, column, id_column
from tessera.clikit.params import convert, parse_uuid
from tessera.clikit.session import Session

# The rule options that are about a rule's action rather than what it matches.
_ACTION_OPTIONS = ("position", "jump_chain", "nat_targets", "flow_action")
CONDITION_OPTIONS = [o for o in RULE_OPTIONS if o.name not in _ACTION_OPTIONS]


def _conditions_text(row: Mapping[str, Any]) -> str:
    conditions = row.get("conditions") or []
    if not conditions:
        return "any"
    return " | ".join(rule_match(c) for c in conditions)


MIRROR_COLUMNS: list[Column] = [
    id_column(),
    column("name"),
    column("tenant_id", "tenant"),
    id_column("to_port_id", "to port"),
    Column("conditions (any of)", _conditions_text),
]

ToPort = Annotated[
    str | None,
    typer.Option("--to-port", metavar="PORT_ID", help="The port that receives the copies."),
]
ConditionsJson = Annotated[
    str | None,
    typer.Option(
        "--conditions",
        metavar="JSON",
        help="The whole condition list as a JSON array of objects with rule condition "
        "fields ('[]' mirrors everything).",
    ),
]

mirror_app = sub_app("Port mirrors: copy matching packets to another port.")


def _condition_list(raw_json: str | None, options: Mapping[str, Any]) -> list[Any] | None:
    """The condition list the options give, None when they give none."""
    one = rule_fields({**dict.fromkeys(_ACTION_OPTIONS), **options})
    if raw_json is None:
        return [one] if one else None
    if one:
        raise BadArgument("--conditions gives the whole list: use it without condition options")
    try:
        value = json.loads(raw_json)
    except json.JSONDecodeError as exc:
        raise BadArgument(f"--conditions: not valid JSON ({exc.msg})") from None
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise BadArgument("--conditions: expected a JSON array of objects")
    return value


@command(mirror_app, "list")
def mirror_list(s: Session) -> None:
    """List mirrors."""
    crud.list_objects(s, "/mirrors", MIRROR_COLUMNS, empty="no mirrors")


@command(mirror_app, "show")
def mirror_show(s: Session, mirror_id: IdArg) -> None:
    """Show one mirror with its conditions."""
    crud.show_object(s, f"/mirrors/{seg(object_id(mirror_id))}")


@command(mirror_app, "create")
@option_group("conditions", CONDITION_OPTIONS)
def mirror_create(
    s: Session,
    to_port: ToPort = None,
    name: Name = None,
    tenant_id: TenantId = None,
    conditions_json: ConditionsJson = None,
    id: NewId = None,
    conditions: dict[str, Any] | None = None,
) -> None:
    """Create a mirror: --to-port PORT_ID [--nw-proto tcp --tp-dst 80 ...]."""
    port = convert("--to-port", to_port, parse_uuid)
    if port is None:
        raise BadArgument("a mirror needs --to-port PORT_ID")
    fields = crud.body(
        id=new_id(id),
        name=name,
        tenant_id=tenant_id,
        to_port_id=port,
        conditions=_condition_list(conditions_json, conditions or {}),
    )
    crud.create_object(s, "/mirrors", fields)


@command(mirror_app, "update")
@option_group("conditions", CONDITION_OPTIONS)
def mirror_update(
    s: Session,
    mirror_id: IdArg,
    to_port: ToPort = None,
    name: Name = None,
    tenant_id: TenantId = None,
    conditions_json: ConditionsJson = None,
    conditions: dict[str, Any] | None = None,
) -> None:
    """Change a mirror; condition options replace its conditions with that one."""
    changes = crud.body(
        name=name,
        tenant_id=tenant_id,
        to_port_id=convert("--to-port", to_port, parse_uuid),
        conditions=_condition_list(conditions_json, conditions or {}),
    )
    crud.update_object(s, f"/mirrors/{seg(object_id(mirror_id))}", changes)


@command(mirror_app, "delete")
def mirror_delete(s: Session, mirror_id: IdArg) -> None:
    """Delete a mirror (ports and devices stop naming it)."""
    mid = object_id(mirror_id)
    crud.delete_object(s, f"/mirrors/{seg(mid)}", f"mirror {mid}")
