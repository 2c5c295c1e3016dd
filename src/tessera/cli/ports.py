"""Ports: created on a bridge or a router, then shown, changed, linked, deleted by id.

A network engineer thinks "add a port to this bridge", so creation lives under the
device (`tessera bridge port create BRIDGE_ID`, `tessera router port create ROUTER_ID
--address 10.0.0.1/24`); `tessera port create --device ID` does the same when the kind of
device is not at hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from tessera.cli import crud
from tessera.cli.devices import (
    InboundMirrors,
    OutboundMirrors,
    filter_fields,
    mirror_fields,
    new_id,
    object_id,
)
from tessera.cli.options import AdminState, IdArg, InboundFilter, NewId, OutboundFilter
from tessera.client.errors import ApiError, BadArgument
from tessera.client.rest import seg
from tessera.clikit.commands import command, sub_app
from tessera.clikit.output import Column, column, id_column
from tessera.clikit.params import convert, parse_int, parse_interface_address, parse_mac
from tessera.clikit.session import Session


def _address(row: Mapping[str, Any]) -> str:
    if row.get("port_address") is None:
        return "-"
    return f"{row['port_address']}/{row.get('network_length')}"


def _binding(row: Mapping[str, Any]) -> str:
    if row.get("host_id") is None:
        return "-"
    return f"{row.get('interface_name')}@{row['host_id']}"


PORT_COLUMNS: list[Column] = [
    id_column(),
    column("type"),
    id_column("device_id", "device"),
    Column("address", _address),
    column("port_mac", "mac"),
    column("vlan_id", "vlan"),
    column("peer_id", "peer"),
    Column("bound to (ifname@host)", _binding, is_id=True),
    column("admin_state_up", "up"),
]

VlanId = Annotated[
    str | None, typer.Option("--vlan-id", "--vlan", metavar="VID", help="VLAN (0-4095).")
]
Address = Annotated[
    str | None,
    typer.Option(
        "--address",
        metavar="ADDR/LEN",
        help="Router port address and network, e.g. 10.0.0.1/24.",
    ),
]
Mac = Annotated[
    str | None,
    typer.Option("--mac", "--port-mac", metavar="MAC", help="Router port MAC (else generated)."),
]

port_app = sub_app("Ports of bridges and routers: show, change, link, delete.")
bridge_port_app = sub_app("Ports of a bridge.")
router_port_app = sub_app("Ports of a router.")


# -- creation, on a known device ------------------------------------------------------


def create_bridge_port(
    s: Session,
    bridge_id: str,
    *,
    vlan_id: str | None,
    admin_state: bool | None,
    inbound_filter: str | None,
    outbound_filter: str | None,
    port_id: str | None,
) -> None:
    fields = crud.body(
        id=new_id(port_id),
        vlan_id=convert("--vlan-id", vlan_id, parse_int(0, 4095)),
        admin_state_up=admin_state,
        **filter_fields(inbound_filter, outbound_filter),
    )
    crud.create_object(s, f"/bridges/{seg(bridge_id)}/ports", fields)


def create_router_port(
    s: Session,
    router_id: str,
    *,
    address: str | None,
    mac: str | None,
    admin_state: bool | None,
    inbound_filter: str | None,
    outbound_filter: str | None,
    port_id: str | None,
) -> None:
    cidr = convert("--address", address, parse_interface_address)
    if cidr is None:
        raise BadArgument("a router port needs --address ADDR/LEN (e.g. 10.0.0.1/24)")
    network = cidr.network
    fields = crud.body(
        id=new_id(port_id),
        port_address=cidr.address,
        network_address=network.address,
        network_length=network.length,
        port_mac=convert("--mac", mac, parse_mac),
        admin_state_up=admin_state,
        **filter_fields(inbound_filter, outbound_filter),
    )
    crud.create_object(s, f"/routers/{seg(router_id)}/ports", fields)


@command(bridge_port_app, "create")
def bridge_port_create(
    s: Session,
    bridge_id: Annotated[str, typer.Argument(metavar="BRIDGE_ID", show_default=False)],
    vlan_id: VlanId = None,
    admin_state: AdminState = None,
    inbound_filter: InboundFilter = None,
    outbound_filter: OutboundFilter = None,
    id: NewId = None,
) -> None:
    """Add a port to a bridge; prints it (with -q only its id)."""
    create_bridge_port(
        s,
        object_id(bridge_id, "BRIDGE_ID"),
        vlan_id=vlan_id,
        admin_state=admin_state,
        inbound_filter=inbound_filter,
        outbound_filter=outbound_filter,
        port_id=id,
    )


@command(bridge_port_app, "list")
def bridge_port_list(
    s: Session,
    bridge_id: Annotated[str, typer.Argument(metavar="BRIDGE_ID", show_default=False)],
) -> None:
    """List a bridge's ports."""
    bid = object_id(bridge_id, "BRIDGE_ID")
    crud.list_objects(s, f"/bridges/{seg(bid)}/ports", PORT_COLUMNS, empty="no ports")


@command(router_port_app, "create")
def router_port_create(
    s: Session,
    router_id: Annotated[str, typer.Argument(metavar="ROUTER_ID", show_default=False)],
    address: Address = None,
    mac: Mac = None,
    admin_state: AdminState = None,
    inbound_filter: InboundFilter = None,
    outbound_filter: OutboundFilter = None,
    id: NewId = None,
) -> None:
    """Add a port to a router: --address 10.0.0.1/24 gives its address and network."""
    create_router_port(
        s,
        object_id(router_id, "ROUTER_ID"),
        address=address,
        mac=mac,
        admin_state=admin_state,
        inbound_filter=inbound_filter,
        outbound_filter=outbound_filter,
        port_id=id,
    )


