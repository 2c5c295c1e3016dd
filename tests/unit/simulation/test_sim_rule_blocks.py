"""A chain's rules compiled in blocks, and recompiled reusing what did not change.

`compile_first_match` generates one function per `BLOCK_RULES` rules (Python compiles a
long function slowly, and a chain is recompiled on every change to it): the blocks
together must answer exactly what testing the rules one by one answers — the same index
and the same mask — from any start, and a recompilation that reuses the previous
compilation's blocks must answer what a fresh one does.
"""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sim_topo import mac, tcp, udp

from tessera.model import Chain, PortRange, Rule
from tessera.packet import FlowMatch
from tessera.simulation.rules import BLOCK_RULES, CompiledRule, compile_first_match, compile_rule
from tessera.simulation.topology import _compile_chain

CHAIN = str(uuid.uuid4())
PORT = str(uuid.uuid4())
ADDRS = ["10.0.0.1", "10.0.0.2", "10.0.9.9"]


def _no_ct() -> bool:
    return True


@st.composite
def rules(draw: st.DrawFn, max_size: int = 3 * BLOCK_RULES + 5) -> list[Rule]:
    out = []
    for _ in range(draw(st.integers(0, max_size))):
        cond: dict[str, Any] = {}
        for option in draw(st.lists(st.sampled_from(["proto", "dst", "tp", "src"]), max_size=3)):
            if option == "proto":
                cond["nw_proto"] = draw(st.sampled_from([6, 17]))
            elif option == "dst":
                cond["nw_dst_address"] = draw(st.sampled_from(ADDRS))
                cond["inv_nw_dst"] = draw(st.booleans())
            elif option == "src":
                cond["dl_src"] = draw(st.sampled_from(["02:00:00:00:00:01", "02:00:00:00:00:03"]))
            else:
                lo = draw(st.sampled_from([22, 53, 80]))
                cond["tp_dst"] = {"start": lo, "end": lo}
        out.append(Rule(id=str(uuid.uuid4()), chain_id=CHAIN, type="accept", **cond))
    return out


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    dst = draw(st.sampled_from(ADDRS))
    if draw(st.booleans()):
        return tcp(mac(1), mac(2), "10.0.0.1", dst, 40000, draw(st.sampled_from([22, 80])))
    return udp(mac(1), mac(2), "10.0.0.1", dst, 40000, 53)


def one_by_one(compiled: list[CompiledRule], frame: bytes, start: int) -> tuple[int, Any]:
    m = FlowMatch.from_frame(PORT, frame)
    for i in range(start, len(compiled)):
        if compiled[i].matches(m, PORT, None, _no_ct):
            return i, m.mask
    return -1, m.mask


def blocked(fn: Any, frame: bytes, start: int) -> tuple[int, Any]:
    m = FlowMatch.from_frame(PORT, frame)
    return fn(m, PORT, None, start, _no_ct), m.mask


@settings(max_examples=60, deadline=None)
@given(rules(), frames(), st.data())
def test_blocks_answer_what_the_rules_one_by_one_answer(
    chain_rules: list[Rule], frame: bytes, data: st.DataObject
) -> None:
    compiled = [compile_rule(r, i, {}, {}) for i, r in enumerate(chain_rules, start=1)]
    fn = compile_first_match(compiled)
    start = data.draw(st.integers(0, len(compiled) + 1))
    assert blocked(fn, frame, start) == one_by_one(compiled, frame, start)


@settings(max_examples=40, deadline=None)
@given(rules(), rules(max_size=BLOCK_RULES + 3), frames(), st.data())
def test_a_recompilation_from_the_previous_one_answers_what_a_fresh_one_does(
    before: list[Rule], added: list[Rule], frame: bytes, data: st.DataObject
) -> None:
    pool = {r.id: r for r in [*before, *added]}
    old = _compile_chain(Chain(id=CHAIN, name="c", rule_ids=[r.id for r in before]), pool, {}, {})
    ids = [r.id for r in before]
    edit = data.draw(st.sampled_from(["append", "insert", "remove", "replace"]))
    at = data.draw(st.integers(0, len(ids)))
    if edit == "append":
        ids += [r.id for r in added]
    elif edit == "insert":
        ids[at:at] = [r.id for r in added]
    elif edit == "remove":
        del ids[at : at + data.draw(st.integers(1, 40))]
    elif added and ids:
        ids[min(at, len(ids) - 1)] = added[0].id
    chain = Chain(id=CHAIN, name="c", rule_ids=ids)
    reused = _compile_chain(chain, pool, {}, {}, old)
    fresh = _compile_chain(chain, pool, {}, {})
    assert reused.rules == fresh.rules
    start = data.draw(st.integers(0, len(ids)))
    assert blocked(reused.first_match, frame, start) == blocked(fresh.first_match, frame, start)


def test_appending_a_rule_recompiles_only_the_last_block() -> None:
    chain_rules = [
        Rule(id=str(uuid.uuid4()), chain_id=CHAIN, type="drop", nw_proto=17,
             tp_dst=PortRange(start=9000 + i, end=9000 + i))
        for i in range(3 * BLOCK_RULES + 1)
    ]  # fmt: skip
    pool = {r.id: r for r in chain_rules}
    ids = [r.id for r in chain_rules]
    old = _compile_chain(Chain(id=CHAIN, name="c", rule_ids=ids[:-1]), pool, {}, {})
    new = _compile_chain(Chain(id=CHAIN, name="c", rule_ids=ids), pool, {}, {}, old)
    old_blocks = old.first_match._tessera_blocks  # type: ignore[attr-defined]
    new_blocks = new.first_match._tessera_blocks  # type: ignore[attr-defined]
    assert len(old_blocks) == 3 and len(new_blocks) == 4
    assert all(a.code is b.code for a, b in zip(old_blocks, new_blocks[:3], strict=True))
    assert all(a is b for a, b in zip(old.rules, new.rules[:-1], strict=True))  # not recompiled
    last = 9000 + 3 * BLOCK_RULES
    hit = udp(mac(1), mac(2), "10.0.0.1", "10.0.0.2", 40000, last)
    assert blocked(new.first_match, hit, 0)[0] == 3 * BLOCK_RULES
    assert blocked(old.first_match, hit, 0)[0] == -1
