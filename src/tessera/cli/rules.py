"""`tessera rule ...`: firewall and NAT rules of a chain, every condition an option.

Options mirror the API's condition fields (`nw_src_address`+`nw_src_length` become
`--nw-src 10.0.0.0/24`, `tp_dst` becomes `--tp-dst 80:90`), and each `inv_*` field is a
flag (`--inv-nw-src`). On `update`, `none` clears a condition (`--tp-dst none`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from tessera.cli import crud
from tessera.cli.devices import new_id, object_id
from tessera.cli.options import IdArg, NewId
from tessera.cli.rule_text import rule_action, rule_match
from tessera.client.errors import BadArgument
from tessera.client.rest import seg
from tessera.clikit.commands import command, option, option_group, sub_app
from tessera.clikit.output import Column, id_column
from tessera.clikit.params import (
    CLEAR_WORDS,
    Clear,
    convert,
    convert_clearable,
    convert_many,
    parse_choice,
    parse_cidr,
    parse_dl_type,
    parse_int,
    parse_mac,
    parse_nat_target,
    parse_nw_proto,
    parse_port_range,
    parse_uuid,
)
from tessera.clikit.session import Session

RULE_TYPES = (
    "accept", "drop", "reject", "return", "jump", "continue",
    "dnat", "snat", "rev_dnat", "rev_snat",
)  # fmt: skip
FLOW_ACTIONS = ("accept", "continue", "return")
FRAGMENT_POLICIES = ("any", "header", "nonheader", "unfragmented")

_PORTS = "Port conditions"
_L2 = "L2 conditions"
_L3 = "L3/L4 conditions"
_FLOW = "Connection conditions"
_ACTION = "Action"

RULE_OPTIONS = [
    option("position", "--position", metavar="N", help="1-based place in the chain "
           "(create: insert there, default last).", panel=_ACTION),
    option("jump_chain", "--jump-chain-id", metavar="CHAIN_ID",
           help="Chain a jump rule jumps to.", panel=_ACTION),
    option("nat_targets", "--nat-target", metavar="ADDR[-ADDR][:PORT[-PORT]]", multiple=True,
           help="dnat/snat target (repeatable; 'none' clears).", panel=_ACTION),
    option("flow_action", "--flow-action", metavar="ACTION",
           help="After NAT: accept (default), continue or return.", panel=_ACTION),
    option("in_ports", "--in-ports", metavar="PORT_ID[,..]", multiple=True,
           help="Ingress ports (repeatable or comma-separated).", panel=_PORTS),
    option("inv_in_ports", "--inv-in-ports/--no-inv-in-ports", flag=True,
           help="Match ports NOT listed.", panel=_PORTS),
    option("out_ports", "--out-ports", metavar="PORT_ID[,..]", multiple=True,
           help="Egress ports.", panel=_PORTS),
    option("inv_out_ports", "--inv-out-ports/--no-inv-out-ports", flag=True,
           help="Match ports NOT listed.", panel=_PORTS),
    option("port_group", "--port-group", metavar="GROUP_ID",
           help="Port in this port group.", panel=_PORTS),
    option("inv_port_group", "--inv-port-group/--no-inv-port-group", flag=True,
           help="Port NOT in the group.", panel=_PORTS),
    option("dl_type", "--dl-type", metavar="ETHERTYPE",
           help="0x0800, 2048, ipv4, arp, ipv6, vlan.", panel=_L2),
    option("inv_dl_type", "--inv-dl-type/--no-inv-dl-type", flag=True, help="Invert.",
           panel=_L2),
    option("dl_src", "--dl-src", metavar="MAC", help="Source MAC.", panel=_L2),
    option("dl_src_mask", "--dl-src-mask", metavar="MAC", help="Bits of --dl-src to test.",
           panel=_L2),
    option("inv_dl_src", "--inv-dl-src/--no-inv-dl-src", flag=True, help="Invert.", panel=_L2),
    option("dl_dst", "--dl-dst", metavar="MAC", help="Destination MAC.", panel=_L2),
    option("dl_dst_mask", "--dl-dst-mask", metavar="MAC", help="Bits of --dl-dst to test.",
           panel=_L2),
    option("inv_dl_dst", "--inv-dl-dst/--no-inv-dl-dst", flag=True, help="Invert.", panel=_L2),
    option("nw_src", "--nw-src", metavar="ADDR[/LEN]", help="Source network.", panel=_L3),
    option("inv_nw_src", "--inv-nw-src/--no-inv-nw-src", flag=True, help="Invert.", panel=_L3),
    option("nw_dst", "--nw-dst", metavar="ADDR[/LEN]", help="Destination network.", panel=_L3),
    option("inv_nw_dst", "--inv-nw-dst/--no-inv-nw-dst", flag=True, help="Invert.", panel=_L3),
    option("ip_addr_group_src", "--ip-addr-group-src", metavar="GROUP_ID",
           help="Source address in this IP address group.", panel=_L3),
    option("ip_addr_group_dst", "--ip-addr-group-dst", metavar="GROUP_ID",
           help="Destination address in this IP address group.", panel=_L3),
    option("nw_proto", "--nw-proto", metavar="PROTO", help="tcp, udp, icmp or a number.",
           panel=_L3),
    option("inv_nw_proto", "--inv-nw-proto/--no-inv-nw-proto", flag=True, help="Invert.",
           panel=_L3),
    option("tp_src", "--tp-src", metavar="PORT[:END]", help="Source port or range.",
           panel=_L3),
    option("inv_tp_src", "--inv-tp-src/--no-inv-tp-src", flag=True, help="Invert.", panel=_L3),
    option("tp_dst", "--tp-dst", metavar="PORT[:END]", help="Destination port or range.",
           panel=_L3),
    option("inv_tp_dst", "--inv-tp-dst/--no-inv-tp-dst", flag=True, help="Invert.", panel=_L3),
    option("fragment_policy", "--fragment-policy", metavar="POLICY",
           help="any, header, nonheader, unfragmented.", panel=_L3),
    option("match_forward_flow", "--match-forward-flow/--no-match-forward-flow", flag=True,
           help="Only the direction that opened the connection.", panel=_FLOW),
    option("match_return_flow", "--match-return-flow/--no-match-return-flow", flag=True,
           help="Only replies of a connection opened the other way.", panel=_FLOW),
]  # fmt: skip

_FLAGS = [
    "inv_in_ports", "inv_out_ports", "inv_port_group", "inv_dl_type", "inv_dl_src",
    "inv_dl_dst", "inv_nw_src", "inv_nw_dst", "inv_nw_proto", "inv_tp_src", "inv_tp_dst",
    "match_forward_flow", "match_return_flow",
]  # fmt: skip


def _id_list(option_name: str, raws: list[str] | None) -> list[str] | None:
    if raws is None:
        return None
    if any(r.strip().lower() in CLEAR_WORDS for r in raws):
        return []
    return convert_many(option_name, raws, parse_uuid)


def _network(option_name: str, raw: str | None, prefix: str) -> dict[str, Any]:
    cidr = convert_clearable(option_name, raw, parse_cidr)
    if cidr is None:
        return {}
    if isinstance(cidr, Clear):
        return {f"{prefix}_address": None, f"{prefix}_length": None}
    return {f"{prefix}_address": cidr.address, f"{prefix}_length": cidr.length}


def rule_fields(o: Mapping[str, Any]) -> dict[str, Any]:
    """The API fields the given options set (only those given)."""
    nat: list[Any] | None = None
    if o["nat_targets"] is not None:
        clear = any(r.strip().lower() in CLEAR_WORDS for r in o["nat_targets"])
        nat = [] if clear else convert_many("--nat-target", o["nat_targets"], parse_nat_target)
    fields = crud.body(
        position=convert("--position", o["position"], parse_int(1, 1 << 31)),
        jump_chain_id=convert_clearable("--jump-chain-id", o["jump_chain"], parse_uuid),
        nat_targets=nat,
        flow_action=convert_clearable(
            "--flow-action", o["flow_action"], parse_choice(FLOW_ACTIONS)
        ),
        in_ports=_id_list("--in-ports", o["in_ports"]),
        out_ports=_id_list("--out-ports", o["out_ports"]),
        port_group=convert_clearable("--port-group", o["port_group"], parse_uuid),
        ip_addr_group_src=convert_clearable(
            "--ip-addr-group-src", o["ip_addr_group_src"], parse_uuid
        ),
        ip_addr_group_dst=convert_clearable(
            "--ip-addr-group-dst", o["ip_addr_group_dst"], parse_uuid
        ),
        dl_type=convert_clearable("--dl-type", o["dl_type"], parse_dl_type),
        dl_src=convert_clearable("--dl-src", o["dl_src"], parse_mac),
        dl_src_mask=convert_clearable("--dl-src-mask", o["dl_src_mask"], parse_mac),
        dl_dst=convert_clearable("--dl-dst", o["dl_dst"], parse_mac),
        dl_dst_mask=convert_clearable("--dl-dst-mask", o["dl_dst_mask"], parse_mac),
        nw_proto=convert_clearable("--nw-proto", o["nw_proto"], parse_nw_proto),
        tp_src=convert_clearable("--tp-src", o["tp_src"], parse_port_range),
        tp_dst=convert_clearable("--tp-dst", o["tp_dst"], parse_port_range),
        fragment_policy=convert_clearable(
            "--fragment-policy", o["fragment_policy"], parse_choice(FRAGMENT_POLICIES)
        ),
        **{flag: o[flag] for flag in _FLAGS},
    )
    fields.update(_network("--nw-src", o["nw_src"], "nw_src"))
    fields.update(_network("--nw-dst", o["nw_dst"], "nw_dst"))
    return fields


def _position(row: Mapping[str, Any]) -> str:
    return str(row.get("position", "-"))


RULE_COLUMNS: list[Column] = [
    Column("pos", _position),
    id_column(),
    Column("action", rule_action),
    Column("match", rule_match),
]

rule_app = sub_app("Rules of a chain: conditions and an action, evaluated by position.")

ChainArg = Annotated[str, typer.Argument(metavar="CHAIN_ID", show_default=False)]
RuleType = Annotated[
    str | None,
    typer.Option("--type", metavar="TYPE", help=f"One of: {', '.join(RULE_TYPES)}."),
]


@command(rule_app, "list")
def rule_list(s: Session, chain_id: ChainArg) -> None:
    """List a chain's rules in evaluation order."""
    path = f"/chains/{seg(object_id(chain_id, 'CHAIN_ID'))}/rules"
    crud.list_objects(s, path, RULE_COLUMNS, empty="no rules")


