"""A rule in one line of text, for `tessera rule list`: what it matches and what it does.

The notation reads like the options that set it (`nw_src=10.0.0.0/24 tp_dst!=80-90`), so
what a user typed and what the CLI shows look alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tessera.clikit.output import port_range

Row = Mapping[str, Any]


def _eq(row: Row, inv_field: str | None) -> str:
    return "!=" if inv_field and row.get(inv_field) else "="


def _ids(value: Any) -> str:
    return ",".join(str(v) for v in value)


def rule_match(row: Row) -> str:
    """The rule's conditions; `any` when it has none."""
    parts: list[str] = []
    for name, inv in (("in_ports", "inv_in_ports"), ("out_ports", "inv_out_ports")):
        if row.get(name):
            parts.append(f"{name}{_eq(row, inv)}{_ids(row[name])}")
    if row.get("port_group"):
        parts.append(f"port_group{_eq(row, 'inv_port_group')}{row['port_group']}")
    for name in ("ip_addr_group_src", "ip_addr_group_dst"):
        if row.get(name):
            parts.append(f"{name}={row[name]}")
    if row.get("dl_type") is not None:
        parts.append(f"dl_type{_eq(row, 'inv_dl_type')}0x{int(row['dl_type']):04x}")
    for name in ("dl_src", "dl_dst"):
        if row.get(name):
            mask = row.get(f"{name}_mask")
            value = f"{row[name]}/{mask}" if mask else str(row[name])
            parts.append(f"{name}{_eq(row, 'inv_' + name)}{value}")
    for name in ("nw_src", "nw_dst"):
        addr = row.get(f"{name}_address")
        if addr is not None:
            length = row.get(f"{name}_length")
            parts.append(
                f"{name}{_eq(row, 'inv_' + name)}{addr}/{32 if length is None else length}"
            )
    if row.get("nw_proto") is not None:
        parts.append(f"nw_proto{_eq(row, 'inv_nw_proto')}{row['nw_proto']}")
    for name in ("tp_src", "tp_dst"):
        prange = row.get(name)
        if isinstance(prange, Mapping):
            parts.append(f"{name}{_eq(row, 'inv_' + name)}{port_range(prange)}")
    if row.get("match_forward_flow"):
        parts.append("forward_flow")
    if row.get("match_return_flow"):
        parts.append("return_flow")
    policy = row.get("fragment_policy")
    has_tp = row.get("tp_src") is not None or row.get("tp_dst") is not None
    if policy not in (None, "any") and not (policy == "header" and has_tp):
        parts.append(f"fragments={policy}")
    return " ".join(parts) or "any"


def nat_target(target: Row) -> str:
    """`10.0.0.1-10.0.0.9:1024-65535`, shortened where a range is one value."""
    addr_from, addr_to = target.get("address_from"), target.get("address_to")
    text = str(addr_from) if addr_from == addr_to else f"{addr_from}-{addr_to}"
    port_from, port_to = target.get("port_from") or 0, target.get("port_to") or 0
    if port_from or port_to:
        text += f":{port_from}" if port_from == port_to else f":{port_from}-{port_to}"
    return text


def rule_action(row: Row) -> str:
    """The rule's type with its argument: the chain jumped to, the NAT targets."""
    kind = str(row.get("type"))
    if kind == "jump":
        return f"jump {row.get('jump_chain_id')}"
    text = kind
    targets = row.get("nat_targets") or []
    if targets:
        text += " " + ",".join(nat_target(t) for t in targets)
    flow_action = row.get("flow_action")
    if flow_action and flow_action != "accept":
        text += f" then {flow_action}"
    return text
