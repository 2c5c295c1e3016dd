"""Rules compiled once into Python code, conditions in MidoNet's order.

A rule is a conjunction: its conditions are tested in order and the first that fails
ends the rule. Each reads its fields through the `FlowMatch` getters, so a rule that did
not match puts into the mask exactly the fields that decided it did not — which is what
keeps a cached flow correct for every packet it covers.

Only the conditions a rule sets are tested; an unset condition costs nothing. The
`inv_*` flags flip their own condition and are ignored when the condition is unset, as
in MidoNet. Each rule becomes one Python expression (`and` short-circuits exactly like
the conjunction), compiled into a function per rule (used when tracing) and, for the
whole chain, into one `first_match` function that finds the first matching rule without
a call per rule or per condition: chains are most of a simulation's work. Generated code
holds only integer literals and names bound to precomputed constants, never text from
the topology.

Connection tracking conditions (`match_forward_flow`, `match_return_flow`) come last in
a rule, so that the connection key (the packet's 5-tuple) is read only when every other
condition held: they call `ct()`, the simulation's answer to "is this a forward flow?"
(see `stateful.py`). NAT rules carry their targets compiled (`nat`) and their
`flow_action`; `chain.py` applies them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

from tessera.model import Conditions, Rule
from tessera.packet.addr import ip_from_str, mac_from_str, prefix_mask
from tessera.packet.ethernet import ETH_TYPE_ARP, ETH_TYPE_IPV4
from tessera.packet.ipv4 import PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP
from tessera.packet.match import FlowMatch
from tessera.simulation.errors import NotYetLoaded
from tessera.simulation.flowstate import NatRange

ForwardFn = Callable[[], bool]
"""ct() -> whether the packet is a forward flow (connection tracking, see `stateful`)."""
RuleFn = Callable[[FlowMatch, str, "str | None", ForwardFn], bool]
"""matches(match, in_port, out_port, ct) -> whether every condition of the rule holds."""
FirstMatchFn = Callable[[FlowMatch, str, "str | None", int, ForwardFn], int]
"""first_match(match, in_port, out_port, start, ct) -> index of the first rule at or
after `start` that matches, or -1."""

_L3_TYPES = frozenset({ETH_TYPE_IPV4, ETH_TYPE_ARP})
_PORT_PROTOS = frozenset({PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_ICMP})
_MAC_ALL = 0xFFFF_FFFF_FFFF
_FRAG_LATER = 2

# Network conditions hold only for packets that have those headers: an IPv6 packet has no
# IPv4 source, so "ip_src in 0.0.0.0/0" is false for it and its inverse true. ARP counts
# as L3, with its sender/target addresses and opcode (as MidoNet's FlowMatch has it).
# Transport conditions need TCP/UDP/SCTP/ICMP headers in an unfragmented packet or a
# first fragment.
_L3 = "@L3@"
_TP = "@TP@"
_L3_EXPR = "m.eth_type in _L3_TYPES"
_TP_EXPR = (
    f"m.eth_type == {ETH_TYPE_IPV4} and m.ip_proto in _PORT_PROTOS and m.ip_frag != {_FRAG_LATER}"
)
_FIELD = re.compile(r"\bm\.([a-z_]+)")
_FRAGMENT_EXPR = {
    "header": f"m.ip_frag != {_FRAG_LATER}",  # unfragmented or first: carries the L4 header
    "nonheader": f"m.ip_frag == {_FRAG_LATER}",
    "unfragmented": "m.ip_frag == 0",
}


def _not_loaded(kind: str, id: str) -> bool:
    raise NotYetLoaded(kind, id)


class _Unset:
    """Marks a packet field not read yet by the generated function."""


_UNSET = _Unset()


def _function(name: str, params: str, body: list[str], fields: Iterable[str]) -> list[str]:
    """Source of a function whose expressions read each packet field at most once.

    The first use of a field calls its getter (which puts it in the mask) exactly where
    a plain `m.field` would have; later uses take the local copy, the field being in the
    mask already. Cheaper than a getter per use, and the mask is the same. `fields`: the
    fields the body's expressions read (`_fields`).
    """
    names = [f"v_{f}" for f in sorted(fields)] + ["l3", "tp"]
    return [f"def {name}({params}, _U=_UNSET):", f"    {' = '.join(names)} = _U", *body]


def _fields(expression: str) -> frozenset[str]:
    return frozenset(_FIELD.findall(expression.replace(_L3, _L3_EXPR).replace(_TP, _TP_EXPR)))


def _cached(expression: str) -> str:
    expression = expression.replace(_L3, f"(l3 if l3 is not _U else (l3 := {_L3_EXPR}))")
    expression = expression.replace(_TP, f"(tp if tp is not _U else (tp := {_TP_EXPR}))")
    return _FIELD.sub(
        lambda f: f"(v_{f[1]} if v_{f[1]} is not _U else (v_{f[1]} := m.{f[1]}))", expression
    )


_BASE_NAMESPACE: dict[str, Any] = {
    "_L3_TYPES": _L3_TYPES,
    "_PORT_PROTOS": _PORT_PROTOS,
    "_not_loaded": _not_loaded,
    "_UNSET": _UNSET,
}


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    chain_id: str
    position: int
    action: str  # the rule's type
    jump_chain_id: str | None
    expression: str  # Python; names are keys of `constants`
    constants: Mapping[str, object]
    group_tags: tuple[str, ...]
    summary: str  # the conditions, for humans
    nat: tuple[NatRange, ...] = ()  # dnat/snat targets
    flow_action: str | None = None  # NAT rules: what follows the translation
    # The rule's own function, compiled on first use: only traces test rules one by one.
    _fn: list[RuleFn] = field(default_factory=list, compare=False, repr=False)
    # Not `_inline`: mypyc would name it `__inline`, a C compiler keyword.
    _inline_src: list[tuple[str, frozenset[str]]] = field(
        default_factory=list, compare=False, repr=False
    )

    def inline(self) -> tuple[str, frozenset[str]]:
        """The expression reading each field once (`_cached`) and the fields it reads,
        made once per rule: a chain recompiled after a change regenerates its blocks'
        source."""
        if not self._inline_src:
            self._inline_src.append((_cached(self.expression), _fields(self.expression)))
        return self._inline_src[0]

    def matches(self, m: FlowMatch, in_port: str, out_port: str | None, ct: ForwardFn) -> bool:
        if not self._fn:
            namespace = {**_BASE_NAMESPACE, **self.constants}
            text, fields = self.inline()
            body = [f"    return bool({text})"]
            source = _function("_matches", "m, in_port, out_port, ct", body, fields)
            exec("\n".join(source) + "\n", namespace)  # integers and constant names only
            self._fn.append(namespace["_matches"])
        return self._fn[0](m, in_port, out_port, ct)


class _Expr:
    """Accumulates one rule's conditions as Python source plus the constants it names."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.parts: list[str] = []
        self.constants: dict[str, object] = {}

    def const(self, value: object) -> str:
        name = f"{self.prefix}{len(self.constants)}"
        self.constants[name] = value
        return name

    def l3(self) -> str:
        return _L3

    def tp(self) -> str:
        return _TP

    def add(self, test: str, inv: bool = False) -> None:
        self.parts.append(f"(not ({test}))" if inv else f"({test})")

    def source(self) -> str:
        return " and ".join(self.parts) or "True"