@command(rule_app, "show")
def rule_show(s: Session, rule_id: IdArg) -> None:
    """Show one rule with every field."""
    crud.show_object(s, f"/rules/{seg(object_id(rule_id))}")


@command(rule_app, "create")
@option_group("conditions", RULE_OPTIONS)
def rule_create(
    s: Session,
    chain_id: ChainArg,
    rule_type: RuleType = None,
    id: NewId = None,
    conditions: dict[str, Any] | None = None,
) -> None:
    """Add a rule: --type drop --nw-src 10.0.0.0/24 --tp-dst 22 ..."""
    cid = object_id(chain_id, "CHAIN_ID")
    kind = convert("--type", rule_type, parse_choice(RULE_TYPES))
    if kind is None:
        raise BadArgument(f"a rule needs --type ({', '.join(RULE_TYPES)})")
    fields = rule_fields(conditions or {})
    if kind == "jump" and not fields.get("jump_chain_id"):
        raise BadArgument("a jump rule needs --jump-chain-id CHAIN_ID")
    if kind in ("dnat", "snat") and not fields.get("nat_targets"):
        raise BadArgument(f"a {kind} rule needs --nat-target ADDR[-ADDR][:PORT[-PORT]]")
    body = {**crud.body(id=new_id(id)), "type": kind, **fields}
    crud.create_object(s, f"/chains/{seg(cid)}/rules", body)


@command(rule_app, "update")
@option_group("conditions", RULE_OPTIONS)
def rule_update(
    s: Session,
    rule_id: IdArg,
    rule_type: RuleType = None,
    conditions: dict[str, Any] | None = None,
) -> None:
    """Change a rule's action or conditions ('none' clears one: --tp-dst none)."""
    changes = {
        **crud.body(type=convert("--type", rule_type, parse_choice(RULE_TYPES))),
        **rule_fields(conditions or {}),
    }
    crud.update_object(s, f"/rules/{seg(object_id(rule_id))}", changes)


@command(rule_app, "delete")
def rule_delete(s: Session, rule_id: IdArg) -> None:
    """Delete a rule (later rules move up one position)."""
    rid = object_id(rule_id)
    crud.delete_object(s, f"/rules/{seg(rid)}", f"rule {rid}")
