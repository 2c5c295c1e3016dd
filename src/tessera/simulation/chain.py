"""Running a filter chain: rules in position order, jumps and returns, MidoNet's verdicts.

`accept`, `drop` and `reject` end the evaluation; `return` leaves the current chain (at
the top level it accepts); `continue` goes on to the next rule; `jump` evaluates another
chain and goes on after the jump unless that chain decided. Falling off the end of a
chain is a return. A chain that jumps, directly or not, into itself ends in a drop: the
rules are contradictory and letting the packet through would be guessing.
"""

from __future__ import annotations

from typing import Literal

from tessera.packet.match import FlowMatch
from tessera.simulation.context import Simulation
from tessera.simulation.result import TraceNode
from tessera.simulation.topology import ChainSnap

ChainVerdict = Literal["accept", "drop", "reject"]

_TERMINAL = frozenset({"accept", "drop", "reject"})


def apply_chain(
    sim: Simulation,
    chain_id: str,
    m: FlowMatch,
    in_port: str,
    out_port: str | None,
    node: TraceNode | None,
    label: str,
) -> ChainVerdict:
    """The verdict of the filter `chain_id` for a packet entering by `in_port` (and, for
    an outbound filter, leaving by `out_port`)."""
    chain = sim.snap.chain(chain_id)
    cnode = None
    if node is not None:
        cnode = node.add("chain", chain.id, f"{label} chain {chain.name or chain.id}")
    verdict = _run(sim, chain, m, in_port, out_port, cnode, (chain.id,))
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
) -> str:
    sim.tags |= chain.tags
    rules = chain.rules
    start = 0
    while True:
        if node is None:
            i = chain.first_match(m, in_port, out_port, start)
            if chain.skipped:
                _note_skipped(sim, chain, start, i)
        else:
            i = _first_match_traced(sim, chain, m, in_port, out_port, start, node)
        if i < 0:
            return "return"
        rule = rules[i]
        action = rule.action
        if action in _TERMINAL or action == "return":
            return action
        start = i + 1
        if action == "jump":
            assert rule.jump_chain_id is not None
            target = sim.snap.chain(rule.jump_chain_id)
            tnode = None
            if node is not None:
                tnode = node.children[-1].add(
                    "chain", target.id, f"jump to chain {target.name or target.id}"
                )
            if target.id in stack:
                sim.tags |= target.tags
                if tnode is not None:
                    tnode.text += ": jump loop, the chain is already being evaluated"
                return "drop"
            verdict = _run(sim, target, m, in_port, out_port, tnode, (*stack, target.id))
            if tnode is not None:
                tnode.text += f": {verdict}"
            if verdict != "return":
                return verdict
        # "continue", or a jump whose chain returned: on to the next rule


def _note_skipped(sim: Simulation, chain: ChainSnap, start: int, end: int) -> None:
    """Report the skipped rules the evaluation went past (all of them if none matched)."""
    for index, note in chain.skipped:
        if index >= start and (end < 0 or index < end) and note not in sim.unsupported:
            sim.unsupported.append(note)


def _first_match_traced(
    sim: Simulation,
    chain: ChainSnap,
    m: FlowMatch,
    in_port: str,
    out_port: str | None,
    start: int,
    node: TraceNode,
) -> int:
    """`first_match`, rule by rule, writing each verdict into the trace."""
    rules = chain.rules
    for i in range(start, len(rules)):
        rule = rules[i]
        if rule.unsupported is not None:
            note = f"{rule.id}: {rule.unsupported}"
            if note not in sim.unsupported:
                sim.unsupported.append(note)
            node.add(
                "rule", rule.id, f"#{rule.position} {rule.action}: skipped, {rule.unsupported}"
            )
            continue
        matched = rule.matches(m, in_port, out_port)
        verdict = "match" if matched else "no match"
        node.add("rule", rule.id, f"#{rule.position} {rule.action} if {rule.summary}: {verdict}")
        if matched:
            return i
    return -1
