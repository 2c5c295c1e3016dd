"""`tessera pool ...` and `tessera pool-member ...`: the backends a VIP spreads its
connections over. A pool's and a member's `status` is the health-monitor service's."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tessera.cli import crud
from tessera.cli.devices import new_id, object_id
from tessera.cli.load_balancers import (
    L4_PORT,
    Address,
    LbAdminState,
    LoadBalancerOpt,
    PoolOpt,
    ProtocolPort,
    required,
)
from tessera.cli.options import IdArg, NewId
from tessera.client.rest import seg
from tessera.clikit.commands import command, sub_app
from tessera.clikit.output import Column, column, id_column
from tessera.clikit.params import (
    convert,
    convert_clearable,
    convert_one,
    parse_choice,
    parse_int,
    parse_ipv4,
    parse_uuid,
)
from tessera.clikit.session import Session
from tessera.model.limits import MAX_MEMBER_WEIGHT

# -- pools ----------------------------------------------------------------------------------

POOL_COLUMNS: list[Column] = [
    id_column(),
    id_column("load_balancer_id", "load balancer"),
    id_column("health_monitor_id", "health monitor"),
    column("protocol"),
    column("lb_method", "method"),
    column("admin_state_up", "up"),
    column("status"),
]
HealthMonitorOpt = Annotated[
    str | None,
    typer.Option(
        "--health-monitor",
        "--health-monitor-id",
        metavar="HM_ID",
        help="The health monitor probing its members ('none': unmonitored).",
    ),
]
Protocol = Annotated[
    str | None, typer.Option("--protocol", metavar="TCP", help="TCP (the only one).")
]
LbMethod = Annotated[
    str | None,
    typer.Option("--lb-method", metavar="ROUND_ROBIN", help="ROUND_ROBIN (the only one)."),
]

pool_app = sub_app("Pools: the members a VIP spreads its connections over.")


def _pool_fields(
    monitor: str | None, protocol: str | None, method: str | None, up: bool | None
) -> dict[str, Any]:
    return crud.body(
        health_monitor_id=convert_clearable("--health-monitor", monitor, parse_uuid),
        protocol=convert("--protocol", protocol, parse_choice(("TCP",))),
        lb_method=convert("--lb-method", method, parse_choice(("ROUND_ROBIN",))),
        admin_state_up=up,
    )


@command(pool_app, "list")
def pool_list(s: Session, lb: LoadBalancerOpt = None) -> None:
    """List pools (all, or those of --load-balancer)."""
    path = "/pools"
    if lb is not None:
        path = f"/load_balancers/{seg(convert_one('--load-balancer', lb, parse_uuid))}/pools"
    crud.list_objects(s, path, POOL_COLUMNS, empty="no pools")


@command(pool_app, "show")
def pool_show(s: Session, pool_id: IdArg) -> None:
    """Show one pool."""
    crud.show_object(s, f"/pools/{seg(object_id(pool_id))}")


@command(pool_app, "create")
def pool_create(
    s: Session,
    lb: LoadBalancerOpt = None,
    health_monitor: HealthMonitorOpt = None,
    protocol: Protocol = None,
    lb_method: LbMethod = None,
    up: LbAdminState = None,
    id: NewId = None,
) -> None:
    """Create a pool of a load balancer: --load-balancer LB_ID [--health-monitor HM_ID]."""
    lb_id = required("--load-balancer LB_ID", convert("--load-balancer", lb, parse_uuid), "a pool")
    fields = {
        **crud.body(id=new_id(id), load_balancer_id=lb_id),
        **_pool_fields(health_monitor, protocol, lb_method, up),
    }
    crud.create_object(s, "/pools", fields)


@command(pool_app, "update")
def pool_update(
    s: Session,
    pool_id: IdArg,
    health_monitor: HealthMonitorOpt = None,
    protocol: Protocol = None,
    lb_method: LbMethod = None,
    up: LbAdminState = None,
) -> None:
    """Change a pool (its load balancer is fixed)."""
    changes = _pool_fields(health_monitor, protocol, lb_method, up)
    crud.update_object(s, f"/pools/{seg(object_id(pool_id))}", changes)


@command(pool_app, "delete")
def pool_delete(s: Session, pool_id: IdArg) -> None:
    """Delete a pool with its members and the VIPs sending to it."""
    oid = object_id(pool_id)
    crud.delete_object(s, f"/pools/{seg(oid)}", f"pool {oid}")


# -- pool members -------------------------------------------------------------------------

MEMBER_COLUMNS: list[Column] = [
    id_column(),
    id_column("pool_id", "pool"),
    column("address"),
    column("protocol_port", "port"),
    column("weight"),
    column("admin_state_up", "up"),
    column("status"),
]
Weight = Annotated[
    str | None,
    typer.Option(
        "--weight",
        metavar="N",
        help=f"Share of new connections relative to the other members (1..{MAX_MEMBER_WEIGHT}).",
    ),
]

pool_member_app = sub_app("Pool members: the backends (address, TCP port) of a pool.")


def _member_fields(
    pool: str | None, address: str | None, port: str | None, weight: str | None, up: bool | None
) -> dict[str, Any]:
    return crud.body(
        pool_id=convert("--pool", pool, parse_uuid),
        address=convert("--address", address, parse_ipv4),
        protocol_port=convert("--protocol-port", port, L4_PORT),
        weight=convert("--weight", weight, parse_int(1, MAX_MEMBER_WEIGHT)),
        admin_state_up=up,
    )


@command(pool_member_app, "list")
def pool_member_list(s: Session, pool: PoolOpt = None) -> None:
    """List pool members (all, or those of --pool)."""
    path = "/pool_members"
    if pool is not None:
        path = f"/pools/{seg(convert_one('--pool', pool, parse_uuid))}/pool_members"
    crud.list_objects(s, path, MEMBER_COLUMNS, empty="no pool members")


@command(pool_member_app, "show")
def pool_member_show(s: Session, member_id: IdArg) -> None:
    """Show one pool member."""
    crud.show_object(s, f"/pool_members/{seg(object_id(member_id))}")


@command(pool_member_app, "create")
def pool_member_create(
    s: Session,
    pool: PoolOpt = None,
    address: Address = None,
    protocol_port: ProtocolPort = None,
    weight: Weight = None,
    up: LbAdminState = None,
    id: NewId = None,
) -> None:
    """Add a member to a pool: --pool POOL_ID --address ADDR --port N [--weight N]."""
    fields = _member_fields(pool, address, protocol_port, weight, up)
    for option, field in (
        ("--pool POOL_ID", "pool_id"),
        ("--address ADDR", "address"),
        ("--protocol-port N", "protocol_port"),
    ):
        required(option, fields.get(field), "a pool member")
    crud.create_object(s, "/pool_members", {**crud.body(id=new_id(id)), **fields})


@command(pool_member_app, "update")
def pool_member_update(
    s: Session,
    member_id: IdArg,
    pool: PoolOpt = None,
    address: Address = None,
    protocol_port: ProtocolPort = None,
    weight: Weight = None,
    up: LbAdminState = None,
) -> None:
    """Change a pool member."""
    changes = _member_fields(pool, address, protocol_port, weight, up)
    crud.update_object(s, f"/pool_members/{seg(object_id(member_id))}", changes)


@command(pool_member_app, "delete")
def pool_member_delete(s: Session, member_id: IdArg) -> None:
    """Remove a member from its pool."""
    oid = object_id(member_id)
    crud.delete_object(s, f"/pool_members/{seg(oid)}", f"pool member {oid}")
