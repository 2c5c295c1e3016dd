"""What one simulation may cost: chains jumping into chains, and the limits on the work.

Issue 13: chains C0..Cd where each Ci has k `jump` rules to C(i+1) made the work grow as
k ** d (k=7, d=6 took seconds and a 29 MB trace). A chain evaluated again for the same
packet is now answered from a memo, what is still tested is counted, and past a limit
the packet is dropped with the limit named. Costs are measured in rules tested (the
simulation's own counter), never in time, so these tests cannot flake.
"""

from __future__ import annotations

import itertools
import json
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sim_topo import NOW, Topo, mac, tcp, udp

from tessera.cli.trace import render_text
from tessera.model import Chain, Port
from tessera.packet import Field, FlowMatch
from tessera.simulation import SimulationResult, Snapshot, Verdict, chain, context, simulate
from tessera.simulation.result import MAX_TRACE_NODES, TraceNode


def run(t: Topo | Snapshot, port: Port, frame: bytes, *, trace: bool = False) -> SimulationResult:
    snap = t.snapshot() if isinstance(t, Topo) else t
    return simulate(snap, FlowMatch.from_frame(port.id, frame), frame, NOW, trace=trace)


Rules = list[tuple[str, dict[str, Any]]]


def jumps(k: int, d: int, last: Rules | None = None) -> tuple[Topo, Port]:
    """A bridge whose port `a` is filtered by C0; C0..C(d-1) each hold k jumps to the next
    chain, and the last one holds `last` (default: nothing, so every chain returns and the
    packet is accepted). Returns the topology and port `a`."""
    t = Topo()
    br = t.bridge()
    a, b = t.bridge_port(br), t.bridge_port(br)
    t.learn_mac(br, mac(2), b)
    chains = [t.chain(f"c{i}") for i in range(d + 1)]
    for i in range(d):
        for _ in range(k):
            t.rule(chains[i], "jump", jump_chain_id=chains[i + 1].id)
    for kind, cond in last or []:
        t.rule(chains[d], kind, **cond)
    a = t.set(a, inbound_filter_id=chains[0].id)
    return t, a


PACKET = tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2", 40000, 80)


# -- the memo --------------------------------------------------------------------------------


def test_repeated_jumps_cost_what_the_rules_are_not_what_the_paths_are() -> None:
    """k=10, d=8 is 10**8 paths but 80 rules: the work is per rule, as with k=1."""
    small = run(*jumps(1, 8), PACKET)
    large = run(*jumps(10, 8), PACKET)
    assert small.verdict is large.verdict is Verdict.FORWARD
    assert large.limit is None
    assert small.rules_evaluated == 8
    # Per rule in the topology, the large case costs at most twice what the small one does.
    assert large.rules_evaluated / 80 <= 2 * small.rules_evaluated / 8
    # And traced, the same: the repeated evaluations collapse into one line each.
    traced = run(*jumps(10, 8), PACKET, trace=True)
    assert traced.rules_evaluated == large.rules_evaluated


def test_a_repeated_evaluation_is_one_trace_line_and_the_answer_stays_small() -> None:
    t, a = jumps(7, 6)
    res = run(t, a, PACKET, trace=True)
    assert res.verdict is Verdict.FORWARD
    text = json.dumps(res.to_dict())
    assert len(text) < 100_000, f"{len(text)} bytes"
    assert "evaluated already for this packet: answer reused" in text
    assert res.to_dict()["cost"] == {"devices_visited": 1, "rules_evaluated": 42}


def test_the_memo_replays_the_fields_the_evaluation_read() -> None:
    """The first evaluation of C1 reads tp_dst; later jumps answered from the memo must
    leave it in the mask, and the verdict must be the one a full evaluation gives."""
    t, a = jumps(3, 2, [("drop", {"nw_proto": 6, "tp_dst": {"start": 22, "end": 22}})])
    for frame in (PACKET, tcp(mac(1), mac(2), "10.0.0.1", "10.0.0.2", 40000, 22)):
        res = run(t, a, frame)
        with mock.patch.object(chain, "MEMOISE", False):
            full = run(t, a, frame)
        assert res.verdict is full.verdict
        assert res.match.mask == full.match.mask
        assert Field.TP_DST in res.match.mask
        if res.verdict is Verdict.FORWARD:  # every path was tried: the memo answered
            assert res.rules_evaluated < full.rules_evaluated


def test_a_chain_with_nat_is_evaluated_every_time() -> None:
    """A NAT rule acts on the packet (and keeps state): never taken from the memo."""
    nat = [("rev_dnat", {"flow_action": "continue"})]
    res = run(*jumps(3, 2, nat), PACKET)
    assert res.verdict is Verdict.FORWARD
    # C0: 3 jumps; C1 evaluated thrice (C1 holds a NAT chain, so it is not pure either):
    # 3 jumps each; C2 evaluated 9 times, one rule each.
    assert res.rules_evaluated == 3 + 3 * 3 + 9


