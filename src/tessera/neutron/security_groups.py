"""Neutron security groups and rules ⇄ tessera groups and chains (docs/security-groups.md).

Each write is one NSDB transaction that writes the Neutron object with its tessera form:

- a security group is an IP address group (its members' addresses), a port group (its
  members) and two chains of `accept` rules, `sg-<id>-ingress` and `sg-<id>-egress`;
- a rule is one `accept` in the chain of its direction;
- a port with port security has three chains of its own: its outbound filter (towards
  the VM: return flows, ARP, a jump to each group's ingress chain, drop), its inbound
  filter (from the VM: a jump to its anti-spoofing chain, return flows, ARP, a jump to
  each group's egress chain, drop) and the anti-spoofing chain (a `return` for each of
  its own MAC + address pairs, fixed IPs and allowed address pairs, then a drop of any
  other IPv4). `apply_port` and `remove_port` are the hooks `ports` calls.

Every project gets a group named `default` the first time it needs one (a port with
port security and no groups given, or a listing by that project), with Neutron's
default rules: any IPv4 out, any IPv4 in from the group's own members.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable
from typing import Any

from tessera.model import Chain, IpAddrGroup, Port, PortGroup, Rule
from tessera.model.neutron import NeutronPort, NeutronSecurityGroup, NeutronSecurityGroupRule
from tessera.model.types import PortRange, new_id
from tessera.neutron import values
from tessera.neutron.errors import bad_request, conflict, not_found
from tessera.neutron.networks import now
from tessera.nsdb.base import Nsdb
from tessera.nsdb.errors import AlreadyExists
from tessera.nsdb.store.integrity import cascade_delete, check_refs
from tessera.nsdb.store.objects import create as create_object
from tessera.nsdb.store.transaction import Transaction, run

DEFAULT_NAME = "default"
CREATE_ATTRS = frozenset({"name", "description", "project_id", "tenant_id", "tags", "stateful"})
UPDATE_ATTRS = frozenset({"name", "description", "stateful"})
READ_ONLY = frozenset({"id", "project_id", "tenant_id", "security_group_rules"})
RULE_ATTRS = frozenset(
    {
        "security_group_id", "direction", "ethertype", "protocol", "port_range_min",
        "port_range_max", "remote_ip_prefix", "remote_group_id", "description",
        "project_id", "tenant_id",
    }
)  # fmt: skip
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "sctp": 132, "any": None}
_PORTED = (6, 17, 132)
IPV4 = 0x0800
ARP = 0x0806
PORT_CHAIN_PREFIX = "neutron-port-"
_DEFAULT_NAMESPACE = uuid.UUID("5d1f3c2e-7a4b-4e0f-9c1d-2b6a8e4f0a17")


# -- lookups and views ------------------------------------------------------------------


def get_group(tx: Transaction, id: str) -> NeutronSecurityGroup:
    sg = tx.find(NeutronSecurityGroup.kind, id)
    if not isinstance(sg, NeutronSecurityGroup):
        raise not_found("SecurityGroupNotFound", f"Security group {id} does not exist")
    return sg


def get_rule(tx: Transaction, id: str) -> NeutronSecurityGroupRule:
    rule = tx.find(NeutronSecurityGroupRule.kind, id)
    if not isinstance(rule, NeutronSecurityGroupRule):
        raise not_found("SecurityGroupRuleNotFound", f"Security group rule {id} does not exist")
    return rule


def _common(obj: NeutronSecurityGroup | NeutronSecurityGroupRule) -> dict[str, Any]:
    return {
        "id": obj.id,
        "description": obj.description,
        "project_id": obj.project_id,
        "tenant_id": obj.project_id,
        "revision_number": obj.revision_number,
        "created_at": obj.created_at,
        "updated_at": obj.updated_at,
    }


def rule_view(rule: NeutronSecurityGroupRule) -> dict[str, Any]:
    return {
        **_common(rule),
        "security_group_id": rule.security_group_id,
        "direction": rule.direction,
        "ethertype": rule.ethertype,
        "protocol": rule.protocol,
        "port_range_min": rule.port_range_min,
        "port_range_max": rule.port_range_max,
        "remote_ip_prefix": rule.remote_ip_prefix,
        "remote_group_id": rule.remote_group_id,
        "remote_address_group_id": None,
        "normalized_cidr": rule.remote_ip_prefix,
        "tessera:rule_id": rule.rule_id,
    }


def group_view(tx: Transaction, sg: NeutronSecurityGroup) -> dict[str, Any]:
    rules = [tx.find(NeutronSecurityGroupRule.kind, r) for r in sg.rule_ids]
    return {
        **_common(sg),
        "name": sg.name,
        "tags": list(sg.tags),
        "stateful": sg.stateful,
        "shared": False,
        "security_group_rules": [
            rule_view(r) for r in rules if isinstance(r, NeutronSecurityGroupRule)
        ],
        "tessera:ip_addr_group_id": sg.ip_addr_group_id,
        "tessera:port_group_id": sg.port_group_id,
        "tessera:ingress_chain_id": sg.ingress_chain_id,
        "tessera:egress_chain_id": sg.egress_chain_id,
    }


# -- groups -------------------------------------------------------------------------------


def default_group_id(project: str) -> str:
    """The id of a project's default group, derived from the project: two requests that
    both make it write the same id, and the commit of the second fails (`AlreadyExists`)
    instead of leaving the project with two default groups."""
    return str(uuid.uuid5(_DEFAULT_NAMESPACE, project))


def _new_group(
    tx: Transaction,
    name: str,
    description: str,
    project: str,
    tags: list[str],
    stateful: bool,
    id: str | None = None,
) -> NeutronSecurityGroup:
    """The group and its tessera form (no rules yet)."""
    id = id or new_id()
    stamp = now()
    tenant = project or None
    ips = IpAddrGroup(id=new_id(), name=f"sg-{id}")
    members = PortGroup(id=new_id(), name=f"sg-{id}", tenant_id=tenant)
    ingress = Chain(id=new_id(), name=f"sg-{id}-ingress", tenant_id=tenant)
    egress = Chain(id=new_id(), name=f"sg-{id}-egress", tenant_id=tenant)
    for obj in (ips, members, ingress, egress):
        create_object(tx, obj)
    sg = NeutronSecurityGroup(
        id=id,
        name=name,
        description=description,
        project_id=project,
        tags=tags,
        stateful=stateful,
        created_at=stamp,
        updated_at=stamp,
        ip_addr_group_id=ips.id,
        port_group_id=members.id,
        ingress_chain_id=ingress.id,
        egress_chain_id=egress.id,
    )
    check_refs(tx, sg, None)
    tx.create(sg)
    return sg


def default_group(tx: Transaction, project: str) -> NeutronSecurityGroup:
    """The project's `default` group, made with Neutron's default rules if it has none."""
    for sg in tx.all_of(NeutronSecurityGroup):
        if sg.project_id == project and sg.name == DEFAULT_NAME:
            return sg
    sg = _new_group(
        tx, DEFAULT_NAME, "Default security group", project, [], True, default_group_id(project)
    )
    sg = _add_rule(tx, sg, "egress", None, None, None, None, None, "", project)
    return _add_rule(tx, sg, "ingress", None, None, None, None, sg.id, "", project)


def ensure_default(nsdb: Nsdb, project: str | None) -> None:
    """Give `project` its default group before a listing, as Neutron does (without
    Keystone, a request naming no project is project "", as the objects it creates)."""
    project = project or ""
    tx = Transaction(nsdb)
    if any(
        sg.project_id == project and sg.name == DEFAULT_NAME
        for sg in tx.all_of(NeutronSecurityGroup)
    ):
        return
    try:
        run(
            nsdb,
            f"creating the default security group of {project}",
            lambda t: default_group(t, project),
        )
    except AlreadyExists:
        pass  # a concurrent request made it (same id): what this one wanted


def create(nsdb: Nsdb, body: dict[str, Any], project_header: str | None) -> dict[str, Any]:
    return run(nsdb, "creating a security group", creator(nsdb, body, project_header))


def creator(
    nsdb: Nsdb, body: dict[str, Any], project_header: str | None
) -> Callable[[Transaction], dict[str, Any]]:
    values.refuse_unknown(body, CREATE_ATTRS)
    name = values.text("name", body.get("name") or "")
    description = values.text("description", body.get("description") or "")
    stateful = values.boolean("stateful", body.get("stateful", True))
    project = values.project(body, project_header)
    tags = values.string_list("tags", body.get("tags"))
    if name == DEFAULT_NAME:
        raise conflict(
            "SecurityGroupDefaultAlreadyExists", "Default security group already exists."
        )

    def write(tx: Transaction) -> dict[str, Any]:
        # Neutron makes the project's default group before its first other group.
        default_group(tx, project)
        sg = _new_group(tx, name, description, project, tags, stateful)
        sg = _add_rule(tx, sg, "egress", None, None, None, None, None, "", project)
        return group_view(tx, sg)

    return write


def update(nsdb: Nsdb, id: str, body: dict[str, Any]) -> dict[str, Any]:
    values.refuse_fixed(body, READ_ONLY)
    values.refuse_unknown(body, UPDATE_ATTRS)
    changes: dict[str, Any] = {}
    for name in ("name", "description"):
        if name in body:
            changes[name] = values.text(name, body[name] or "")
    if "stateful" in body:
        changes["stateful"] = values.boolean("stateful", body["stateful"])

    def write(tx: Transaction) -> dict[str, Any]:
        old = get_group(tx, id)
        if old.name == DEFAULT_NAME and changes.get("name", DEFAULT_NAME) != DEFAULT_NAME:
            raise conflict(
                "SecurityGroupCannotUpdateDefault", "Updating default security group not allowed."
            )
        if old.name != DEFAULT_NAME and changes.get("name") == DEFAULT_NAME:
            raise conflict(
                "SecurityGroupDefaultAlreadyExists", "Default security group already exists."
            )
        if changes.get("stateful", old.stateful) != old.stateful and _members(tx, id, {}):
            raise conflict(
                "SecurityGroupInUse", f"Security Group {id} in use, cannot change 'stateful'."
            )
        new = old.model_copy(
            update={**changes, "updated_at": now(), "revision_number": old.revision_number + 1}
        )
        tx.put(NeutronSecurityGroup.model_validate(new.model_dump()))
        return group_view(tx, new)

    return run(nsdb, f"updating security group {id}", write)


def delete(nsdb: Nsdb, id: str) -> None:
    """Refused (409 SecurityGroupInUse) while a port is in it; its rules, and the rules
    of other groups naming it as their remote group, go with it (as in Neutron)."""

    def write(tx: Transaction) -> None:
        sg = get_group(tx, id)
        if any(id in p.security_groups for p in tx.all_of(NeutronPort)):
            raise conflict("SecurityGroupInUse", f"Security Group {id} in use.")
        for rule in tx.all_of(NeutronSecurityGroupRule):
            if rule.remote_group_id == id and rule.security_group_id != id:
                _delete_rule(tx, rule)
        for kind, twin in (
            (IpAddrGroup.kind, sg.ip_addr_group_id),
            (PortGroup.kind, sg.port_group_id),
            (Chain.kind, sg.ingress_chain_id),
            (Chain.kind, sg.egress_chain_id),
        ):
            cascade_delete(tx, kind, twin)
        cascade_delete(tx, NeutronSecurityGroup.kind, id)

    run(nsdb, f"deleting security group {id}", write)


def show(nsdb: Nsdb, id: str) -> dict[str, Any]:
    tx = Transaction(nsdb)
    return group_view(tx, get_group(tx, id))


def listing(nsdb: Nsdb) -> list[dict[str, Any]]:
    tx = Transaction(nsdb)
    return [group_view(tx, sg) for sg in tx.all_of(NeutronSecurityGroup)]


# -- rules --------------------------------------------------------------------------------


def _protocol(raw: Any) -> tuple[str | None, int | None]:
    """Neutron's protocol (a name, a number, or null for any) and its IP protocol."""
    if raw is None:
        return None, None
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        raise bad_request(f"Security group rule protocol {raw!r} not supported.")
    name = raw.lower()
    if name in PROTOCOLS:
        return (None if name == "any" else name), PROTOCOLS[name]
    if name.isdigit() and 0 <= int(name) <= 255:
        return name, int(name)
    raise bad_request(
        f"Security group rule protocol {raw} not supported. Only protocol values "
        f"{sorted(PROTOCOLS)} and integer representations [0 to 255] are supported.",
        "SecurityGroupRuleInvalidProtocol",
    )


