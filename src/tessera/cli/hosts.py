"""`tessera host ...` (hypervisors, registered by their agents) and `tessera bind` /
`tessera unbind` (MidoNet's `mm-ctl --bind-port`): attach a virtual port to a local
interface of the host the command runs on."""

from __future__ import annotations

from typing import Annotated

import typer

from tessera.agent.hostid import DEFAULT_HOST_ID_FILE, HOST_ID_ENV, host_id_path
from tessera.cli import crud
from tessera.cli.devices import object_id
from tessera.cli.options import IdArg
from tessera.client.errors import UserError
from tessera.client.rest import seg
from tessera.clikit.commands import command, sub_app
from tessera.clikit.output import Column, column, id_column
from tessera.clikit.params import convert, convert_one, parse_ifname, parse_uuid
from tessera.clikit.session import Session

HOST_COLUMNS: list[Column] = [id_column(), column("name"), column("alive"), column("addresses")]
BINDING_COLUMNS: list[Column] = [
    id_column("port_id", "port"),
    column("interface_name", "interface"),
]

host_app = sub_app("Hypervisor hosts (registered by their agents) and their bindings.")
# Registered at the top level by main: `tessera bind`, `tessera unbind`.
# `tessera bind` and `tessera unbind` sit at the top level: one app each, so that each
# loads as a single command (`tessera.cli.main.PLUGINS`).
bind_app = typer.Typer()
unbind_app = typer.Typer()
BINDING_PANEL = "Hosts and bindings"

BindHost = Annotated[
    str | None,
    typer.Option(
        "--host",
        "--host-id",
        metavar="HOST_ID",
        help=f"The host (default: this one, from ${HOST_ID_ENV} or {DEFAULT_HOST_ID_FILE}).",
    ),
]
UnbindHost = Annotated[
    str | None,
    typer.Option(
        "--host",
        "--host-id",
        metavar="HOST_ID",
        help="The host (default: the one the port is bound to).",
    ),
]
PortArg = Annotated[str, typer.Argument(metavar="PORT_ID", show_default=False)]


def local_host_id() -> str:
    """This machine's host id, as its agent wrote it (never created here: an id the
    agent does not know would bind ports to a host that does not exist)."""
    path = host_id_path()
    hint = "run this on a host with a tessera agent, or pass --host HOST_ID"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise UserError(f"no host id: {path} does not exist ({hint})") from None
    except OSError as exc:
        raise UserError(f"cannot read the host id from {path}: {exc.strerror} ({hint})") from None
    try:
        return parse_uuid(text)
    except ValueError:
        raise UserError(f"{path} does not hold a host id (found '{text[:40]}')") from None


@command(host_app, "list")
def host_list(s: Session) -> None:
    """List hosts and whether their agent is alive."""
    crud.list_objects(s, "/hosts", HOST_COLUMNS, empty="no hosts (no agent has registered)")


@command(host_app, "show")
def host_show(s: Session, host_id: IdArg) -> None:
    """Show one host."""
    crud.show_object(s, f"/hosts/{seg(object_id(host_id))}")


@command(host_app, "delete")
def host_delete(s: Session, host_id: IdArg) -> None:
    """Forget a dead host: its ports are unbound, it leaves its tunnel zones."""
    hid = object_id(host_id)
    crud.delete_object(s, f"/hosts/{seg(hid)}", f"host {hid}")


@command(host_app, "bindings")
def host_bindings(s: Session, host_id: IdArg) -> None:
    """List the ports bound to interfaces of a host."""
    path = f"/hosts/{seg(object_id(host_id))}/ports"
    crud.list_objects(s, path, BINDING_COLUMNS, empty="no bindings")


@command(bind_app, "bind", panel=BINDING_PANEL)
def bind(
    s: Session,
    port_id: PortArg,
    interface: Annotated[str, typer.Argument(metavar="IFNAME", show_default=False)],
    host: BindHost = None,
) -> None:
    """Bind a virtual port to a local interface (e.g. a VM's tap or veth)."""
    pid = object_id(port_id, "PORT_ID")
    ifname = convert_one("IFNAME", interface, parse_ifname)
    host_id = convert("--host", host, parse_uuid) or local_host_id()
    answer = s.api.post(f"/hosts/{seg(host_id)}/ports", {"port_id": pid, "interface_name": ifname})
    s.out.done(f"bound port {pid} to {ifname} on host {host_id}", answer)


@command(unbind_app, "unbind", panel=BINDING_PANEL)
def unbind(s: Session, port_id: PortArg, host: UnbindHost = None) -> None:
    """Undo a port's binding (on the host it is bound to, unless --host says)."""
    pid = object_id(port_id, "PORT_ID")
    host_id = convert("--host", host, parse_uuid)
    if host_id is None:
        port = s.api.get(f"/ports/{seg(pid)}")
        host_id = port.get("host_id") if isinstance(port, dict) else None
        if not host_id:
            raise UserError(f"port {pid} is not bound to any host")
    answer = s.api.delete(f"/hosts/{seg(host_id)}/ports/{seg(pid)}")
    s.out.done(f"unbound port {pid} from host {host_id}", answer)


@command(host_app, "report")
def host_report(
    s: Session,
    host: BindHost = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The provider's name (default: hostname).")
    ] = None,
    vcpus: Annotated[
        int | None, typer.Option("--vcpus", min=1, help="Default: this machine's.")
    ] = None,
    ram: Annotated[
        int | None, typer.Option("--ram", min=1, metavar="MB", help="Default: this machine's.")
    ] = None,
    disk: Annotated[
        int | None, typer.Option("--disk", min=1, metavar="GB", help="Default: this machine's /.")
    ] = None,
    trait: Annotated[
        list[str] | None,
        typer.Option("--trait", metavar="TRAIT", help="A trait (repeat), e.g. HW_NIC_SRIOV."),
    ] = None,
) -> None:
    """Register this host with placement and write its inventory (docs/placement.md)."""
    import socket

    from tessera.placement.report import local_inventory, report

    host_id = convert_one("--host", host, parse_uuid) if host else local_host_id()
    inventory = local_inventory()
    for key, value in (("VCPU", vcpus), ("MEMORY_MB", ram), ("DISK_GB", disk)):
        if value is not None:
            inventory[key] = {"total": value}
    s.out.obj(report(s.api, host_id, name or socket.gethostname(), inventory, trait or ()))
