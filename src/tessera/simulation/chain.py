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

Cost. A jump evaluates its chain for the packet as it is; chains that jump several times
into the same chain would make the work grow as (jumps per chain) ** (depth), so an
evaluation without side effect is remembered for the run and a jump that asks the same
question again gets the answer without testing a rule (`_jump`); the trace says so in
one line instead of repeating the subtree. What is still tested counts against the run's
`MAX_RULES_EVALUATED`, and chains nest at most `MAX_CHAIN_DEPTH` deep; past either the
packet is dropped (`LimitExceeded`, see `context.py`).
"""

from __future__ import annotations

from typing import Literal

from tessera.packet.match import ALL_FIELDS, Field, FlowMatch
from tessera.simulation import stateful
from tessera.simulation.context import MAX_CHAIN_DEPTH, ChainMemo, LimitExceeded, Simulation
from tessera.simulation.result import TraceNode
from tessera.simulation.topology import ChainSnap

ChainVerdict = Literal["accept", "drop", "reject"]

_TERMINAL = frozenset({"accept", "drop", "reject"})
_FORWARD_NAT = frozenset({"dnat", "snat"})
_REVERSE_NAT = frozenset({"rev_dnat", "rev_snat"})
_NO_CHAINS: frozenset[str] = frozenset()
_ALL_FIELDS = int(ALL_FIELDS)

MEMOISE = True
"""Answer a chain jumped into again for the same packet from the run's memo (`_jump`).
Only tests switch it off, to check that the memo changes the cost and nothing else."""


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
    verdict = _run(sim, chain, m, in_port, out_port, cnode, (chain.id,), device)[0]
    final: ChainVerdict = "accept" if verdict == "return" else verdict  # type: ignore[assignment]
    if cnode is not None:
        cnode.text += f": {final}"
    return final


_Outcome = tuple[str, bool, frozenset[str], int]
"""What evaluating a chain decided, and what a memo of it must know: (verdict; pure: no
NAT rule acted and no jump loop was met, here or deeper; the chains it jumped into,
directly or not, kept while pure; the deepest nesting it reached, its own chain
counted). A plain tuple: one is made per chain evaluated, on every packet's path."""


def _run(
    sim: Simulation,
    chain: ChainSnap,
    m: FlowMatch,
    in_port: str,
    out_port: str | None,
    node: TraceNode | None,
    stack: tuple[str, ...],
    device: str,
) -> _Outcome:
    sim.tags |= chain.tags
    rules = chain.rules
    budget = sim.budget
    start = 0
    pure = True
    visited = _NO_CHAINS
    height = 1
    while True:
        rnode = None
        if node is None:
            i = chain.first_match(m, in_port, out_port, start, sim.forward)
            budget[1] -= (i + 1 if i >= 0 else len(rules)) - start  # `Simulation.count_rules`
            if budget[1] < 0:
                sim.count_rules(0)  # raises
        else:
            i, rnode = _first_match_traced(sim, chain, m, in_port, out_port, start, node)
        if i < 0:
            return "return", pure, visited, height
        rule = rules[i]
        action = rule.action
        if action in _TERMINAL or action == "return":
            return action, pure, visited, height
        start = i + 1
        if action in _FORWARD_NAT:
            pure = False
            applied = stateful.nat(sim, m, rule, device, rnode)
            if applied is None:
                return "drop", False, visited, height
            if applied and rule.flow_action != "continue":
                verdict = "accept" if rule.flow_action == "accept" else "return"
                return verdict, False, visited, height
            continue
        if action in _REVERSE_NAT:
            pure = False
            stateful.reverse_nat(sim, m, rule, device, rnode)
            if rule.flow_action != "continue":
                verdict = "accept" if rule.flow_action == "accept" else "return"
                return verdict, False, visited, height
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
                return "drop", False, visited, height
            verdict, sub_pure, sub_visited, sub_height = _jump(
                sim, target, m, in_port, out_port, tnode, stack, device
            )
            if pure and sub_pure:
                visited = visited | sub_visited | {target.id}
            else:
                pure = False
            if sub_height >= height:
                height = sub_height + 1
            if verdict != "return":
                return verdict, pure, visited, height
        # "continue", or a jump whose chain returned: on to the next rule


def _jump(
    sim: Simulation,
    target: ChainSnap,
    m: FlowMatch,
    in_port: str,
    out_port: str | None,
    node: TraceNode | None,
    stack: tuple[str, ...],
    device: str,
) -> _Outcome:
    """Evaluate the chain a `jump` rule names, or take the answer from the memo; its
    verdict joins the trace line of the jump (`node`).

    The memo holds, per run, the outcome of every evaluation that had no side effect,
    keyed by what such an evaluation depends on: the chain, the ports, and the packet as
    it is now (its values on arrival, which fields were rewritten and to what). Connection
    tracking (`ct()`) is answered once per run and leaves its mark on the run the first
    time, so asking it again changes nothing. An answer is reused only where evaluating
    again would give it:
    - none of the chains it went through is being evaluated now (there, a jump would be
      a loop and drop);
    - nested under the current chains it stays within `MAX_CHAIN_DEPTH` (else the limit
      is raised, as the evaluation would have);
    - and its mask joins the match's: every match of one run shares one mask, so the
      fields the first evaluation read are there already, and the megaflow stays right.
    """
    if len(stack) + 1 > MAX_CHAIN_DEPTH:
        raise _too_deep()
    key: tuple[object, ...] | None = None
    if MEMOISE:
        key = (
            target.id,
            in_port,
            out_port,
            m.masked_key(_ALL_FIELDS),
            int(m.modified),
            tuple(m.rewrites().items()),
        )
        memo = sim.chain_memo.get(key)
        if memo is not None and memo.visited.isdisjoint(stack):
            if len(stack) + memo.height > MAX_CHAIN_DEPTH:
                raise _too_deep()
            m.record(Field(memo.mask))
            if node is not None:
                node.text += f": {memo.verdict} (evaluated already for this packet: answer reused)"
            return memo.verdict, True, memo.visited, memo.height
    out = _run(sim, target, m, in_port, out_port, node, (*stack, target.id), device)
    verdict, pure, visited, height = out
    if node is not None:
        node.text += f": {verdict}"
    if key is not None and pure:
        sim.chain_memo[key] = ChainMemo(verdict, int(m.mask), visited, height)
    return out


def _too_deep() -> LimitExceeded:
    return LimitExceeded(
        "chain_depth",
        f"simulation stopped: chains jump more than {MAX_CHAIN_DEPTH} levels deep",
    )


def _first_match_traced(
    sim: Simulation,
    chain: ChainSnap,
    m: FlowMatch,
    in_port: str,
    out_port: str | None,
    start: int,
    node: TraceNode,
) -> tuple[int, TraceNode | None]:
    """`first_match`, rule by rule, writing each verdict (and the connection tracking
    decision, where a rule asks for it) into the trace; the matching rule's trace node
    comes with its index."""
    rules = chain.rules
    for i in range(start, len(rules)):
        rule = rules[i]
        sim.count_rules(1)
        rnode = node.add("rule", rule.id, f"#{rule.position} {rule.action} if {rule.summary}")

        def ct(rnode: TraceNode = rnode) -> bool:
            return stateful.is_forward(sim, rnode)

        matched = rule.matches(m, in_port, out_port, ct)
        rnode.text += ": match" if matched else ": no match"
        if matched:
            return i, rnode
    return -1, None