def _port(name: str, raw: Any) -> int | None:
    """An integer, checked against its protocol's range later (Neutron's messages)."""
    return None if raw is None else values.integer(name, raw, -(2**31), 2**31)


def _conditions(
    direction: str,
    number: int | None,
    low: int | None,
    high: int | None,
    prefix: str | None,
    remote_ips: str | None,
) -> dict[str, Any]:
    """The tessera rule conditions of a Neutron rule (IPv4 only)."""
    out: dict[str, Any] = {"dl_type": IPV4, "nw_proto": number}
    if number in _PORTED and (low is not None or high is not None):
        out["tp_dst"] = PortRange(start=low if low is not None else 0, end=high or low or 65535)
    elif number == 1 and low is not None:
        # ICMP, as MidoNet translated it: port_range_min is the type, max the code.
        out["tp_src"] = PortRange(start=low, end=low)
        if high is not None:
            out["tp_dst"] = PortRange(start=high, end=high)
    side = "src" if direction == "ingress" else "dst"
    if prefix is not None:
        net = ipaddress.IPv4Network(prefix)
        out[f"nw_{side}_address"] = str(net.network_address)
        out[f"nw_{side}_length"] = net.prefixlen
    if remote_ips is not None:
        out[f"ip_addr_group_{side}"] = remote_ips
    return out


