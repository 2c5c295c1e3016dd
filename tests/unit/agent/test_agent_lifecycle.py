"""Flows over time: idle expiry from datapath counters, repair of what the datapath lost,
and a restart that adopts installed flows instead of flushing them."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import pytest
from agent_harness import Cloud, Host, Vm

from tessera.agent.agent import CT_DELETE_STEP, SWEEP, SWEEP_MAX, SWEEP_SHARE, sweep_interval
from tessera.agent.cache import TopologyCache
from tessera.agent.flowtable import IDLE_TIMEOUTS, DesiredFlow, FlowTable
from tessera.agent.lifecycle import ADOPT_TIMEOUT, SWEEP_STEP, Sweep
from tessera.agent.metrics import AgentMetrics
from tessera.datapath.base import CtTuple, Flow, InstalledFlow, Match, Output, packet_key
from tessera.datapath.fake import DUMP_PART, FakeDatapath
from tessera.model import Chain, Port, Rule
from tessera.simulation.flowstate import ConnKey
from tessera.simulation.result import ExpiryClass


def _pair(cloud: Cloud) -> tuple[Host, Vm, Vm]:
    h = cloud.host("h1", "198.18.0.1")
    br = cloud.bridge()
    vm1 = cloud.vm(h, br, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm2 = cloud.vm(h, br, "tap2", "02:00:00:00:00:02", "10.0.0.2")
    cloud.settle()
    cloud.send(vm2, vm2.arp_request(vm1.ip))
    cloud.send(vm1, vm1.arp_request(vm2.ip))
    cloud.send(vm1, vm1.frame(vm2))
    return h, vm1, vm2


def _flow_of(h: Host, vm: Vm, frame: bytes) -> Match | None:
    d = h.agent.flows.lookup(packet_key(h.number(vm.port_id), frame))
    return d.match if d is not None else None


def test_every_installable_expiry_class_has_an_idle_timeout() -> None:
    # UNCACHED results are never installed; every other class must have a timeout, or
    # a flow of it would fail at its first sweep.
    assert set(IDLE_TIMEOUTS) == set(ExpiryClass) - {ExpiryClass.UNCACHED}
    assert IDLE_TIMEOUTS[ExpiryClass.TUNNEL] > IDLE_TIMEOUTS[ExpiryClass.NORMAL]
    assert IDLE_TIMEOUTS[ExpiryClass.ERROR] < IDLE_TIMEOUTS[ExpiryClass.STATEFUL]


def test_idle_flows_expire_and_busy_ones_stay(cloud: Cloud) -> None:
    h, vm1, vm2 = _pair(cloud)
    cloud.send(vm2, vm2.frame(vm1))
    busy, idle = _flow_of(h, vm1, vm1.frame(vm2)), _flow_of(h, vm2, vm2.frame(vm1))
    assert busy is not None and idle is not None
    timeout = IDLE_TIMEOUTS[ExpiryClass.NORMAL]
    for _ in range(int(timeout / 10) + 2):
        cloud.clock.advance(10)
        h.dp.receive(h.number(vm1.port_id), vm1.frame(vm2))  # hits the flow in the "kernel"
        cloud.tick(0)
    flows = h.flows()
    assert busy in flows and idle not in flows
    assert idle not in h.dp.dump()
    assert h.agent.metrics.expired._value.get() >= 1


def test_a_flow_the_datapath_lost_is_installed_again(cloud: Cloud) -> None:
    h, vm1, vm2 = _pair(cloud)
    match = _flow_of(h, vm1, vm1.frame(vm2))
    assert match is not None
    h.dp.delete(match)
    h.dp.install(Flow(Match.of(in_port=9), (Output(1),)))  # nobody wants this one
    cloud.tick(3)
    assert match in h.dp.dump()
    assert Match.of(in_port=9) not in h.dp.dump()


def test_a_restarted_agent_keeps_valid_flows_and_removes_stale_ones(cloud: Cloud) -> None:
    h, vm1, vm2 = _pair(cloud)
    keep = _flow_of(h, vm1, vm1.frame(vm2))
    cloud.send(vm2, vm2.frame(vm1))
    stale = _flow_of(h, vm2, vm2.frame(vm1))
    assert keep is not None and stale is not None
    dp: FakeDatapath = h.dp
    cloud.stop(h)  # the kernel keeps its flows: nothing is flushed
    assert {keep, stale} <= set(dp.dump())

    # While no agent runs, vm2's traffic gets forbidden.
    chain = cloud.topo.create(Chain(name="deny"))
    cloud.topo.create(Rule(chain_id=chain.id, type="drop"))
    port = cloud.topo.get(Port, vm2.port_id)
    cloud.topo.update(Port, vm2.port_id, {**port.model_dump(), "inbound_filter_id": chain.id})

    installs = dp.installs
    h2 = cloud.start_agent("h1", h.host_id, h.underlay, dp)
    vm1.host = vm2.host = h2
    # Forwarding never stopped: the valid flow still works before adoption finished.
    assert h2.number(vm1.port_id) == keep.in_port  # the same local port numbers
    for _ in range(10):
        cloud.tick(0.25)
    assert h2.agent.adopter.done
    assert keep in dp.dump() and keep in h2.flows()
    assert dp.installs == installs  # kept as it was: not re-installed, counters intact
    assert stale not in dp.dump()
    cloud.send(vm1, vm1.frame(vm2))
    assert len(cloud.received(vm2)) == 1
    cloud.send(vm2, vm2.frame(vm1))
    assert cloud.received(vm1) == []


def test_adopted_flows_are_judged_only_once_the_bindings_are_known(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, vm1, vm2 = _pair(cloud)
    dp = h.dp
    cloud.stop(h)
    dp.install(Flow(Match.of(in_port=77), (Output(1),)))  # a port no binding explains
    known = {"yes": False}
    monkeypatch.setattr(TopologyCache, "ports_ready", lambda self: known["yes"])
    h2 = cloud.start_agent("h1", h.host_id, h.underlay, dp)
    cloud.tick(ADOPT_TIMEOUT + 1)
    # The NSDB has not told the agent its bindings: nothing is judged, all forwards.
    assert not h2.agent.adopter.done
    assert Match.of(in_port=77) in dp.dump()
    known["yes"] = True
    cloud.tick(0.5)
    assert h2.agent.adopter.done
    assert Match.of(in_port=77) not in dp.dump()
    assert _flow_of(h2, vm1, vm1.frame(vm2)) is not None  # the valid one was adopted


def test_adoption_learns_again_what_the_flows_taught(cloud: Cloud) -> None:
    h, vm1, _vm2 = _pair(cloud)
    dp = h.dp
    cloud.stop(h)  # its session ends: its learned MACs leave the NSDB
    h2 = cloud.start_agent("h1", h.host_id, h.underlay, dp)
    for _ in range(5):
        cloud.tick(0.25)
    bridge_macs = h2.agent.cache.view().macs
    known = {mac for table in bridge_macs.values() for (_vlan, mac) in table}
    assert vm1.mac in known


def test_a_port_unbound_while_no_agent_ran_is_detached_after_restart(cloud: Cloud) -> None:
    h, vm1, vm2 = _pair(cloud)
    dp = h.dp
    cloud.stop(h)
    cloud.topo.unbind(h.host_id, vm2.port_id)
    assert len(dp.ports()) == 2
    h2 = cloud.start_agent("h1", h.host_id, h.underlay, dp)
    for _ in range(5):
        cloud.tick(0.25)
    assert [b.ifname for b in dp.ports().values()] == ["tap1"]
    assert h2.agent.ports.number_of(vm1.port_id) is not None


# --- the sweep in steps (`lifecycle.Sweep`): flows change between two steps ----------


def _desired(port: int, out: int, created: float = 0.0) -> DesiredFlow:
    return DesiredFlow(Flow(Match.of(in_port=port), (Output(out),)), frozenset(), created=created)


def _fake(now: float) -> FakeDatapath:
    dp = FakeDatapath(clock=lambda: now)
    for port in (1, 2, 3):
        dp.add_port(port, f"tap{port}")
    return dp


def test_a_sweep_in_steps_judges_each_flow_once_and_what_changed_meanwhile_right() -> None:
    now = 1000.0
    dp = _fake(now)
    table = FlowTable()
    flows = [_desired(p, 1, created=now) for p in range(2, 12)]  # ten fresh flows
    for d in flows:
        dp.install(d.flow)
        table.add(d)
    lost, replaced, removed = flows[7], flows[8], flows[9]
    dp.delete(lost.match)  # the datapath lost one: repaired
    undesired = Flow(Match.of(in_port=40), (Output(1),))
    dp.install(undesired)  # nobody desires it: removed at the end
    metrics = AgentMetrics()

    pass_ = Sweep(dp, table, now, metrics)
    assert pass_.step(4) is False and pass_.step(2) is False  # six judged

    # Between steps the agent handles misses and invalidations:
    newer = DesiredFlow(Flow(replaced.match, (Output(3),)), frozenset(), created=now)
    table.add(newer)
    dp.install(newer.flow)  # replaced after the dump: the dump's copy is stale
    table.remove(removed.match)
    dp.delete(removed.match)  # invalidated after the dump
    late = _desired(50, 2, created=now)
    table.add(late)
    dp.install(late.flow)  # installed after the dump: not in it, desired

    assert pass_.step(3) is False
    assert pass_.step(3) is True and pass_.done
    assert (pass_.result.repaired, pass_.result.removed, pass_.result.expired) == (1, 1, 0)
    installed = {m: i.flow.actions for m, i in dp.dump().items()}
    assert installed == {
        **{d.match: d.flow.actions for d in flows[:7]},
        lost.match: lost.flow.actions,  # repaired
        replaced.match: (Output(3),),  # the newer flow, not "repaired" back
        late.match: late.flow.actions,  # kept
    }
    assert pass_.step(3) is True  # done stays done


def test_a_sweep_in_steps_expires_by_the_dump_and_counts_once() -> None:
    now = 1000.0
    dp = _fake(now)
    table = FlowTable()
    old = [_desired(p, 1, created=now - 10 * IDLE_TIMEOUTS[ExpiryClass.NORMAL]) for p in (2, 3)]
    fresh = _desired(4, 1, created=now)
    for d in (*old, fresh):
        dp.install(d.flow)
        table.add(d)
    metrics = AgentMetrics()
    pass_ = Sweep(dp, table, now, metrics)
    assert pass_.step(1) is False  # one expired; counted only when the pass ends
    assert metrics.expired._value.get() == 0
    assert pass_.step(None) is True
    assert pass_.result.expired == 2 and metrics.expired._value.get() == 2
    assert set(dp.dump()) == {fresh.match} and set(table.snapshot()) == {fresh}


def test_the_agent_sweeps_a_large_table_in_steps_between_misses(cloud: Cloud) -> None:
    """The agent's loop runs one step of SWEEP_STEP flows per iteration, the misses
    queued meanwhile between two steps."""
    h, _, _ = _pair(cloud)
    n = 2 * SWEEP_STEP + 10
    agent = h.agent
    before = len(agent.flows)  # vm1's and vm2's, installed: judged first, nothing to do
    for p in range(n):  # desired but lost by the datapath: each repaired by the sweep
        agent.flows.add(
            DesiredFlow(
                Flow(Match.of(in_port=100, ip_dst=0x0A010000 + p), (Output(1),)),
                frozenset(),
                created=cloud.clock(),
            )
        )
    cloud.clock.advance(SWEEP + 0.01)
    agent.run_once(0)
    assert agent._sweep is not None  # first step done, the pass goes on
    missing = [d for d in agent.flows.snapshot() if d.match not in h.dp.dump()]
    assert len(missing) == n - (SWEEP_STEP - before)
    agent.run_once(0)
    agent.run_once(0)
    assert agent._sweep is None
    assert all(d.match in h.dp.dump() for d in agent.flows.snapshot())


def test_sweep_interval_keeps_the_sweep_to_its_share_of_the_thread() -> None:
    assert sweep_interval(0.0) == SWEEP  # a small table: every SWEEP seconds
    assert sweep_interval(0.3) == pytest.approx(0.3 / SWEEP_SHARE)
    assert sweep_interval(60.0) == SWEEP_MAX  # expiry and repair are never later than this


def test_a_costly_sweep_spaces_the_next_and_a_cheap_one_does_not(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spacing follows the CPU time the pass took (here a dump made slow),
    counted from the pass's start; once passes are cheap again, SWEEP it is."""
    h, vm1, vm2 = _pair(cloud)
    agent = h.agent
    real_dump = h.dp.dump_in_steps

    def slow_dump() -> Iterator[dict[Match, InstalledFlow] | None]:
        spent = time.thread_time() + 0.25
        while time.thread_time() < spent:  # CPU time, as a large table's dump takes
            pass
        yield from real_dump()

    monkeypatch.setattr(h.dp, "dump_in_steps", slow_dump)
    cloud.clock.advance(SWEEP + 0.01)
    began = cloud.clock()
    agent.run_once(0)
    assert agent._sweep is None  # a small table: swept whole in one step
    cost = agent.metrics.sweep_seconds._value.get()
    assert cost >= 0.25
    assert agent._next_sweep == pytest.approx(began + sweep_interval(cost))
    assert agent._next_sweep >= began + 0.25 / SWEEP_SHARE
    monkeypatch.setattr(h.dp, "dump_in_steps", real_dump)
    # Not due at SWEEP any more: a flow the datapath lost waits for the spaced pass.
    match = _flow_of(h, vm1, vm1.frame(vm2))
    assert match is not None
    h.dp.delete(match)
    cloud.clock.advance(SWEEP)
    agent.run_once(0)
    assert match not in h.dp.dump()
    cloud.clock.advance(agent._next_sweep - cloud.clock())
    began = cloud.clock()
    agent.run_once(0)
    assert match in h.dp.dump()  # repaired by the spaced pass, a cheap one
    assert agent._next_sweep == pytest.approx(began + SWEEP)


