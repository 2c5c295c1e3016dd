"""Running a filter chain: rules in position order, jumps and returns, MidoNet's verdicts.

`accept`, `drop` and `reject` end the evaluation; `return` leaves the current chain (at
the top level it accepts); `continue` goes on to the next rule; `jump` evaluates another
chain and goes on after the jump unless that chain decided. Falling off the end of a
chain is a return. A chain that jumps, directly or not, into itself ends in a drop: the
rules are contradictory and letting the packet through would be guessing.

NAT rules (`dnat`, `snat`, `rev_dnat`, `rev_snat`) rewrite the packet's match, which
everything after them sees (routing after DNAT uses the new destination), then act as
their `flow_action` says: accept, continue or return. A `dnat`/`snat` that does not
apply to the packet (not TCP, UDP or ICMP echo) is passed over like a rule that did not
match; one that finds no free source drops the packet. The NAT state is keyed by the
device owning the chain (`device`).
"""

from __future__ import annotations

from typing import Literal

from tessera.packet.match import FlowMatch
from tessera.simulation import stateful
from tessera.simulation.context import Simulation
from tessera.simulation.result import TraceNode
from tessera.simulation.topology import ChainSnap

ChainVerdict = Literal["accept", "drop", "reject"]

_TERMINAL = frozenset({"accept", "drop", "reject"})
_FORWARD_NAT = frozenset({"dnat", "snat"})
_REVERSE_NAT = frozenset({"rev_dnat", "rev_snat"})


def apply_chain(
    sim: Simulation,
    chain_id: str,
    m: FlowMatch,
    in_port: str,
    out_port: str | None,
    node: TraceNode | None,
    label: str,
    device: str,
) -> ChainVerdict:
    """The verdict of the filter `chain_id` of `device` (a bridge, router or port's
    device) for a packet entering by `in_port` (and, for an outbound filter, leaving by
    `out_port`)."""
    chain = sim.snap.chain(chain_id)
    cnode = None
    if node is not None:
        cnode = node.add("chain", chain.id, f"{label} chain {chain.name or chain.id}")
    verdict = _run(sim, chain, m, in_port, out_port, cnode, (chain.id,), device)
    final: ChainVerdict = "accept" if verdict == "return" else verdict  # type: ignore[assignment]
    if cnode is not None:
        cnode.text += f": {final}"
    return final


def _run(
    sim: Simulation,
    chain: ChainSnap,
    m: FlowMatch,
    in_port: str,
    out_port: str | None,
    node: TraceNode | None,
    stack: tuple[str, ...],
    device: str,
) -> str:
    sim.tags |= chain.tags
    rules = chain.rules
    start = 0
    while True:
        if node is None:
            i = chain.first_match(m, in_port, out_port, start, sim.forward)
        else:
            i = _first_match_traced(sim, chain, m, in_port, out_port, start, node)
        if i < 0:
            return "return"
        rule = rules[i]
        action = rule.action
        if action in _TERMINAL or action == "return":
            return action
        start = i + 1
        rnode = node.children[-1] if node is not None else None
        if action in _FORWARD_NAT:
            applied = stateful.nat(sim, m, rule, device, rnode)
            if applied is None:
                return "drop"
            if applied and rule.flow_action != "continue":
                return "accept" if rule.flow_action == "accept" else "return"
            continue
        if action in _REVERSE_NAT:
            stateful.reverse_nat(sim, m, rule, device, rnode)
            if rule.flow_action != "continue":
                return "accept" if rule.flow_action == "accept" else "return"
            continue
        if action == "jump":
            assert rule.jump_chain_id is not None
            target = sim.snap.chain(rule.jump_chain_id)
            tnode = None
            if rnode is not None:
                tnode = rnode.add("chain", target.id, f"jump to chain {target.name or target.id}")
            if target.id in stack:
                sim.tags |= target.tags
                if tnode is not None:
                    tnode.text += ": jump loop, the chain is already being evaluated"
                return "drop"
            verdict = _run(sim, target, m, in_port, out_port, tnode, (*stack, target.id), device)
            if tnode is not None:
                tnode.text += f": {verdict}"
            if verdict != "return":
                return verdict
        # "continue", or a jump whose chain returned: on to the next rule


def _first_match_traced(
    sim: Simulation,
    chain: ChainSnap,
    m: FlowMatch,
    in_port: str,
    out_port: str | None,
    start: int,
    node: TraceNode,
) -> int:
    """`first_match`, rule by rule, writing each verdict (and the connection tracking
    decision, where a rule asks for it) into the trace."""
    rules = chain.rules
    for i in range(start, len(rules)):
        rule = rules[i]
        rnode = node.add("rule", rule.id, f"#{rule.position} {rule.action} if {rule.summary}")

        def ct(rnode: TraceNode = rnode) -> bool:
            return stateful.is_forward(sim, rnode)

        matched = rule.matches(m, in_port, out_port, ct)
        rnode.text += ": match" if matched else ": no match"
        if matched:
            return i
    return -1