def _add_rule(
    tx: Transaction,
    sg: NeutronSecurityGroup,
    direction: str,
    protocol: str | None,
    low: int | None,
    high: int | None,
    prefix: str | None,
    remote_group_id: str | None,
    description: str,
    project: str,
) -> NeutronSecurityGroup:
    """Write the rule and its twin; returns the group with the rule listed."""
    _, number = _protocol(protocol)
    remote_ips = get_group(tx, remote_group_id).ip_addr_group_id if remote_group_id else None
    chain = sg.ingress_chain_id if direction == "ingress" else sg.egress_chain_id
    twin = Rule(
        id=new_id(),
        chain_id=chain,
        type="accept",
        **_conditions(direction, number, low, high, prefix, remote_ips),
    )
    create_object(tx, twin)
    stamp = now()
    rule = NeutronSecurityGroupRule(
        id=new_id(),
        security_group_id=sg.id,
        rule_id=twin.id,
        direction=direction,  # type: ignore[arg-type]
        protocol=protocol,
        port_range_min=low,
        port_range_max=high,
        remote_ip_prefix=prefix,
        remote_group_id=remote_group_id,
        description=description,
        project_id=project or sg.project_id,
        created_at=stamp,
        updated_at=stamp,
    )
    check_refs(tx, rule, None)
    tx.create(rule)
    new = sg.model_copy(
        update={"rule_ids": [*sg.rule_ids, rule.id], "revision_number": sg.revision_number + 1}
    )
    tx.put(NeutronSecurityGroup.model_validate(new.model_dump()))
    return new