# -- the limits ------------------------------------------------------------------------------


def test_rules_past_the_budget_drop_the_packet_naming_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # NAT defeats the memo; 5**6 paths is more than this budget.
    monkeypatch.setattr(context, "MAX_RULES_EVALUATED", 1000)
    t, a = jumps(5, 6, [("rev_dnat", {"flow_action": "continue"})])
    res = run(t, a, PACKET)
    assert res.verdict is Verdict.DROP
    assert res.limit == "rules_evaluated"
    assert "more than 1000 filter rules" in (res.drop_reason or "")
    assert 1000 < res.rules_evaluated <= 1000 + 5, "stopped within one chain of the budget"
    traced = run(t, a, PACKET, trace=True)
    assert traced.trace is not None
    assert traced.trace.children[-1].kind == "drop"
    assert "more than 1000 filter rules" in traced.trace.children[-1].text
    # What `tessera trace` shows: the reason, the limit, the cost.
    text = render_text(traced.to_dict(), width=200)
    assert "more than 1000 filter rules" in text
    assert "stopped by the simulation's rules_evaluated limit" in text
    assert f"{traced.rules_evaluated} rule(s) tested" in text


def test_chains_nest_at_most_max_chain_depth_deep() -> None:
    depth = context.MAX_CHAIN_DEPTH
    ok = run(*jumps(1, depth - 1), PACKET)  # C0..C(depth-1): depth chains
    assert ok.verdict is Verdict.FORWARD and ok.limit is None
    deep = run(*jumps(1, depth), PACKET)
    assert deep.verdict is Verdict.DROP and deep.limit == "chain_depth"
    assert f"more than {depth} levels" in (deep.drop_reason or "")


def test_a_remembered_answer_still_respects_the_depth_limit() -> None:
    """X is first reached shallow and remembered; reached again deeper, what it would
    nest past the limit must drop as a full evaluation does."""
    depth = context.MAX_CHAIN_DEPTH
    t = Topo()
    br = t.bridge()
    a, b = t.bridge_port(br), t.bridge_port(br)
    t.learn_mac(br, mac(2), b)
    nest = [t.chain(f"x{i}") for i in range(depth - 2)]  # X = nest[0], height depth - 2
    for upper, lower in itertools.pairwise(nest):
        t.rule(upper, "jump", jump_chain_id=lower.id)
    top = t.chain("top")
    detour = [t.chain(f"d{i}") for i in range(3)]
    t.rule(top, "jump", jump_chain_id=nest[0].id)  # depth 1 + (depth - 2): fits
    t.rule(top, "jump", jump_chain_id=detour[0].id)
    for upper, lower in itertools.pairwise(detour):
        t.rule(upper, "jump", jump_chain_id=lower.id)
    t.rule(detour[-1], "jump", jump_chain_id=nest[0].id)  # depth 4 + (depth - 2): too deep
    a = t.set(a, inbound_filter_id=top.id)
    res = run(t, a, PACKET)
    with mock.patch.object(chain, "MEMOISE", False):
        full = run(t, a, PACKET)
    assert full.verdict is Verdict.DROP and full.limit == "chain_depth"
    assert (res.verdict, res.limit, res.drop_reason) == (full.verdict, full.limit, full.drop_reason)


def test_a_generated_packet_past_a_limit_is_dropped_and_named() -> None:
    """The router's ARP request crosses the right bridge, whose inbound chains nest too
    deep: the request is dropped (the packet still waits for the answer), and the
    result names the limit so that the agent counts it."""
    t = Topo()
    left, right, r = t.bridge("left"), t.bridge("right"), t.router("r")
    vm1, link_left = t.bridge_port(left), t.bridge_port(left)
    t.bridge_port(right)
    link_right = t.bridge_port(right)
    rp1 = t.router_port(r, "10.0.1.1/24", "02:aa:00:00:00:01")
    rp2 = t.router_port(r, "10.0.2.1/24", "02:aa:00:00:00:02")
    t.link(link_left, rp1)
    t.link(link_right, rp2)
    t.route(r, "10.0.1.0/24", t.get(rp1))
    t.route(r, "10.0.2.0/24", t.get(rp2))
    chains = [t.chain(f"x{i}") for i in range(context.MAX_CHAIN_DEPTH + 1)]
    for upper, lower in itertools.pairwise(chains):
        t.rule(upper, "jump", jump_chain_id=lower.id)
    t.set(right, inbound_filter_id=chains[0].id)
    frame = tcp(mac(1), 0x02AA_0000_0001, "10.0.1.5", "10.0.2.9")
    res = run(t, vm1, frame, trace=True)
    assert res.verdict is Verdict.HOLD and res.emitted == ()
    assert res.limit == "chain_depth"
    assert "generated arp_request dropped" in json.dumps(res.to_dict())