@command(router_port_app, "list")
def router_port_list(
    s: Session,
    router_id: Annotated[str, typer.Argument(metavar="ROUTER_ID", show_default=False)],
) -> None:
    """List a router's ports."""
    rid = object_id(router_id, "ROUTER_ID")
    crud.list_objects(s, f"/routers/{seg(rid)}/ports", PORT_COLUMNS, empty="no ports")


# -- any port, by id -------------------------------------------------------------------


def device_kind(s: Session, device_id: str) -> str:
    """`bridges` or `routers`: which collection holds this device."""
    for kind in ("bridges", "routers"):
        try:
            s.api.get(f"/{kind}/{seg(device_id)}")
        except ApiError as exc:
            if exc.status == 404:
                continue
            raise
        return kind
    raise BadArgument(f"no bridge or router has id {device_id}")


@command(port_app, "create")
def port_create(
    s: Session,
    device: Annotated[
        str, typer.Option("--device", metavar="DEVICE_ID", help="The bridge or router.")
    ],
    vlan_id: VlanId = None,
    address: Address = None,
    mac: Mac = None,
    admin_state: AdminState = None,
    inbound_filter: InboundFilter = None,
    outbound_filter: OutboundFilter = None,
    id: NewId = None,
) -> None:
    """Add a port to a bridge or router (router ports need --address)."""
    device_id = object_id(device, "--device")
    if device_kind(s, device_id) == "bridges":
        if address is not None or mac is not None:
            raise BadArgument("--address and --mac apply to router ports only")
        create_bridge_port(
            s,
            device_id,
            vlan_id=vlan_id,
            admin_state=admin_state,
            inbound_filter=inbound_filter,
            outbound_filter=outbound_filter,
            port_id=id,
        )
    else:
        if vlan_id is not None:
            raise BadArgument("--vlan-id applies to bridge ports only")
        create_router_port(
            s,
            device_id,
            address=address,
            mac=mac,
            admin_state=admin_state,
            inbound_filter=inbound_filter,
            outbound_filter=outbound_filter,
            port_id=id,
        )


@command(port_app, "list")
def port_list(
    s: Session,
    device: Annotated[
        str | None,
        typer.Argument(metavar="[DEVICE_ID]", help="Only this bridge's or router's ports."),
    ] = None,
) -> None:
    """List ports: of one bridge or router, else of every device."""
    if device is not None:
        device_id = object_id(device, "DEVICE_ID")
        kind = device_kind(s, device_id)
        crud.list_objects(s, f"/{kind}/{seg(device_id)}/ports", PORT_COLUMNS, empty="no ports")
        return
    s.out.objects(all_ports(s), PORT_COLUMNS, empty="no ports")


def all_ports(s: Session) -> list[Any]:
    """Every port: `GET /ports` where the API offers it, else device by device."""
    try:
        return list(s.api.get("/ports") or [])
    except ApiError as exc:
        if exc.status not in (404, 405):
            raise
    ports: list[Any] = []
    for kind in ("bridges", "routers"):
        for device in s.api.get(f"/{kind}") or []:
            ports.extend(s.api.get(f"/{kind}/{seg(device['id'])}/ports") or [])
    return ports


@command(port_app, "show")
def port_show(s: Session, port_id: IdArg) -> None:
    """Show one port."""
    crud.show_object(s, f"/ports/{seg(object_id(port_id))}")


@command(port_app, "update")
def port_update(
    s: Session,
    port_id: IdArg,
    admin_state: AdminState = None,
    inbound_filter: InboundFilter = None,
    outbound_filter: OutboundFilter = None,
    inbound_mirror: InboundMirrors = None,
    outbound_mirror: OutboundMirrors = None,
) -> None:
    """Change a port's state, filters or mirrors."""
    changes = crud.body(
        admin_state_up=admin_state,
        **filter_fields(inbound_filter, outbound_filter),
        **mirror_fields(inbound_mirror, outbound_mirror),
    )
    crud.update_object(s, f"/ports/{seg(object_id(port_id))}", changes)


@command(port_app, "delete")
def port_delete(s: Session, port_id: IdArg) -> None:
    """Delete a port (a link to it goes too)."""
    pid = object_id(port_id)
    crud.delete_object(s, f"/ports/{seg(pid)}", f"port {pid}")


@command(port_app, "link")
def port_link(
    s: Session,
    port_id: Annotated[str, typer.Argument(metavar="PORT_ID", show_default=False)],
    peer_id: Annotated[str, typer.Argument(metavar="PEER_PORT_ID", show_default=False)],
) -> None:
    """Join two interior ports (bridge-router, router-router, bridge-bridge)."""
    pid, peer = object_id(port_id, "PORT_ID"), object_id(peer_id, "PEER_PORT_ID")
    answer = s.api.post(f"/ports/{seg(pid)}/link", {"peer_id": peer})
    s.out.done(f"linked port {pid} to port {peer}", answer)


@command(port_app, "unlink")
def port_unlink(
    s: Session,
    port_id: Annotated[str, typer.Argument(metavar="PORT_ID", show_default=False)],
) -> None:
    """Undo a link (either end's id will do)."""
    pid = object_id(port_id, "PORT_ID")
    answer = s.api.delete(f"/ports/{seg(pid)}/link")
    s.out.done(f"unlinked port {pid}", answer)