def _delete_rule(tx: Transaction, rule: NeutronSecurityGroupRule) -> None:
    sg = tx.find(NeutronSecurityGroup.kind, rule.security_group_id)
    if isinstance(sg, NeutronSecurityGroup):
        tx.put(
            sg.model_copy(
                update={
                    "rule_ids": [r for r in sg.rule_ids if r != rule.id],
                    "revision_number": sg.revision_number + 1,
                }
            )
        )
    cascade_delete(tx, Rule.kind, rule.rule_id)
    if not tx.is_deleted(NeutronSecurityGroupRule.kind, rule.id):
        cascade_delete(tx, NeutronSecurityGroupRule.kind, rule.id)


class RuleResource:
    """`/v2.0/security-group-rules`: created and deleted, never updated (as in Neutron)."""

    @staticmethod
    def create(nsdb: Nsdb, body: dict[str, Any], project_header: str | None) -> dict[str, Any]:
        return run(
            nsdb, "creating a security group rule", RuleResource.creator(nsdb, body, project_header)
        )

    @staticmethod
    def creator(
        nsdb: Nsdb, body: dict[str, Any], project_header: str | None
    ) -> Callable[[Transaction], dict[str, Any]]:
        values.refuse_unknown(body, RULE_ATTRS)
        for required in ("security_group_id", "direction"):
            if body.get(required) is None:
                raise bad_request(
                    f"Failed to parse request. Required attribute '{required}' not specified"
                )
        sg_id = values.text("security_group_id", body["security_group_id"])
        direction = body["direction"]
        if direction not in ("ingress", "egress"):
            raise bad_request(
                f"Invalid input for direction. Reason: {direction!r} is not in "
                "['ingress', 'egress']."
            )
        ethertype = body.get("ethertype") or "IPv4"
        if ethertype == "IPv6":
            raise bad_request(
                "Invalid input for ethertype. Reason: IPv6 is not supported by tessera."
            )
        if ethertype != "IPv4":
            raise bad_request(
                f"Invalid input for ethertype. Reason: {ethertype!r} is not in ['IPv4', 'IPv6']."
            )
        protocol, number = _protocol(body.get("protocol"))
        low = _port("port_range_min", body.get("port_range_min"))
        high = _port("port_range_max", body.get("port_range_max"))
        if number in _PORTED:
            for v in (low, high):
                if v is not None and not 0 < v <= 65535:
                    raise bad_request(
                        f"Invalid value for port {v}", "SecurityGroupInvalidPortValue"
                    )
            if (low is None) != (high is None) or (
                low is not None and high is not None and low > high
            ):
                raise bad_request(
                    "For TCP/UDP protocols, port_range_min must be <= port_range_max",
                    "SecurityGroupInvalidPortRange",
                )
        elif number == 1:
            for name, v in (("type", low), ("code", high)):
                if v is not None and not 0 <= v <= 255:
                    raise bad_request(
                        f"Invalid value for ICMP {name} {v}", "SecurityGroupInvalidIcmpValue"
                    )
            if low is None and high is not None:
                raise bad_request(
                    "ICMP code (port-range-max) is provided but ICMP type (port-range-min) is "
                    "missing.",
                    "SecurityGroupMissingIcmpType",
                )
        elif low is not None or high is not None:
            raise bad_request(
                "Invalid input: port ranges need protocol tcp, udp, sctp or icmp.",
                "SecurityGroupInvalidPortRange",
            )
        prefix: str | None = None
        if body.get("remote_ip_prefix") is not None:
            prefix = str(values.ipv4_network("remote_ip_prefix", body["remote_ip_prefix"], False))
        remote = body.get("remote_group_id")
        if remote is not None:
            remote = values.text("remote_group_id", remote)
            if prefix is not None:
                raise bad_request(
                    "Only remote_ip_prefix or remote_group_id may be provided.",
                    "SecurityGroupRemoteGroupAndRemoteIpPrefix",
                )
        description = values.text("description", body.get("description") or "")
        project = values.project(body, project_header)

        def write(tx: Transaction) -> dict[str, Any]:
            sg = get_group(tx, sg_id)
            if remote is not None:
                get_group(tx, remote)
            key = (direction, protocol, low, high, prefix, remote)
            for existing in tx.all_of(NeutronSecurityGroupRule):
                if existing.security_group_id == sg_id and key == (
                    existing.direction,
                    existing.protocol,
                    existing.port_range_min,
                    existing.port_range_max,
                    existing.remote_ip_prefix,
                    existing.remote_group_id,
                ):
                    raise conflict(
                        "SecurityGroupRuleExists",
                        f"Security group rule already exists. Rule id is {existing.id}.",
                    )
            new = _add_rule(
                tx, sg, direction, protocol, low, high, prefix, remote, description, project
            )
            made = tx.find(NeutronSecurityGroupRule.kind, new.rule_ids[-1])
            assert isinstance(made, NeutronSecurityGroupRule)
            return rule_view(made)

        return write

    @staticmethod
    def update(nsdb: Nsdb, id: str, body: dict[str, Any]) -> dict[str, Any]:
        get_rule(Transaction(nsdb), id)
        raise bad_request("Security group rules cannot be updated: delete and create one.")

    @staticmethod
    def delete(nsdb: Nsdb, id: str) -> None:
        run(
            nsdb,
            f"deleting security group rule {id}",
            lambda tx: _delete_rule(tx, get_rule(tx, id)),
        )

    @staticmethod
    def show(nsdb: Nsdb, id: str) -> dict[str, Any]:
        return rule_view(get_rule(Transaction(nsdb), id))

    @staticmethod
    def listing(nsdb: Nsdb) -> list[dict[str, Any]]:
        return [rule_view(r) for r in Transaction(nsdb).all_of(NeutronSecurityGroupRule)]


