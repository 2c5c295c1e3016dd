"""`tessera load-balancer ...`, `tessera vip ...` and `tessera health-monitor ...`: a
router's load balancer, the addresses clients connect to, and how members are probed.
Pools and their members are in `pools.py`."""

from __future__ import annotations

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
    convert,
    convert_clearable,
    convert_one,
    parse_choice,
    parse_int,
    parse_ipv4,
    parse_uuid,
)
from tessera.clikit.session import Session
from tessera.model.limits import MAX_HEALTH_MONITOR_DELAY

LbAdminState = Annotated[
    bool | None,
    typer.Option(
        "--up/--down",
        "--admin-state-up/--admin-state-down",
        help="Administrative state (a down object takes no new connections).",
        show_default=False,
    ),
]
L4_PORT = parse_int(1, 65535)
ProtocolPort = Annotated[
    str | None,
    typer.Option("--protocol-port", "--port", metavar="N", help="TCP port (1..65535)."),
]
Address = Annotated[str | None, typer.Option("--address", metavar="ADDR", help="IPv4 address.")]
LoadBalancerOpt = Annotated[
    str | None,
    typer.Option(
        "--load-balancer", "--load-balancer-id", metavar="LB_ID", help="Its load balancer."
    ),
]
PoolOpt = Annotated[
    str | None, typer.Option("--pool", "--pool-id", metavar="POOL_ID", help="Its pool.")
]


def required(option: str, value: Any, what: str) -> Any:
    if value is None:
        raise BadArgument(f"{what} needs {option}")
    return value


# -- load balancers ---------------------------------------------------------------------

LOAD_BALANCER_COLUMNS: list[Column] = [
    id_column(),
    id_column("router_id", "router"),
    column("admin_state_up", "up"),
]
RouterOpt = Annotated[
    str | None,
    typer.Option("--router", "--router-id", metavar="ROUTER_ID", help="The router it serves."),
]

load_balancer_app = sub_app("Load balancers: a router's VIPs and pools (one per router).")


@command(load_balancer_app, "list")
def load_balancer_list(s: Session) -> None:
    """List load balancers."""
    crud.list_objects(s, "/load_balancers", LOAD_BALANCER_COLUMNS, empty="no load balancers")


@command(load_balancer_app, "show")
def load_balancer_show(s: Session, lb_id: IdArg) -> None:
    """Show one load balancer."""
    crud.show_object(s, f"/load_balancers/{seg(object_id(lb_id))}")


@command(load_balancer_app, "create")
def load_balancer_create(
    s: Session, router: RouterOpt = None, up: LbAdminState = None, id: NewId = None
) -> None:
    """Create the load balancer of a router: --router ROUTER_ID."""
    router_id = required(
        "--router ROUTER_ID", convert("--router", router, parse_uuid), "a load balancer"
    )
    fields = crud.body(id=new_id(id), router_id=router_id, admin_state_up=up)
    crud.create_object(s, "/load_balancers", fields)


@command(load_balancer_app, "update")
def load_balancer_update(
    s: Session, lb_id: IdArg, router: RouterOpt = None, up: LbAdminState = None
) -> None:
    """Change a load balancer (its router, its admin state)."""
    changes = crud.body(router_id=convert("--router", router, parse_uuid), admin_state_up=up)
    crud.update_object(s, f"/load_balancers/{seg(object_id(lb_id))}", changes)


@command(load_balancer_app, "delete")
def load_balancer_delete(s: Session, lb_id: IdArg) -> None:
    """Delete a load balancer with its pools, their members, and its VIPs."""
    oid = object_id(lb_id)
    crud.delete_object(s, f"/load_balancers/{seg(oid)}", f"load balancer {oid}")


# -- VIPs -------------------------------------------------------------------------------

VIP_COLUMNS: list[Column] = [
    id_column(),
    id_column("load_balancer_id", "load balancer"),
    id_column("pool_id", "pool"),
    column("address"),
    column("protocol_port", "port"),
    column("session_persistence", "persistence"),
    column("admin_state_up", "up"),
]
SESSION_PERSISTENCE = ("SOURCE_IP",)
Persistence = Annotated[
    str | None,
    typer.Option(
        "--session-persistence",
        metavar="SOURCE_IP|none",
        help="SOURCE_IP: a client's connections go to one member ('none': no persistence).",
    ),
]

vip_app = sub_app("VIPs: the addresses and TCP ports of a load balancer clients connect to.")


def _vip_fields(
    lb: str | None, pool: str | None, address: str | None, port: str | None, persistence: str | None
) -> dict[str, Any]:
    return crud.body(
        load_balancer_id=convert("--load-balancer", lb, parse_uuid),
        pool_id=convert("--pool", pool, parse_uuid),
        address=convert("--address", address, parse_ipv4),
        protocol_port=convert("--protocol-port", port, L4_PORT),
        session_persistence=convert_clearable(
            "--session-persistence", persistence, parse_choice(SESSION_PERSISTENCE)
        ),
    )


@command(vip_app, "list")
def vip_list(s: Session, lb: LoadBalancerOpt = None, pool: PoolOpt = None) -> None:
    """List VIPs (all, or those of --load-balancer or of --pool)."""
    if lb is not None and pool is not None:
        raise BadArgument("give --load-balancer or --pool, not both")
    path = "/vips"
    if lb is not None:
        path = f"/load_balancers/{seg(convert_one('--load-balancer', lb, parse_uuid))}/vips"
    elif pool is not None:
        path = f"/pools/{seg(convert_one('--pool', pool, parse_uuid))}/vips"
    crud.list_objects(s, path, VIP_COLUMNS, empty="no VIPs")