def compile_rule(
    rule: Rule,
    position: int,
    port_groups: Mapping[str, frozenset[str]],
    ip_groups: Mapping[str, frozenset[int]],
) -> CompiledRule:
    e = _Expr(f"_r{position}_")
    words: list[str] = []
    group_tags: list[str] = []
    _add_conditions(rule, e, words, group_tags, port_groups, ip_groups)
    nat = tuple(
        NatRange(ip_from_str(t.address_from), ip_from_str(t.address_to), t.port_from, t.port_to)
        for t in rule.nat_targets
    )
    return CompiledRule(
        id=rule.id,
        chain_id=rule.chain_id,
        position=position,
        action=rule.type,
        jump_chain_id=rule.jump_chain_id,
        expression=e.source(),
        constants=e.constants,
        group_tags=tuple(group_tags),
        summary=" and ".join(words) or "any packet",
        nat=nat,
        flow_action=rule.flow_action,
    )


def compile_conditions(
    conditions: Conditions,
    owner_id: str,
    position: int,
    port_groups: Mapping[str, frozenset[str]],
    ip_groups: Mapping[str, frozenset[int]],
) -> CompiledRule:
    """Conditions that are not a rule's (a mirror's): compiled the same way, as a
    rule of `owner_id` with no action of its own (`action` "match")."""
    e = _Expr(f"_r{position}_")
    words: list[str] = []
    group_tags: list[str] = []
    _add_conditions(conditions, e, words, group_tags, port_groups, ip_groups)
    return CompiledRule(
        id=f"{owner_id}#{position}",
        chain_id=owner_id,
        position=position,
        action="match",
        jump_chain_id=None,
        expression=e.source(),
        constants=e.constants,
        group_tags=tuple(group_tags),
        summary=" and ".join(words) or "any packet",
    )