# -- ports (the hooks `ports` calls) ------------------------------------------------------


def port_groups(
    tx: Transaction, project: str, enabled: bool, device_owner: str, given: list[str] | None
) -> list[str]:
    """A new port's groups: those given (each must exist), else the project's default
    group when the port has port security and is not a network-owned port."""
    if given is not None:
        for id in given:
            get_group(tx, id)
        return list(dict.fromkeys(given))
    if not enabled or device_owner.startswith("network:"):
        return []
    return [default_group(tx, project).id]


def _members(
    tx: Transaction, sg_id: str, override: dict[str, NeutronPort | None]
) -> list[NeutronPort]:
    ports = {p.id: p for p in tx.all_of(NeutronPort)}
    ports.update(override)  # type: ignore[arg-type]
    return sorted(
        (
            p
            for p in ports.values()
            if p is not None and p.port_security_enabled and sg_id in p.security_groups
        ),
        key=lambda p: p.id,
    )


def _refresh(tx: Transaction, sg_ids: set[str], override: dict[str, NeutronPort | None]) -> None:
    """Rewrite each group's IP address group and port group from its members."""
    for sg_id in sorted(sg_ids):
        sg = tx.find(NeutronSecurityGroup.kind, sg_id)
        if not isinstance(sg, NeutronSecurityGroup):
            continue
        members = _members(tx, sg_id, override)
        addrs = sorted(
            {f.ip_address for p in members for f in p.fixed_ips},
            key=lambda a: ipaddress.IPv4Address(a),
        )
        ips = tx.get(IpAddrGroup, sg.ip_addr_group_id)
        if list(ips.addrs) != addrs:
            tx.put(ips.model_copy(update={"addrs": addrs}))
        group = tx.get(PortGroup, sg.port_group_id)
        ids = [p.id for p in members]
        if list(group.port_ids) != ids:
            tx.put(group.model_copy(update={"port_ids": ids}))