def test_a_hop_loop_names_its_limit() -> None:
    t = Topo()
    b1, b2 = t.bridge("b1"), t.bridge("b2")
    vm = t.bridge_port(b1)
    t.link(t.bridge_port(b1), t.bridge_port(b2))
    t.link(t.bridge_port(b2), t.bridge_port(b1))
    res = run(t, vm, PACKET)
    assert res.verdict is Verdict.DROP
    assert res.limit in ("hops", "device_visits") and "loop" in (res.drop_reason or "")


def test_a_trace_stops_at_max_trace_nodes_and_says_so() -> None:
    # NAT defeats the memo: 5**5 evaluations of the last chain, within the rules budget
    # but several steps each, far more than a trace may show.
    t, a = jumps(5, 5, [("rev_dnat", {"flow_action": "continue"})])
    res = run(t, a, PACKET, trace=True)
    assert res.verdict is Verdict.FORWARD and res.limit is None
    assert res.trace is not None

    def count(node: TraceNode) -> int:
        return 1 + sum(count(child) for child in node.children)

    assert count(res.trace) <= MAX_TRACE_NODES + 2  # the root and the closing line
    last = res.trace.children[-1]
    assert last.kind == "note" and last.text.startswith("trace truncated")


# -- the memo changes the cost, nothing else -------------------------------------------------

ADDRS = ["10.0.0.1", "10.0.0.2", "10.0.9.9"]


@st.composite
def rule_of(draw: st.DrawFn, chains: list[Chain], own: int) -> tuple[str, dict[str, Any]]:
    """Mostly plain jumps down the list of chains (so that evaluations repeat), else any
    rule: decisions with a condition (most packets go on through more jumps), jumps
    anywhere (loops), static DNAT (which acts, so is never remembered)."""
    below = chains[own + 1 :]
    if below and draw(st.integers(0, 9)) < 7:
        return "jump", {"jump_chain_id": draw(st.sampled_from(below)).id}
    kind = draw(st.sampled_from(["accept", "drop", "return", "dnat", "continue", "jump"]))
    cond: dict[str, Any] = {}
    options = ["proto", "dst", "tp", "none", "none", "none"]
    # A decision ends the evaluation, so decisions come with a condition: most packets
    # go on through more jumps.
    least = 1 if kind in ("accept", "drop", "return") else 0
    chosen = draw(st.lists(st.sampled_from(options[:3]), min_size=least, max_size=1))
    for option in chosen or draw(st.lists(st.sampled_from(options), max_size=2, unique=True)):
        if option == "proto":
            cond["nw_proto"] = draw(st.sampled_from([6, 17]))
        elif option == "dst":
            cond["nw_dst_address"] = draw(st.sampled_from(ADDRS))
            cond["inv_nw_dst"] = draw(st.booleans())
        elif option == "tp":
            lo = draw(st.sampled_from([22, 53, 80]))
            cond["tp_dst"] = {"start": lo, "end": lo}
    if kind == "jump":  # anywhere but its own chain: loops too
        cond["jump_chain_id"] = draw(st.sampled_from(chains[:own] + below or chains)).id
    if kind == "dnat":
        cond["nat_targets"] = [{"address_from": "10.0.9.9", "address_to": "10.0.9.9"}]
        cond["flow_action"] = draw(st.sampled_from(["accept", "continue", "return"]))
    return kind, cond


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_memo_gives_the_result_and_mask_of_full_evaluations(data: st.DataObject) -> None:
    draw = data.draw
    t = Topo()
    br = t.bridge()
    a, b = t.bridge_port(br), t.bridge_port(br)
    t.learn_mac(br, mac(2), b)
    chains = [t.chain(f"c{i}") for i in range(draw(st.integers(3, 6)))]
    for i, c in enumerate(chains):
        for _ in range(draw(st.integers(2, 6))):
            kind, cond = draw(rule_of(chains, i))
            try:
                t.rule(c, kind, **cond)
            except ValidationError:
                continue
    a = t.set(a, inbound_filter_id=chains[0].id)
    t.set(br, outbound_filter_id=chains[draw(st.integers(0, len(chains) - 1))].id)
    dst = draw(st.sampled_from(ADDRS))
    if draw(st.booleans()):
        frame = tcp(mac(1), mac(2), "10.0.0.1", dst, 40000, draw(st.sampled_from([22, 80])))
    else:
        frame = udp(mac(1), mac(2), "10.0.0.1", dst, 40000, 53)
    snap = t.snapshot()
    res = run(snap, a, frame)
    with mock.patch.object(chain, "MEMOISE", False):
        full = run(snap, a, frame)
    assert (res.verdict, res.outputs, res.drop_reason, res.tags, res.limit) == (
        full.verdict,
        full.outputs,
        full.drop_reason,
        full.tags,
        full.limit,
    )
    assert (res.match.mask, res.match.ttl_floor) == (full.match.mask, full.match.ttl_floor)
    assert res.rules_evaluated <= full.rules_evaluated
    traced = run(snap, a, frame, trace=True)
    assert (traced.verdict, traced.outputs, traced.match.mask) == (
        res.verdict,
        res.outputs,
        res.match.mask,
    )