def _add_conditions(
    rule: Conditions,
    e: _Expr,
    words: list[str],
    group_tags: list[str],
    port_groups: Mapping[str, frozenset[str]],
    ip_groups: Mapping[str, frozenset[int]],
) -> None:
    def neg(inv: bool) -> str:
        return "not " if inv else ""

    # `in_port` is the ingress port of the device whose chain runs. The simulation's own
    # ingress port is always in the mask (the driver reads it first); ports reached
    # inside the topology follow from fields already read.
    if rule.in_ports:
        e.add(f"in_port in {e.const(frozenset(rule.in_ports))}", rule.inv_in_ports)
        words.append(f"in_port {neg(rule.inv_in_ports)}in {sorted(rule.in_ports)}")
    if rule.out_ports:
        e.add(f"out_port in {e.const(frozenset(rule.out_ports))}", rule.inv_out_ports)
        words.append(f"out_port {neg(rule.inv_out_ports)}in {sorted(rule.out_ports)}")
    if rule.port_group is not None:
        pg = rule.port_group
        group_tags.append(pg)
        members = port_groups.get(pg)
        if members is None:
            e.add(f"_not_loaded('port_group', {e.const(pg)})")
        else:
            e.add(f"in_port in {e.const(members)}", rule.inv_port_group)
        words.append(f"in_port {neg(rule.inv_port_group)}in port group {pg}")
    for group, fname in ((rule.ip_addr_group_src, "ip_src"), (rule.ip_addr_group_dst, "ip_dst")):
        if group is None:
            continue
        group_tags.append(group)
        addrs = ip_groups.get(group)
        if addrs is None:
            e.add(f"_not_loaded('ip_addr_group', {e.const(group)})")
        else:
            e.add(f"{e.l3()} and m.{fname} in {e.const(addrs)}")
        words.append(f"{fname} in address group {group}")
    if rule.dl_type is not None:
        e.add(f"m.eth_type == {int(rule.dl_type)}", rule.inv_dl_type)
        words.append(f"eth_type {'!=' if rule.inv_dl_type else '=='} {rule.dl_type:#06x}")
    for fname, value, mask_text, inv in (
        ("eth_src", rule.dl_src, rule.dl_src_mask, rule.inv_dl_src),
        ("eth_dst", rule.dl_dst, rule.dl_dst_mask, rule.inv_dl_dst),
    ):
        if value is None:
            continue
        mask = mac_from_str(mask_text) if mask_text else _MAC_ALL
        want = mac_from_str(value) & mask
        if mask == _MAC_ALL:
            e.add(f"m.{fname} == {want}", inv)
        else:
            e.add(f"m.{fname} & {mask} == {want}", inv)
        words.append(f"{fname} {neg(inv)}{value}" + (f"/{mask_text}" if mask_text else ""))
    if rule.nw_proto is not None:
        e.add(f"{e.l3()} and m.ip_proto == {int(rule.nw_proto)}", rule.inv_nw_proto)
        words.append(f"ip_proto {'!=' if rule.inv_nw_proto else '=='} {rule.nw_proto}")
    for fname, addr, length, inv in (
        ("ip_src", rule.nw_src_address, rule.nw_src_length, rule.inv_nw_src),
        ("ip_dst", rule.nw_dst_address, rule.nw_dst_length, rule.inv_nw_dst),
    ):
        if addr is None:
            continue
        length = 32 if length is None else length
        mask = prefix_mask(length)
        net = ip_from_str(addr) & mask
        if length == 0:
            e.add(e.l3(), inv)
        elif length == 32:
            e.add(f"{e.l3()} and m.{fname} == {net}", inv)
        else:
            e.add(f"{e.l3()} and m.{fname} & {mask} == {net}", inv)
        words.append(f"{fname} {neg(inv)}in {addr}/{length}")
    policy = rule.fragment_policy or "any"
    if policy != "any":
        e.add(_FRAGMENT_EXPR[policy])
        words.append(f"fragments: {policy}")
    for fname, rng, inv in (
        ("tp_src", rule.tp_src, rule.inv_tp_src),
        ("tp_dst", rule.tp_dst, rule.inv_tp_dst),
    ):
        if rng is None:
            continue
        if rng.start == rng.end:
            test = f"m.{fname} == {int(rng.start)}"
        else:
            test = f"{int(rng.start)} <= m.{fname} <= {int(rng.end)}"
        e.add(f"{e.tp()} and {test}", inv)
        words.append(f"{fname} {neg(inv)}in {rng.start}-{rng.end}")

    if rule.match_forward_flow:
        e.add("ct()")
        words.append("forward flow")
    elif rule.match_return_flow:
        e.add("not ct()")
        words.append("return flow")