def _drop_port_chains(tx: Transaction, port_id: str) -> None:
    prefix = f"{PORT_CHAIN_PREFIX}{port_id}-"
    for chain in tx.all_of(Chain):
        if chain.name.startswith(prefix):
            cascade_delete(tx, Chain.kind, chain.id)


def _chain(tx: Transaction, name: str, tenant: str | None, rules: list[dict[str, Any]]) -> str:
    chain = Chain(id=new_id(), name=name, tenant_id=tenant)
    create_object(tx, chain)
    for fields in rules:
        create_object(tx, Rule(id=new_id(), chain_id=chain.id, **fields))
    return chain.id


def _build_port_chains(tx: Transaction, port: NeutronPort) -> tuple[str, str]:
    """The port's (inbound, outbound) filters, per docs/security-groups.md."""
    groups = [get_group(tx, id) for id in port.security_groups]
    tenant = port.project_id or None
    base = f"{PORT_CHAIN_PREFIX}{port.id}-"
    allowed = [(port.mac_address, f"{f.ip_address}/32") for f in port.fixed_ips]
    allowed += [(p.mac_address, p.ip_address) for p in port.allowed_address_pairs]
    spoof_rules: list[dict[str, Any]] = []
    for mac, cidr in allowed:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.version != 4:
            continue
        spoof_rules.append(
            {
                "type": "return",
                "dl_type": IPV4,
                "dl_src": mac,
                "nw_src_address": str(net.network_address),
                "nw_src_length": net.prefixlen,
            }
        )
    spoof_rules.append({"type": "drop", "dl_type": IPV4})
    spoof = _chain(tx, base + "spoofing", tenant, spoof_rules)
    stateful = any(sg.stateful for sg in groups)
    head: list[dict[str, Any]] = [{"type": "accept", "match_return_flow": True}] if stateful else []
    head.append({"type": "accept", "dl_type": ARP})
    inbound = _chain(
        tx,
        base + "from",
        tenant,
        [
            {"type": "jump", "jump_chain_id": spoof},
            *head,
            *({"type": "jump", "jump_chain_id": sg.egress_chain_id} for sg in groups),
            {"type": "drop"},
        ],
    )
    outbound = _chain(
        tx,
        base + "to",
        tenant,
        [
            *head,
            *({"type": "jump", "jump_chain_id": sg.ingress_chain_id} for sg in groups),
            {"type": "drop"},
        ],
    )
    return inbound, outbound


