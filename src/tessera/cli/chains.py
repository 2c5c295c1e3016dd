"""`tessera chain ...`: ordered rule lists used as filters by devices and ports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tessera.cli import crud
from tessera.cli.devices import new_id, object_id
from tessera.cli.options import IdArg, Name, NewId, TenantId
from tessera.client.rest import seg
from tessera.clikit.commands import command, sub_app
from tessera.clikit.output import Column, column, id_column
from tessera.clikit.session import Session


def _rule_count(row: Mapping[str, Any]) -> str:
    return str(len(row.get("rule_ids") or []))


CHAIN_COLUMNS: list[Column] = [
    id_column(),
    column("name"),
    column("tenant_id", "tenant"),
    Column("rules", _rule_count),
]

chain_app = sub_app("Chains: ordered lists of rules, used as inbound/outbound filters.")


@command(chain_app, "list")
def chain_list(s: Session) -> None:
    """List chains."""
    crud.list_objects(s, "/chains", CHAIN_COLUMNS, empty="no chains")


@command(chain_app, "show")
def chain_show(s: Session, chain_id: IdArg) -> None:
    """Show one chain (its rules: tessera rule list CHAIN_ID)."""
    crud.show_object(s, f"/chains/{seg(object_id(chain_id))}")


@command(chain_app, "create")
def chain_create(
    s: Session, name: Name = None, tenant_id: TenantId = None, id: NewId = None
) -> None:
    """Create an empty chain; prints it (with -q only its id)."""
    crud.create_object(s, "/chains", crud.body(id=new_id(id), name=name, tenant_id=tenant_id))


@command(chain_app, "update")
def chain_update(
    s: Session, chain_id: IdArg, name: Name = None, tenant_id: TenantId = None
) -> None:
    """Rename a chain or change its tenant."""
    changes = crud.body(name=name, tenant_id=tenant_id)
    crud.update_object(s, f"/chains/{seg(object_id(chain_id))}", changes)


@command(chain_app, "delete")
def chain_delete(s: Session, chain_id: IdArg) -> None:
    """Delete a chain with its rules (filters naming it are cleared)."""
    cid = object_id(chain_id)
    crud.delete_object(s, f"/chains/{seg(cid)}", f"chain {cid}")