BLOCK_RULES = 32
"""Rules per generated function. Python compiles a long function in time that grows
with it (300 rules: ~40 ms), and a chain is recompiled on every change to it: in blocks,
a change recompiles only the blocks whose source changed (adding a rule at the end: the
last one), the others' code is taken from the chain's previous compilation."""


@dataclass(frozen=True, slots=True)
class _Block:
    source: str
    code: CodeType


def compile_first_match(
    rules: Sequence[CompiledRule], previous: FirstMatchFn | None = None
) -> FirstMatchFn:
    """One function testing the chain's rules in order. `previous`: the function this
    chain had, whose blocks' code is reused where the source is unchanged."""
    reuse = {b.source: b.code for b in getattr(previous, _BLOCKS_ATTR, ())}
    blocks: list[_Block] = []
    fns: list[tuple[int, int, FirstMatchFn]] = []
    for offset in range(0, max(len(rules), 1), BLOCK_RULES):
        part = rules[offset : offset + BLOCK_RULES]
        source = _block_source(part)
        code = reuse.get(source) or compile(source, "<chain rules>", "exec")
        namespace = dict(_BASE_NAMESPACE)
        for rule in part:
            namespace.update(rule.constants)
        exec(code, namespace)  # see the module doc
        blocks.append(_Block(source, code))
        fns.append((offset, offset + len(part), namespace["_first_match"]))
    fn = fns[0][2] if len(fns) == 1 else _chained(tuple(fns))
    setattr(fn, _BLOCKS_ATTR, tuple(blocks))  # the function's own: read back as `previous`
    return fn


_BLOCKS_ATTR = "_tessera_blocks"


def _block_source(rules: Sequence[CompiledRule]) -> str:
    """A block's function: indexes are the block's own, so that a block holding the
    same rules at the same positions has the same source."""
    body: list[str] = []
    fields: set[str] = set()
    for i, rule in enumerate(rules):
        text, read = rule.inline()
        fields |= read
        body.append(f"    if start <= {i} and ({text}):")
        body.append(f"        return {i}")
    body.append("    return -1")
    params = "m, in_port, out_port, start, ct"
    return "\n".join(_function("_first_match", params, body, fields)) + "\n"


def _chained(blocks: tuple[tuple[int, int, FirstMatchFn], ...]) -> FirstMatchFn:
    """first_match over blocks in order (each reads its own fields again: a field
    read twice is in the mask once)."""

    def first_match(
        m: FlowMatch, in_port: str, out_port: str | None, start: int, ct: ForwardFn
    ) -> int:
        for offset, end, block in blocks:
            if start < end:
                i = block(m, in_port, out_port, start - offset, ct)
                if i >= 0:
                    return offset + i
        return -1

    return first_match