def _security_of(port: NeutronPort) -> tuple[Any, ...]:
    """What a port's chains and memberships are made of."""
    return (
        tuple(port.security_groups),
        tuple((f.subnet_id, f.ip_address) for f in port.fixed_ips),
        tuple((p.ip_address, p.mac_address) for p in port.allowed_address_pairs),
        port.port_security_enabled,
        port.mac_address,
        port.device_owner.startswith("network:"),
        port.project_id,
    )


def apply_port(tx: Transaction, old: NeutronPort | None, new: NeutronPort) -> None:
    """(Re)build the port's filters and group memberships after a create or update (its
    twin port exists in `tx`): chains rebuilt, groups' addresses and members rewritten."""
    for id in new.security_groups:
        get_group(tx, id)
    if old is not None and _security_of(old) == _security_of(new):
        return  # a name, a binding...: the chains stay as they are (no flow is redone)
    _drop_port_chains(tx, new.id)
    twin = tx.get(Port, new.tessera_port_id)
    inbound: str | None = None
    outbound: str | None = None
    if new.port_security_enabled and not new.device_owner.startswith("network:"):
        inbound, outbound = _build_port_chains(tx, new)
    if (twin.inbound_filter_id, twin.outbound_filter_id) != (inbound, outbound):
        tx.put(
            twin.model_copy(update={"inbound_filter_id": inbound, "outbound_filter_id": outbound})
        )
    affected = set(new.security_groups) | set(old.security_groups if old else [])
    _refresh(tx, affected, {new.id: new})


def remove_port(tx: Transaction, port: NeutronPort) -> None:
    """Undo `apply_port` before the port is deleted."""
    _drop_port_chains(tx, port.id)
    _refresh(tx, set(port.security_groups), {port.id: None})