def test_a_large_dump_is_read_in_parts_and_a_flow_installed_meanwhile_is_no_loss(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep reads the datapath a part per loop iteration (misses between). A flow
    installed after the read began is missing from the dump without being lost: it
    is not installed again; a flow really lost before is."""
    h, _, _ = _pair(cloud)
    agent = h.agent
    n = 2 * DUMP_PART + 10
    for p in range(n):
        flow = Flow(Match.of(in_port=100, ip_dst=0x0A010000 + p), (Output(1),))
        agent.upcall.install(DesiredFlow(flow, frozenset(), created=cloud.clock()))
    lost = Match.of(in_port=100, ip_dst=0x0A010000)
    assert h.dp.delete(lost)
    cloud.clock.advance(SWEEP + 0.01)
    agent.run_once(0)
    assert agent._sweep is not None  # one part of the dump read
    cloud.clock.advance(0.001)
    late_flow = Flow(Match.of(in_port=101), (Output(1),))
    late = DesiredFlow(late_flow, frozenset(), created=cloud.clock())
    agent.upcall.install(late)
    installs: list[Match] = []
    real_install = h.dp.install

    def counting_install(flow: Flow) -> None:
        installs.append(flow.match)
        real_install(flow)

    monkeypatch.setattr(h.dp, "install", counting_install)
    for _ in range(10):
        agent.run_once(0)
        if agent._sweep is None:
            break
    assert agent._sweep is None
    assert installs == [lost]  # repaired; the late flow was not taken for lost
    dumped = h.dp.dump()
    assert lost in dumped and late.match in dumped


def test_idle_datapath_connections_go_in_batches_a_step_each(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a burst, the datapath's own connections expire a table's worth at once:
    deleted `CT_DELETE_STEP` per loop iteration (batch calls), misses between; the
    agent's mirrored entries are not the sweep's to delete."""
    h, _, _ = _pair(cloud)
    agent = h.agent
    n = 2 * CT_DELETE_STEP + 10
    conns = [(7, 17, 0x0A000001, 0x0A000002, 1024 + i, 53) for i in range(n)]
    for conn in conns:
        h.dp.ct_commit(conn)
    mirrored = (7, 17, 0x0A000001, 0x0A000003, 5353, 53)
    h.dp.ct_commit(mirrored)
    agent.kernel_ct.mirrored[mirrored] = ConnKey(17, 0x0A000001, 0x0A000003, 5353, 53, "d")
    calls: list[int] = []
    real = h.dp.ct_delete_many

    def counting(batch: Sequence[CtTuple]) -> int:
        calls.append(len(batch))
        return real(batch)

    monkeypatch.setattr(h.dp, "ct_delete_many", counting)
    cloud.clock.advance(SWEEP_MAX + 120)  # past UDP's idle timeout, and a sweep due
    agent.run_once(0)
    assert calls == [CT_DELETE_STEP] and agent._sweep is not None
    # Between two steps a peer's entry for one of the listed tuples arrives: the
    # agent's table decides it now, the sweep leaves it.
    taken = conns[-1]
    agent.kernel_ct.mirrored[taken] = ConnKey(17, taken[2], taken[3], taken[4], 53, "d")
    agent.run_once(0)
    agent.run_once(0)
    assert calls == [CT_DELETE_STEP, CT_DELETE_STEP, 9] and agent._sweep is None
    assert set(h.dp.ct_entries()) == {mirrored, taken}
    assert agent.kernel_ct.expired == n - 1