@command(vip_app, "show")
def vip_show(s: Session, vip_id: IdArg) -> None:
    """Show one VIP."""
    crud.show_object(s, f"/vips/{seg(object_id(vip_id))}")


@command(vip_app, "create")
def vip_create(
    s: Session,
    lb: LoadBalancerOpt = None,
    pool: PoolOpt = None,
    address: Address = None,
    protocol_port: ProtocolPort = None,
    session_persistence: Persistence = None,
    up: LbAdminState = None,
    id: NewId = None,
) -> None:
    """Create a VIP: --load-balancer LB_ID --pool POOL_ID --address ADDR --port N."""
    fields = _vip_fields(lb, pool, address, protocol_port, session_persistence)
    for option, field in (
        ("--load-balancer LB_ID", "load_balancer_id"),
        ("--pool POOL_ID", "pool_id"),
        ("--address ADDR", "address"),
        ("--protocol-port N", "protocol_port"),
    ):
        required(option, fields.get(field), "a VIP")
    crud.create_object(s, "/vips", {**crud.body(id=new_id(id), admin_state_up=up), **fields})


@command(vip_app, "update")
def vip_update(
    s: Session,
    vip_id: IdArg,
    lb: LoadBalancerOpt = None,
    pool: PoolOpt = None,
    address: Address = None,
    protocol_port: ProtocolPort = None,
    session_persistence: Persistence = None,
    up: LbAdminState = None,
) -> None:
    """Change a VIP."""
    changes = {
        **_vip_fields(lb, pool, address, protocol_port, session_persistence),
        **crud.body(admin_state_up=up),
    }
    crud.update_object(s, f"/vips/{seg(object_id(vip_id))}", changes)


@command(vip_app, "delete")
def vip_delete(s: Session, vip_id: IdArg) -> None:
    """Delete a VIP."""
    oid = object_id(vip_id)
    crud.delete_object(s, f"/vips/{seg(oid)}", f"VIP {oid}")


# -- health monitors ----------------------------------------------------------------------

HEALTH_MONITOR_COLUMNS: list[Column] = [
    id_column(),
    column("type"),
    column("delay"),
    column("timeout"),
    column("max_retries", "retries"),
    column("admin_state_up", "up"),
    column("status"),
]
SECONDS = parse_int(1, MAX_HEALTH_MONITOR_DELAY)
Delay = Annotated[str | None, typer.Option("--delay", metavar="SECONDS", help="Between probes.")]
Timeout = Annotated[
    str | None,
    typer.Option("--timeout", metavar="SECONDS", help="A probe's limit (at most --delay)."),
]
MaxRetries = Annotated[
    str | None,
    typer.Option(
        "--max-retries", metavar="N", help="Failed probes in a row that mark a member down (1..10)."
    ),
]
MonitorType = Annotated[
    str | None, typer.Option("--type", metavar="TCP", help="TCP (the only type).")
]

health_monitor_app = sub_app("Health monitors: how the members of the pools naming one are probed.")


def _monitor_fields(
    monitor_type: str | None, delay: str | None, timeout: str | None, retries: str | None
) -> dict[str, Any]:
    return crud.body(
        type=convert("--type", monitor_type, parse_choice(("TCP",))),
        delay=convert("--delay", delay, SECONDS),
        timeout=convert("--timeout", timeout, SECONDS),
        max_retries=convert("--max-retries", retries, parse_int(1, 10)),
    )


@command(health_monitor_app, "list")
def health_monitor_list(s: Session) -> None:
    """List health monitors."""
    crud.list_objects(s, "/health_monitors", HEALTH_MONITOR_COLUMNS, empty="no health monitors")


@command(health_monitor_app, "show")
def health_monitor_show(s: Session, hm_id: IdArg) -> None:
    """Show one health monitor."""
    crud.show_object(s, f"/health_monitors/{seg(object_id(hm_id))}")


@command(health_monitor_app, "create")
def health_monitor_create(
    s: Session,
    monitor_type: MonitorType = None,
    delay: Delay = None,
    timeout: Timeout = None,
    max_retries: MaxRetries = None,
    up: LbAdminState = None,
    id: NewId = None,
) -> None:
    """Create a health monitor (default: TCP, --delay 5 --timeout 3 --max-retries 3)."""
    fields = _monitor_fields(monitor_type, delay, timeout, max_retries)
    crud.create_object(
        s, "/health_monitors", {**crud.body(id=new_id(id), admin_state_up=up), **fields}
    )


@command(health_monitor_app, "update")
def health_monitor_update(
    s: Session,
    hm_id: IdArg,
    monitor_type: MonitorType = None,
    delay: Delay = None,
    timeout: Timeout = None,
    max_retries: MaxRetries = None,
    up: LbAdminState = None,
) -> None:
    """Change a health monitor."""
    changes = {
        **_monitor_fields(monitor_type, delay, timeout, max_retries),
        **crud.body(admin_state_up=up),
    }
    crud.update_object(s, f"/health_monitors/{seg(object_id(hm_id))}", changes)


@command(health_monitor_app, "delete")
def health_monitor_delete(s: Session, hm_id: IdArg) -> None:
    """Delete a health monitor (the pools naming it go unmonitored)."""
    oid = object_id(hm_id)
    crud.delete_object(s, f"/health_monitors/{seg(oid)}", f"health monitor {oid}")
