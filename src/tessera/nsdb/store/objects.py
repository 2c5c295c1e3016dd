"""Creating and updating topology objects inside a transaction: what each kind adds to
the generic reference checks (a port's device and tunnel key, a route's next hop, a
rule's place in its chain, a DHCP subnet's identity)."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

from tessera.model import Bridge, Chain, DhcpSubnet, Host, Port, Route, Router, Rule, StoredObject
from tessera.model.devices import router_port_mac
from tessera.model.types import network_of
from tessera.nsdb.codec import describe
from tessera.nsdb.errors import AlreadyExists, IntegrityError, NotFound
from tessera.nsdb.indexes import DEVICE_PORTS
from tessera.nsdb.store import load_balancers
from tessera.nsdb.store.connections import Binding, bind
from tessera.nsdb.store.integrity import FIXED_FIELDS, check_refs, replace, server_owned
from tessera.nsdb.store.transaction import Transaction

T = TypeVar("T", bound=StoredObject)

# uuid5 namespace of DHCP subnet ids: a subnet's id is a function of (bridge, prefix), so
# creating the same subnet twice collides on the id inside the NSDB itself.
_DHCP_NAMESPACE = uuid.UUID("3b0f8f6e-5d0c-4c3e-9a57-0d1c8a6f2e11")
_DEVICE_OF_TYPE: dict[str, type[Bridge] | type[Router]] = {"Bridge": Bridge, "Router": Router}


def dhcp_subnet_id(bridge_id: str, prefix: str, length: int) -> str:
    return str(uuid.uuid5(_DHCP_NAMESPACE, f"{bridge_id}/{prefix}/{length}"))


def parse_subnet_key(key: str) -> tuple[str, int] | None:
    """`10.0.0.0_24` → ("10.0.0.0", 24); None if `key` names no subnet."""
    prefix, sep, length = key.partition("_")
    if not sep or not length.isdigit():
        return None
    try:
        net = ipaddress.IPv4Network(f"{prefix}/{int(length)}")
    except ValueError:
        return None
    return str(net.network_address), net.prefixlen


def with_position(rule: Rule, chain: Chain | None) -> Rule:
    """The rule as clients see it: `position` is its 1-based index in the chain."""
    position = chain.rule_ids.index(rule.id) + 1 if chain and rule.id in chain.rule_ids else 0
    return rule.model_copy(update={"position": position})


def _defaults(cls: type[StoredObject], fields: frozenset[str]) -> dict[str, Any]:
    return {f: cls.model_fields[f].get_default(call_default_factory=True) for f in fields}


# -- create ---------------------------------------------------------------------------


def create(
    tx: Transaction, obj: StoredObject, tunnel_key: int = 0, bind_to: Binding | None = None
) -> StoredObject:
    """Write a new object; returns it as clients see it.

    Server-owned fields are reset: a client may send them back as GET shows them, but a
    non-empty member list is refused rather than silently dropped. A new port may be
    bound in the same transaction (`bind_to`), exactly as `connections.bind` would."""
    if isinstance(obj, Host):
        raise IntegrityError("hosts are registered by their agents, not created")
    given_id = "id" in obj.model_fields_set
    owned = server_owned(type(obj))
    _refuse_members(obj, owned)
    obj = replace(obj, **_defaults(type(obj), owned))
    presented: StoredObject
    if isinstance(obj, Port):
        obj = presented = _new_port(tx, obj, tunnel_key)
    elif isinstance(obj, Route):
        _check_next_hop(tx, obj)
        presented = obj
    elif isinstance(obj, Rule):
        presented = _insert_rule(tx, obj)
        obj = presented.model_copy(update={"position": 0})
    elif isinstance(obj, DhcpSubnet):
        obj = presented = _dhcp_identity(tx, obj, given_id)
    else:
        presented = obj
    check_refs(tx, obj, None)
    load_balancers.check(tx, obj)
    tx.create(obj)
    if bind_to is not None:
        if not isinstance(obj, Port):
            raise TypeError(f"only a port can be bound, not {describe(obj.kind, obj.id)}")
        if tx.find(Host.kind, bind_to.host_id) is None:  # named in the body: 400, not 404
            raise IntegrityError(f"host_id: no host {bind_to.host_id} exists")
        bind(tx, bind_to.host_id, obj.id, bind_to.interface_name)
        presented = presented.model_copy(
            update={"host_id": bind_to.host_id, "interface_name": bind_to.interface_name}
        )
    return presented


def _refuse_members(obj: StoredObject, owned: frozenset[str]) -> None:
    for field in sorted(owned):
        default = type(obj).model_fields[field].get_default(call_default_factory=True)
        if isinstance(default, list) and getattr(obj, field):
            raise IntegrityError(
                f"{field}: members are added through their own operation once the object "
                "exists; send it empty or leave it out"
            )


def _new_port(tx: Transaction, port: Port, tunnel_key: int) -> Port:
    device = tx.get(_DEVICE_OF_TYPE[port.type], port.device_id)
    if port.vlan_id is not None:
        for other in tx.indexed(Port, DEVICE_PORTS, device.id):
            if other.type == port.type and other.vlan_id == port.vlan_id:
                raise AlreadyExists(
                    f"bridge {device.id} already has port {other.id} for VLAN {port.vlan_id}"
                )
    changes: dict[str, Any] = {"tunnel_key": tunnel_key}
    if port.type == "Router" and port.port_mac is None:
        changes["port_mac"] = router_port_mac(tunnel_key)
    port = port.model_copy(update=changes)
    if port.type == "Router":
        _check_router_port(tx, port)
    return port


def _check_router_port(tx: Transaction, port: Port) -> None:
    """A router port's MAC is unique in the cluster, and its subnet overlaps no other
    port's of the same router (the router could not tell which port owns an address).

    The MAC check reads every port (router port MACs may be given explicitly; an
    index of MACs would make it as cheap as the VLAN and binding checks, which read
    only the device's or host's ports).
    Creates on one router serialise on the router, which `check_refs` touches, so the
    subnet check and a MAC clash within one router hold even between racing API
    servers; two ports given one explicit MAC on two routers at the same instant are
    not serialised (there is nothing to touch when no clash exists yet)."""
    assert port.port_mac is not None and port.network_length is not None
    net = network_of(port.port_address or "", port.network_length)
    for other in tx.all_of(Port):
        if other.type != "Router" or other.id == port.id:
            continue
        other_mac = other.port_mac or router_port_mac(other.tunnel_key)
        if other_mac == port.port_mac:
            raise AlreadyExists(
                f"port_mac {port.port_mac} is already the MAC of port {other.id} of router "
                f"{other.device_id}; router port MACs are unique in the cluster"
            )
        if other.device_id != port.device_id or other.network_length is None:
            continue
        other_net = network_of(other.port_address or "", other.network_length)
        if net.overlaps(other_net):
            raise AlreadyExists(
                f"router {port.device_id} already has port {other.id} in {other_net}, which "
                f"overlaps {net}; a router has at most one port in a subnet"
            )


def _check_next_hop(tx: Transaction, route: Route) -> None:
    router = tx.get(Router, route.router_id)
    if route.next_hop_port is None:
        return
    port = tx.find("ports", route.next_hop_port)
    if not isinstance(port, Port):
        raise IntegrityError(f"next_hop_port: no port {route.next_hop_port} exists")
    if port.device_id != router.id or port.type != "Router":
        raise IntegrityError(
            f"next_hop_port {port.id} is a port of {port.type.lower()} {port.device_id}, "
            f"not of router {router.id}"
        )


def _insert_rule(tx: Transaction, rule: Rule) -> Rule:
    chain = tx.get(Chain, rule.chain_id)
    ids = list(chain.rule_ids)
    position = rule.position or len(ids) + 1
    _check_position(chain, position, len(ids) + 1)
    ids.insert(position - 1, rule.id)
    tx.put(chain.model_copy(update={"rule_ids": ids}))
    return rule.model_copy(update={"position": position})


def _check_position(chain: Chain, position: int, last: int) -> None:
    if position > last:
        count = len(chain.rule_ids)
        raise IntegrityError(
            f"position {position} is beyond the end of chain {chain.id}, which has "
            f"{count} rule{'s' if count != 1 else ''} (the largest valid position is {last})"
        )


def _dhcp_identity(tx: Transaction, subnet: DhcpSubnet, given_id: bool) -> DhcpSubnet:
    tx.get(Bridge, subnet.bridge_id)
    derived = dhcp_subnet_id(subnet.bridge_id, subnet.subnet_prefix, subnet.subnet_length)
    if given_id and subnet.id != derived:
        raise IntegrityError(
            "id: a DHCP subnet's id is derived from its bridge and prefix; leave it out"
        )
    if tx.find(DhcpSubnet.kind, derived) is not None:
        raise AlreadyExists(f"bridge {subnet.bridge_id} already has DHCP subnet {subnet.key}")
    # Serialised on the bridge (touched by `check_refs`), like the id collision above.
    for other in tx.all_of(DhcpSubnet):
        if other.bridge_id == subnet.bridge_id and other.network.overlaps(subnet.network):
            raise AlreadyExists(
                f"bridge {subnet.bridge_id} already has DHCP subnet {other.key}, which "
                f"overlaps {subnet.network}; a bridge serves each address from one subnet"
            )
    return subnet.model_copy(update={"id": derived})


# -- update ---------------------------------------------------------------------------


def update(tx: Transaction, cls: type[T], id: str, fields: Mapping[str, Any]) -> StoredObject:
    """PUT semantics: `fields` (what the client sent) replace the writable fields, the
    writable fields not sent go back to their defaults; read-only fields keep their
    stored values whatever was sent; fields fixed at creation may be sent only
    unchanged. Returns the object as clients see it."""
    old = tx.get(cls, id)
    kind = cls.kind
    stored = old.model_dump()
    keep = set(cls.read_only) | FIXED_FIELDS.get(kind, frozenset())
    data: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        if name in keep:
            data[name] = stored[name]
        elif name in fields:
            data[name] = fields[name]
        else:
            data[name] = info.get_default(call_default_factory=True)
    new = cls.model_validate(data)
    _check_fixed(cls, old, stored, fields)
    presented: StoredObject = new
    if isinstance(new, Route):
        _check_next_hop(tx, new)
    elif isinstance(new, Rule):
        presented = _move_rule(tx, new, fields.get("position") or 0)
        new = new.model_copy(update={"position": 0})
    check_refs(tx, new, old)
    load_balancers.check(tx, new)
    tx.put(new)
    return presented


def _check_fixed(
    cls: type[StoredObject], old: StoredObject, stored: dict[str, Any], fields: Mapping[str, Any]
) -> None:
    sent = {f: fields[f] for f in FIXED_FIELDS.get(cls.kind, frozenset()) if f in fields}
    if not sent:
        return
    candidate = cls.model_validate({**stored, **sent})  # normalises what was sent
    for name in sorted(sent):
        if getattr(candidate, name) != getattr(old, name):
            raise IntegrityError(
                f"{name} of {describe(cls.kind, old.id)} cannot be changed "
                f"(it is {getattr(old, name)!r}); delete and re-create it instead"
            )


def _move_rule(tx: Transaction, rule: Rule, wanted: int) -> Rule:
    chain = tx.get(Chain, rule.chain_id)
    ids = list(chain.rule_ids)
    if rule.id not in ids:
        raise NotFound(f"{describe('rules', rule.id)} is not in chain {chain.id}")
    current = ids.index(rule.id) + 1
    if wanted and wanted != current:
        _check_position(chain, wanted, len(ids))
        ids.remove(rule.id)
        ids.insert(wanted - 1, rule.id)
        tx.put(chain.model_copy(update={"rule_ids": ids}))
        current = wanted
    return rule.model_copy(update={"position": current})
