"""Links (interior ports joined to a peer) and bindings (exterior ports bound to an
interface on a host): the two ways a port gets connected, mutually exclusive."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tessera.model import Host, Port
from tessera.nsdb.errors import AlreadyExists, IntegrityError, NotFound
from tessera.nsdb.indexes import HOST_PORTS
from tessera.nsdb.store.transaction import Transaction

# What Linux accepts as an interface name: 1-15 bytes, no '/', ':' or whitespace, and
# not '.' or '..'.
_IFNAME_RE = re.compile(r"^[^/:\s]{1,15}$")


@dataclass(frozen=True)
class Binding:
    host_id: str
    port_id: str
    interface_name: str


def check_interface_name(name: str) -> None:
    if not _IFNAME_RE.match(name) or name in (".", "..") or len(name.encode()) > 15:
        raise IntegrityError(
            f"interface_name: '{name}' is not a valid Linux interface name "
            "(1-15 characters, no '/', ':' or spaces)"
        )


def _port_ref(tx: Transaction, field: str, id: str) -> Port:
    port = tx.find(Port.kind, id)
    if not isinstance(port, Port):
        raise IntegrityError(f"{field}: no port {id} exists")
    return port


def link(tx: Transaction, port_id: str, peer_id: str) -> Port:
    port = tx.get(Port, port_id)
    if peer_id == port_id:
        raise IntegrityError("peer_id: a port cannot be linked to itself")
    peer = _port_ref(tx, "peer_id", peer_id)
    if port.peer_id == peer.id and peer.peer_id == port.id:
        return port  # already exactly this link
    if port.device_id == peer.device_id and port.type == peer.type:
        raise IntegrityError(
            f"peer_id: ports {port.id} and {peer.id} both belong to "
            f"{port.type.lower()} {port.device_id}; link ports of two different devices"
        )
    for p in (port, peer):
        if p.peer_id is not None:
            raise AlreadyExists(
                f"port {p.id} is already linked to port {p.peer_id}; unlink it first"
            )
        if p.host_id is not None:
            raise AlreadyExists(
                f"port {p.id} is bound to {p.interface_name} on host {p.host_id}; "
                "unbind it first (a port is either bound or linked)"
            )
    linked = port.model_copy(update={"peer_id": peer.id})
    tx.put(linked)
    tx.put(peer.model_copy(update={"peer_id": port.id}))
    return linked


def unlink(tx: Transaction, port_id: str) -> Port:
    """Idempotent: unlinking an unlinked port changes nothing."""
    port = tx.get(Port, port_id)
    if port.peer_id is None:
        return port
    peer = tx.find(Port.kind, port.peer_id)
    if isinstance(peer, Port) and peer.peer_id == port.id:
        tx.put(peer.model_copy(update={"peer_id": None}))
    unlinked = port.model_copy(update={"peer_id": None})
    tx.put(unlinked)
    return unlinked


def bind(tx: Transaction, host_id: str, port_id: str, interface_name: str) -> Binding:
    """Bind (or re-bind: a bound port moves) a port to an interface of a host."""
    check_interface_name(interface_name)
    host = tx.get(Host, host_id)
    port = _port_ref(tx, "port_id", port_id)
    if port.peer_id is not None:
        raise AlreadyExists(
            f"port {port.id} is linked to port {port.peer_id}; unlink it first "
            "(a port is either bound or linked)"
        )
    binding = Binding(host.id, port.id, interface_name)
    if port.host_id == host.id and port.interface_name == interface_name:
        return binding
    for other in tx.indexed(Port, HOST_PORTS, host.id):
        if other.id != port.id and other.interface_name == interface_name:
            raise AlreadyExists(
                f"interface {interface_name} on host {host.id} is already bound to port {other.id}"
            )
    tx.put(port.model_copy(update={"host_id": host.id, "interface_name": interface_name}))
    tx.touch(Host.kind, host.id)  # serialises binds on one host (interface uniqueness)
    return binding


def unbind(tx: Transaction, host_id: str, port_id: str) -> None:
    tx.get(Host, host_id)
    port = tx.find(Port.kind, port_id)
    if not isinstance(port, Port) or port.host_id != host_id:
        raise NotFound(f"port {port_id} is not bound on host {host_id}")
    tx.put(port.model_copy(update={"host_id": None, "interface_name": None}))


def bindings(tx: Transaction, host_id: str) -> list[Binding]:
    tx.get(Host, host_id)
    return sorted(
        (
            Binding(host_id, p.id, p.interface_name)
            for p in tx.indexed(Port, HOST_PORTS, host_id)
            if p.interface_name is not None
        ),
        key=lambda b: (b.interface_name, b.port_id),
    )
