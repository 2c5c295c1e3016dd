"""The upcall path: a missed packet becomes a simulation, a flow, and the packet again.

    miss → (already covered by a flow? reinject) → (its flow pending? join it)
         → simulate → apply: learned state, flow state (installed, sent to the hosts
           that will see the replies, its tags invalidated), emitted packets,
           flow install → reinject

Runs on the agent's single upcall thread and waits for the NSDB only to lease a block
of 64 SNAT ports (a simulation raising NotYetLoaded("nat_block"): rare, then simulated
again); a simulation that meets an object not loaded yet parks its packets until the
cache reports it loaded;
learned MACs/ARPs go to the cache at once (so the next packet sees them) and to the NSDB
through the writer's queue; a packet waiting for ARP is held and simulated again when
the entry arrives, or with the entry marked failed when it times out (an ICMP error).

Duplicate misses — packets of one flow arriving while its simulation is parked — join
the parked group instead of being simulated again, bounded in number and in time.

Misses are handled one at a time in order of arrival, each before the next is read (the
datapath hands over at most `MAX_MISSES_PER_WAKE` per call, then the agent's timers
run). Between two misses the agent applies what came meanwhile — topology changes
(invalidations, loaded objects) and the flows a peer's flow state changes — so that a
flood of misses delays a rule change by one miss, not by a batch
(tests/unit/agent/test_agent_miss_flood.py, tests/system/lab/test_lab_miss_flood.py).

Nothing on this path is swallowed silently. A simulation (or the handling of its result)
that raises drops its packets, counts in `tessera_agent_simulation_errors_total` and
logs a warning with the port and the exception, at most once a minute per port and
exception type (a flood would otherwise flood the log); the next packet is handled as
usual. A simulation stopped by a cost limit (`SimulationResult.limit`) counts in
`tessera_agent_simulation_limits_total` and is logged the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from tessera.agent.cache import Key, TopologyCache
from tessera.agent.flowstate.service import FlowStateService
from tessera.agent.flowstate.snat import NAT_BLOCK
from tessera.agent.flowtable import DesiredFlow, FlowTable
from tessera.agent.kernel_ct import KernelConntrack
from tessera.agent.lograte import RateLimitedLog
from tessera.agent.metrics import AgentMetrics
from tessera.agent.ports import PortManager
from tessera.agent.predict import predict_reply
from tessera.agent.translate import Locate, egress, translate
from tessera.agent.writer import StateWriter
from tessera.datapath.base import (
    VNI_COMMIT,
    Action,
    CtCommit,
    Datapath,
    DatapathError,
    Drop,
    Flow,
    Match,
    Miss,
    OutputTunnel,
    PacketKey,
    key_of,
)
from tessera.datapath.frames import run_actions
from tessera.nsdb import tables
from tessera.packet.addr import ip_to_str, mac_to_str
from tessera.packet.errors import PacketError
from tessera.packet.match import CT_REPLY, CT_TRACKED, Field, FlowMatch
from tessera.simulation.errors import NotYetLoaded
from tessera.simulation.flowstate import ConnKey, NatKey
from tessera.simulation.result import (
    ArpLearned,
    MacLearned,
    SimulationResult,
    Verdict,
)
from tessera.simulation.stateful import KERNEL_TUPLE
from tessera.simulation.tags import arp_tag

log = logging.getLogger(__name__)

NOT_YET_TIMEOUT = 2.0  # how long packets wait for the cache to load what they need
NOT_YET_ROUNDS = 32  # re-runs of one simulation for missing objects
ARP_RETRY = 1.0  # a held packet is simulated again (a new ARP request) this often
ARP_TIMEOUT = 3.0  # then the address is declared unresolvable (ICMP host unreachable)
MAX_PARKED = 1024  # distinct flows waiting
MAX_PACKETS_PER_FLOW = 64  # packets kept per waiting flow; more are dropped
_IN_PORT = Field.IN_PORT  # an enum member lookup costs a descriptor call per use
_CT_STATE = Field.CT_STATE


class Simulator(Protocol):
    def prepare(self) -> None:
        """Do ahead of time what the next simulation needs (called when idle)."""

    def simulate(
        self,
        frame: bytes,
        in_port_id: str,
        now: float,
        arp_failed: frozenset[tuple[str, int]] = frozenset(),
        match: FlowMatch | None = None,
    ) -> SimulationResult:
        """`match`, when given, is `FlowMatch.from_frame(in_port_id, frame)` not yet
        read by anyone: the miss path parsed the frame already."""
        ...


@dataclass
class Parked:
    """Packets of one flow waiting: for objects to load, or for an ARP answer."""

    key: PacketKey
    port_id: str
    misses: list[Miss]
    deadline: float
    match: FlowMatch | None = None  # the first miss parsed, for the first simulation only
    waiting_for: set[Key] = field(default_factory=set)
    arp: set[tuple[str, int]] = field(default_factory=set)
    arp_failed: frozenset[tuple[str, int]] = frozenset()
    hold_deadline: float | None = None  # when waiting for ARP stops
    retry_at: float = 0.0
    rounds: int = 0
    punted: bool = False  # sent up by an installed flow's actions, not by a miss


def _committing(actions: list[Action], result: SimulationResult, locate: Locate) -> list[Action]:
    """`actions` with the tunnels to `result`'s egress ports asking the far host to
    commit the connection (a mirror's copy, to another port, does not)."""
    vnis = set()
    for out in result.outputs:
        where = locate(out.port_id)
        if where is not None and where.remote_ip and where.vni is not None:
            vnis.add(where.vni)
    if not vnis:
        return actions
    return [
        replace(a, commit=True) if isinstance(a, OutputTunnel) and a.vni in vnis else a
        for a in actions
    ]


class UpcallHandler:
    def __init__(
        self,
        datapath: Datapath,
        flows: FlowTable,
        ports: PortManager,
        cache: TopologyCache,
        simulator: Simulator,
        writer: StateWriter | None,
        metrics: AgentMetrics,
        locate: Locate,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        *,
        flowstate: FlowStateService | None = None,
        group_ports: Callable[[str], Iterable[str]] | None = None,
        kernel_ct: KernelConntrack | None = None,
        tunnel_commit: bool = True,
    ) -> None:
        """`flowstate` holds and shares the connection state simulations create (None:
        none is kept); `group_ports(id)` lists a port group's members, whose hosts get
        the state of connections keyed by that (stateful) group; `kernel_ct` commits
        new connections in the datapath where it can (`agent.kernel_ct`), and with
        `tunnel_commit` asks the far datapath to commit those whose replies enter
        another host (`OutputTunnel.commit`; off while a cluster still has hosts whose
        datapath would drop such a packet)."""
        self.dp = datapath
        self.flowstate = flowstate
        self.kernel_ct = kernel_ct
        self.tunnel_commit = tunnel_commit
        self.group_ports = group_ports
        self.flows = flows
        self.ports = ports
        self.cache = cache
        self.sim = simulator
        self.writer = writer
        self.metrics = metrics
        self.locate = locate
        self.clock = clock
        self.wall_clock = wall_clock
        self.parked: dict[PacketKey, Parked] = {}
        self.dropped = 0
        self._held = 0  # packets parked, as last reported to the metrics
        self._log = RateLimitedLog(log, clock)

    # -- entry points ---------------------------------------------------------------------

    def handle(self, misses: Iterable[Miss], between: Callable[[], object] | None = None) -> int:
        """Handle each miss as it comes (`misses` may read lazily), in order of arrival;
        returns how many. `between` runs after each one: the agent applies the
        invalidations and flow state that came meanwhile there, so that a flood of misses
        does not hold them back for a whole batch."""
        n = 0
        for miss in misses:
            n += 1
            if miss.frame:
                try:
                    self.handle_one(miss)
                except Exception as exc:  # the rest of the batch must still be handled
                    self._failed(self.ports.port_of(miss.port), 1, exc)
            if between is not None:
                between()
        if self.parked or self._held:
            self._held = sum(len(p.misses) for p in self.parked.values())
            self.metrics.held.set(self._held)
        return n

    def handle_one(self, miss: Miss) -> None:
        self.metrics.misses.inc()
        port_id = self.ports.port_of(miss.port)
        if port_id is None:
            self.dropped += 1  # a port detached while its packet was queued
            return
        try:
            match = FlowMatch.from_frame(port_id, miss.frame, miss.ct_state)
        except PacketError:
            self.dropped += 1
            return
        key = key_of(miss.port, match)
        covering = self.flows.lookup(key)
        if covering is not None:
            if not run_actions(miss.frame, covering.flow.actions).to_userspace:
                self.dp.reinject(miss)  # it raced the install of its flow
                return
            # The flow itself sent it here (a TTL that would reach 0): simulate this one
            # packet, and never cache the answer over the flow that serves the others.
            self._run(Parked(key, port_id, [miss], self.clock() + NOT_YET_TIMEOUT, punted=True))
            return
        parked = self.parked.get(key)
        if parked is not None:
            self.metrics.collapsed.inc()
            if len(parked.misses) < MAX_PACKETS_PER_FLOW:
                parked.misses.append(miss)
            else:
                self.dropped += 1
            return
        self._run(Parked(key, port_id, [miss], self.clock() + NOT_YET_TIMEOUT, match=match))

    def on_loaded(self, keys: Iterable[Key]) -> None:
        """The cache loaded objects: re-run the simulations that waited for them."""
        loaded = set(keys)
        ready = [p for p in self.parked.values() if p.waiting_for & loaded]
        for p in ready:
            if self.parked.get(p.key) is not p:
                continue  # handled meanwhile, by a run this loop started
            p.waiting_for -= loaded
            if not p.waiting_for:
                del self.parked[p.key]
                self._run(p)

    def on_tags(self, tags: Iterable[str]) -> None:
        """Learned state changed: re-run packets held for those ARP entries."""
        tagset = set(tags)
        ready = [
            p
            for p in self.parked.values()
            if p.arp and any(arp_tag(r, ip) in tagset for r, ip in p.arp)
        ]
        for p in ready:
            if self.parked.get(p.key) is not p:
                continue
            del self.parked[p.key]
            p.arp = set()
            self._run(p)

    def tick(self) -> None:
        """Timeouts: give up on objects that never load; retry or fail ARP waits."""
        now = self.clock()
        for p in list(self.parked.values()):
            if self.parked.get(p.key) is not p:
                continue
            if p.arp:
                if p.hold_deadline is not None and now >= p.hold_deadline:
                    del self.parked[p.key]
                    failed = p.arp_failed | frozenset(p.arp)
                    self._run(
                        Parked(p.key, p.port_id, p.misses, now + NOT_YET_TIMEOUT, arp_failed=failed)
                    )
                elif now >= p.retry_at:
                    del self.parked[p.key]
                    p.retry_at = now + ARP_RETRY
                    self._run(p)
            elif now >= p.deadline:
                del self.parked[p.key]
                self.dropped += len(p.misses)
                log.warning(
                    "dropping %d packet(s) of port %s: %s never loaded",
                    len(p.misses), p.port_id, ", ".join(f"{k} {i}" for k, i in p.waiting_for),
                )  # fmt: skip

    # -- simulation -----------------------------------------------------------------------

    def _park(self, p: Parked) -> None:
        if len(self.parked) >= MAX_PARKED:
            self.dropped += len(p.misses)
            return
        self.parked[p.key] = p

    def _run(self, p: Parked) -> None:
        first = p.misses[0]
        self.metrics.simulations.inc()
        p.rounds += 1
        started = time.perf_counter()
        if self.flowstate is not None:
            # State a peer sent ahead of this packet, read first; and the flows it
            # changes go now, before this simulation installs one that reads the same
            # entry (invalidated later, that new flow would go too, and the connection's
            # next packet, a FIN perhaps, would miss again).
            self.flowstate.pump()
            received = self.flowstate.drain_tags()
            if received:
                self.invalidate(received)
        try:
            match, p.match = p.match, None  # a match is read by one simulation only
            if match is None and first.ct_state:  # a re-run: the datapath's answer again
                match = FlowMatch.from_frame(p.port_id, first.frame, first.ct_state)
            if (
                match is not None
                and self.kernel_ct is not None
                and match.peek(_CT_STATE)[0] == CT_TRACKED
            ):
                # The datapath said "new": a peer's state it had not yet when the packet
                # missed may say "a reply". Read against the topology this simulation
                # will see: compiling it gives the ports their zones and writes the
                # connections of devices that just got one (a stateful group this host
                # learned of a moment ago); a no-op when compiled.
                self.sim.prepare()
                match = self.kernel_ct.refresh(first.port, match, first.frame)
            result = self.sim.simulate(
                first.frame, p.port_id, self.wall_clock(), p.arp_failed, match=match
            )
        except NotYetLoaded as exc:
            if exc.kind == NAT_BLOCK and self.flowstate is not None:
                # Dynamic SNAT needs a port block first: lease it (the NSDB, rarely: once
                # per 64 connections) and simulate again; an exhausted range now answers
                # None, a clean drop.
                self.flowstate.snat.lease_for(exc.id)
                if p.rounds >= NOT_YET_ROUNDS:
                    self.dropped += len(p.misses)
                    return
                self._run(p)
                return
            if p.rounds >= NOT_YET_ROUNDS:
                self.dropped += len(p.misses)
                log.warning("giving up on a packet of port %s after %d rounds", p.port_id, p.rounds)
                return
            key = self.cache.want(exc.kind, exc.id) or (exc.kind, exc.id)
            if self.cache.is_loaded(key):
                # Loaded between the simulation's view and now: run again at once.
                self._run(p)
                return
            p.waiting_for.add(key)
            self._park(p)
            return
        except Exception as exc:  # a bug, or configuration the data plane cannot serve
            self._failed(p.port_id, len(p.misses), exc)
            return
        finally:
            self.metrics.sim_seconds.observe(time.perf_counter() - started)
        if result.limit is not None:
            self.metrics.simulation_limits.labels(limit=result.limit).inc()
            self._log.warning(
                (p.port_id, result.limit),
                "simulating a packet of port %s hit the %s limit: %s",
                p.port_id, result.limit,
                result.drop_reason or "a packet it generated was dropped",
            )  # fmt: skip
        try:
            self.apply(p, result)
        except Exception as exc:
            self._failed(p.port_id, len(p.misses), exc)

    def _failed(self, port_id: str | None, packets: int, exc: Exception) -> None:
        """Handling a packet of `port_id` raised: drop, count, and say so (rate-limited)."""
        self.dropped += packets
        name = type(exc).__name__
        self.metrics.simulation_errors.labels(error=name).inc()
        self._log.warning(
            (port_id, name),
            "dropped %d packet(s) of port %s: simulating or handling them raised %s: %s",
            packets, port_id, name, exc, exc_info=exc,
        )  # fmt: skip

    def apply(self, p: Parked, result: SimulationResult) -> None:
        self.learn(result)
        # New connections the datapath commits itself (the flow's CtCommit actions), so
        # that the flow serves the next ones without the agent. This first one the agent
        # tracks too (its table, `tessera conntrack`, the datapath's copy): but the flow
        # does not keep it alive, the datapath's use of it does (`agent.kernel_ct`).
        # Not one only a far host commits (an empty list): nothing here would keep it
        # alive, and its expiry, told to that host, would take the far datapath's copy.
        hosts = self._state_hosts(result) if result.flow_state else []
        commits = self.commits_for(result, hosts) if result.ct_kernel else None
        if result.flow_state and (commits is None or commits):
            self.track(result, hosts)
        for pkt in result.emitted:
            target = egress(pkt.port_id, self.locate, set())
            if target is not None:
                self.dp.execute(pkt.frame, [target])
                self.metrics.emitted.inc()
        if result.verdict is Verdict.HOLD:
            now = self.clock()
            p.arp = {(w.router_id, w.ip) for w in result.waits}
            if p.hold_deadline is None:
                p.hold_deadline = now + ARP_TIMEOUT
            p.retry_at = now + ARP_RETRY
            self._park(p)
            return
        desired = None
        if not p.punted:
            desired = self.desired_flow(result, p.misses[0].port, p.port_id, commits)
        if desired is not None:
            try:
                self.dp.install(desired.flow)
            except DatapathError as exc:
                log.warning("flow not installed (%s); forwarding from userspace", exc)
            else:
                predict_reply(self, p.misses[0], p.port_id, result, desired)
                # The packets go first: the first packet's round trip waits for them,
                # nobody waits for the desired table (this thread is its only writer).
                for miss in p.misses:
                    self.dp.reinject(miss)
                self._installed(desired)
                if commits is None:
                    self.attach(result, desired.match)
                return
        actions, _tags = self._actions(result)
        for miss in p.misses:
            if actions:
                self.dp.execute(miss.frame, actions)

    def desired_flow(
        self,
        result: SimulationResult,
        in_port: int,
        in_port_id: str,
        commits: Sequence[CtCommit] | None = None,
    ) -> DesiredFlow | None:
        """The flow to install for a result, None if it must not be cached: the
        simulation said so, or the packet is held, or it made packets of its own (a
        flow would swallow the next packets' replies). `commits` go first: the
        connection is tracked before its packet leaves; when given (even empty), the
        tunnels to the egress ports commit it on arrival too (`commits_for`)."""
        if not result.cacheable or result.verdict is Verdict.HOLD or result.emitted:
            return None
        actions, extra_tags = self._actions(result)
        if commits is not None:
            actions = [*commits, *_committing(actions, result, self.locate)]
        result.match.record(_IN_PORT)
        match = Match.from_flow_match(result.match, in_port)
        flow = Flow(match, tuple(actions) if actions else (Drop(),))
        tags = frozenset(result.tags | extra_tags | {in_port_id})
        return DesiredFlow(flow, tags, result.expiry, self.clock())

    def _actions(self, result: SimulationResult) -> tuple[list[Action], set[str]]:
        """The datapath actions: the outputs of a FORWARD, and the copies mirrors make
        of any packet (a dropped or answered one too), in one list."""
        outputs = result.outputs if result.verdict is Verdict.FORWARD else ()
        if result.mirrored:
            outputs = (*outputs, *(c.output for c in result.mirrored))
        if not outputs:
            return [], set()
        t = translate(outputs, result.match, self.locate)
        if t.extra_mask:
            result.match.record(Field(t.extra_mask))
        return t.actions, t.tags

    # -- connection state -------------------------------------------------------------------

    def commits_for(
        self, result: SimulationResult, hosts: Sequence[str] | None = None
    ) -> list[CtCommit] | None:
        """For a result decided on the datapath's ct_state: the `CtCommit` actions of a
        new connection the datapath may track itself, else None.

        A reply's flow stays keyed on ct_state (the datapath said "a reply": it holds
        the connection). A new connection's flow does only when it commits the
        connection, so that a wildcard "new" flow never *drops*, or forwards without
        committing: a reply whose state a peer sent may come before the state (the
        peer's message still in the agent's queue, so the datapath says "new"); on a
        committing flow it is forwarded, as its own decision would forward it, and on
        any other flow keyed on the 5-tuple it misses, and the agent reads the state
        first (`KernelConntrack.refresh`). Otherwise the 5-tuple joins the mask.
        `hosts`: `_state_hosts(result)`, if the caller has it."""
        if result.match.peek(_CT_STATE)[0] & CT_REPLY:
            return None
        commits = None
        if self.kernel_ct is not None and self.flowstate is not None and result.flow_state:
            if hosts is None:
                hosts = self._state_hosts(result)
            # Egress on another host: its datapath commits what the tunnel brings
            # (`OutputTunnel.commit`), so the state need not travel, unless another
            # host must see it too (a stateful group's members).
            local: list[int] = []
            remote: set[str] = set()
            for out in result.outputs:
                where = self.locate(out.port_id)
                if where is None:
                    continue
                if where.local is not None:
                    local.append(where.local)
                elif (
                    self.tunnel_commit
                    and where.remote_ip
                    and where.vni is not None
                    and where.vni < VNI_COMMIT
                ):
                    remote.add(ip_to_str(where.remote_ip))
                else:
                    break  # a port the tunnel does not flag: the agent tracks them
            else:
                shared = any(h not in remote for h in hosts)
                commits = self.kernel_ct.commits(result, shared, local, bool(remote))
        if commits is None:
            result.match.record(KERNEL_TUPLE)
        return commits

    def track(self, result: SimulationResult, hosts: Sequence[str] | None = None) -> None:
        """Install the state the packet creates, send it to the hosts that will see the
        replies (`hosts`: `_state_hosts(result)`, if the caller has it), and invalidate
        the flows decided without it — all before the packet is forwarded, so a reply
        finds the state wherever it enters."""
        fs = self.flowstate
        if fs is None:
            return
        tags = fs.track(result.flow_state)
        addresses = self._state_hosts(result) if hosts is None else hosts
        if addresses:
            fs.share(addresses, result.flow_state)
        if tags:
            self.invalidate(tags)

    def _state_hosts(self, result: SimulationResult) -> list[str]:
        """Underlay addresses of the egress ports' hosts and of the other members of a
        stateful port group that keys the new state or holds the ingress or an egress
        port."""
        ports = [o.port_id for o in result.outputs]
        if self.group_ports is not None:
            devices = {e.key.device for e in result.flow_state}
            # And the groups of the ingress and egress ports (NAT state is keyed by
            # the router, yet its replies may enter any member of an uplinks group).
            devices.update(ports)
            if result.match.in_port is not None:
                devices.add(result.match.in_port)
            for device in devices:
                ports.extend(self.group_ports(device))
        addresses: dict[str, None] = {}
        for port_id in ports:
            where = self.locate(port_id)
            if where is not None and where.remote_ip:
                addresses[ip_to_str(where.remote_ip)] = None
        return list(addresses)

    def attach(self, result: SimulationResult, match: Match) -> None:
        """The installed flow keeps alive the state it read or created."""
        fs = self.flowstate
        if fs is None or not (result.state_refs or result.flow_state):
            return
        keys: list[ConnKey | NatKey] = list(result.state_refs)
        keys.extend(e.key for e in result.flow_state)
        for key in keys:
            fs.table.attach_flow(key, match)

    def install(self, desired: DesiredFlow) -> None:
        """The datapath, then the desired table: a failed install leaves nothing behind."""
        self.dp.install(desired.flow)
        self._installed(desired)

    def _installed(self, desired: DesiredFlow) -> None:
        self.flows.add(desired)
        self.metrics.installed.inc()

    def learn(self, result: SimulationResult) -> None:
        tags: set[str] = set()
        for update in result.state_updates:
            if isinstance(update, MacLearned):
                mac = mac_to_str(update.mac)
                tags |= self.cache.learn_mac(
                    update.bridge_id, update.vlan_id, update.mac, update.port_id
                )
                if self.writer is not None:
                    entry = tables.MacEntry(
                        vlan_id=update.vlan_id, mac_addr=mac, port_id=update.port_id
                    )
                    key, value = tables.encode_mac(entry)
                    self.writer.set(tables.mac_table(update.bridge_id), key, value)
            elif isinstance(update, ArpLearned):
                entry_arp = tables.ArpEntry(
                    ip_addr=ip_to_str(update.ip), mac_addr=mac_to_str(update.mac),
                    expiry=update.expiry,
                )  # fmt: skip
                tags |= self.cache.learn_arp(update.router_id, update.ip, update.mac, update.expiry)
                if self.writer is not None:
                    key, value = tables.encode_arp(entry_arp)
                    self.writer.set(tables.arp_table(update.router_id), key, value)
        if tags:
            self.invalidate(tags)
            self.on_tags(tags)

    def invalidate(self, tags: Iterable[str]) -> int:
        removed = self.flows.invalidate(tags)
        if not removed:
            return 0
        table = self.flowstate.table if self.flowstate is not None else None
        if table is not None:
            for d in removed:
                if table.carries(d.match):
                    # What the kernel saw last (a FIN, an RST, the last use) would go
                    # with the flow: the connection's entries take it first.
                    table.flow_removed(d.match, self.dp.stats(d.match))
        # At once (batch calls on the eBPF datapath): a change may invalidate thousands.
        self.dp.delete_many([d.match for d in removed])
        log.debug("invalidated %d flows (%s)", len(removed), " ".join(sorted(tags)[:8]))
        self.metrics.invalidated.inc(len(removed))
        return len(removed)
