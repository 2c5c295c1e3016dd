"""Flows over time: idle expiry, desired-vs-installed repair, and restart adoption.

- Expiry: a flow idle longer than its class allows (`flowtable.IDLE_TIMEOUTS`) is removed;
  "idle" is judged from the datapath's own last-used counter, so a flow that forwards
  millions of packets in the kernel without the agent seeing one stays.
- Reconciliation: every sweep compares the desired table with what the datapath really
  holds; a missing or different flow is installed again, a flow nobody desires is
  removed (Cilium's reconciler: keys collected before deleting).
- Restart: a new agent finds the flows its predecessor left in the kernel and must not
  flush them (an iperf3 stream must survive). It *adopts* them: each keeps forwarding
  while it is re-simulated from its own match (`synth.frame_for`); still right → kept
  as is (counters included), different → replaced, unknowable for too long → removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from tessera.agent.cache import TopologyCache
from tessera.agent.flowstate.snat import NAT_BLOCK
from tessera.agent.flowtable import DesiredFlow, FlowTable
from tessera.agent.metrics import AgentMetrics
from tessera.agent.ports import PortManager
from tessera.agent.synth import frame_for
from tessera.agent.upcall import Simulator, UpcallHandler
from tessera.datapath.base import Datapath, DatapathError, InstalledFlow, Match
from tessera.packet.match import FIELD_NAMES, FlowMatch
from tessera.simulation.errors import NotYetLoaded

log = logging.getLogger(__name__)

_CT_STATE = FIELD_NAMES.index("ct_state")

ADOPT_TIMEOUT = 30.0  # an adopted flow not verified by then is removed
ADOPT_BATCH = 256  # adopted flows re-simulated per tick


@dataclass
class SweepResult:
    expired: int = 0
    repaired: int = 0
    removed: int = 0


SWEEP_STEP = 512  # desired flows one step of a sweep judges (the agent: between misses)


class Sweep:
    """One pass of expiry and reconciliation against one dump of the datapath
    (`installed`, consumed; read here when not given), a step at a time.

    Why steps: the agent sweeps on the thread that answers misses, and at tens of
    thousands of flows a whole pass (~15 µs a flow) would hold misses back for a
    second every two. Between two steps flows come and go, so a step judges only
    desired flows that are still the table's own (one replaced or removed since the
    pass began was decided by whoever did that), and the last step removes only what is
    still desired by nobody (a flow installed since the dump is desired)."""

    def __init__(
        self,
        dp: Datapath,
        flows: FlowTable,
        now: float,
        metrics: AgentMetrics,
        keep: Callable[[Match], bool] = lambda m: False,
        installed: dict[Match, InstalledFlow] | None = None,
        read_from: float | None = None,
    ) -> None:
        """`read_from`: when the reading of `installed` began, if it was read in parts
        with misses between (`Datapath.dump_in_steps`): a flow desired since then may
        have been installed where the read had already passed, so its absence is not
        a loss to repair."""
        self.dp = dp
        self.read_from = read_from
        self.flows = flows
        self.now = now
        self.metrics = metrics
        self.keep = keep
        self.installed = dp.dump() if installed is None else installed
        self.result = SweepResult()
        self.done = False
        self._pending = flows.snapshot()
        self._next = 0

    def step(self, budget: int | None = SWEEP_STEP) -> bool:
        """Judge up to `budget` more desired flows (None: all); after the last one,
        remove what nobody desires. True once the pass is complete."""
        if self.done:
            return True
        total = len(self._pending)
        end = total if budget is None else min(total, self._next + budget)
        expired: list[Match] = []
        for i in range(self._next, end):
            self._judge(self._pending[i], expired)
        if expired:  # one batch call a step on the eBPF datapath, not one a flow
            self.dp.delete_many(expired)
        self._next = end
        if end < total:
            return False
        self._pending = []
        self._remove_undesired()
        if self.result.expired:
            self.metrics.expired.inc(self.result.expired)
        if self.result.removed:
            self.metrics.reconciled_removed.inc(self.result.removed)
        self.done = True
        return True

    def _judge(self, desired: DesiredFlow, expired: list[Match]) -> None:
        """Expire (into `expired`, for the caller to delete), repair or keep."""
        inst = self.installed.pop(desired.match, None)
        if self.flows.get(desired.match) is not desired:
            return  # replaced or removed since the pass began
        if inst is None and self.read_from is not None and desired.created > self.read_from:
            return  # installed after the read began: maybe where it had already passed
        last = desired.created
        if inst is not None and inst.stats.last_used is not None:
            last = max(last, inst.stats.last_used)
        if self.now - last > desired.idle_timeout:
            log.debug("flow %s expired (idle %.1fs)", desired.match, self.now - last)
            self.flows.remove(desired.match)
            expired.append(desired.match)
            self.result.expired += 1
            return
        if inst is None or inst.flow.actions != desired.flow.actions:
            log.debug("repairing flow %s (installed: %s)", desired.match, inst)
            try:
                self.dp.install(desired.flow)
                self.result.repaired += 1
            except DatapathError as exc:
                log.warning("repairing flow %s failed: %s", desired.match, exc)

    def _remove_undesired(self) -> None:
        # Whatever remains was desired by nobody, unless installed since the dump.
        gone = [m for m in self.installed if m not in self.flows and not self.keep(m)]
        if gone:
            log.debug("removing %d flows desired by nobody", len(gone))
            self.result.removed += self.dp.delete_many(gone)


def sweep(
    dp: Datapath,
    flows: FlowTable,
    now: float,
    metrics: AgentMetrics,
    keep: Callable[[Match], bool] = lambda m: False,
    installed: dict[Match, InstalledFlow] | None = None,
) -> SweepResult:
    """One whole pass of `Sweep` at once (`installed` consumed; read when not given)."""
    pass_ = Sweep(dp, flows, now, metrics, keep, installed)
    pass_.step(None)
    return pass_.result


class Adopter:
    """Flows found installed at start, kept forwarding until verified or given up."""

    def __init__(
        self,
        dp: Datapath,
        flows: FlowTable,
        ports: PortManager,
        cache: TopologyCache,
        simulator: Simulator,
        upcall: UpcallHandler,
        metrics: AgentMetrics,
        clock: Callable[[], float],
    ) -> None:
        self.dp = dp
        self.flows = flows
        self.ports = ports
        self.cache = cache
        self.sim = simulator
        self.upcall = upcall
        self.metrics = metrics
        self.clock = clock
        self.pending: dict[Match, InstalledFlow] = {}
        self.deadline = 0.0
        self.kept = 0
        self.replaced = 0
        self.removed = 0

    def adopt(self) -> int:
        self.pending = self.dp.dump()
        self.deadline = float("inf")  # counted from when the bindings are known
        if self.pending:
            log.info("adopting %d flows left installed by a previous agent", len(self.pending))
        return len(self.pending)

    def holds(self, match: Match) -> bool:
        return match in self.pending

    @property
    def done(self) -> bool:
        return not self.pending

    def step(self, wall_now: float) -> None:
        if not self.pending:
            return
        if self.deadline == float("inf"):
            if not self.cache.ports_ready():
                return  # the NSDB has not told us our bindings yet: judge nothing
            self.deadline = self.clock() + ADOPT_TIMEOUT
        expired = self.clock() >= self.deadline
        for match, inst in list(self.pending.items())[:ADOPT_BATCH]:
            verdict = self._verify(match, inst, wall_now)
            if verdict is None and not expired:
                continue  # not decidable yet: keep forwarding, try again next tick
            del self.pending[match]
            if verdict is None or verdict is False:
                self.dp.delete(match)
                self.removed += 1
        if expired and self.pending:
            for match in list(self.pending):
                self.dp.delete(match)
                self.removed += 1
            self.pending.clear()
        if not self.pending:
            log.info(
                "adoption done: %d kept, %d replaced, %d removed",
                self.kept, self.replaced, self.removed,
            )  # fmt: skip

    def _verify(self, match: Match, inst: InstalledFlow, wall_now: float) -> bool | None:
        """True: kept; False: remove it; None: cannot tell yet."""
        port = match.in_port
        if port is None:
            return False  # the agent never installs a flow without its ingress port
        port_id = self.ports.port_of(port)
        if port_id is None:
            if self.cache.ports_ready() and not self.ports.pending():
                return False  # every binding is known and attached: none explains it
            return None  # its binding may not be loaded (or attached) yet
        frame = frame_for(match)
        try:
            # The datapath's answer the flow is keyed on (0 unless it tracks connections).
            fm = FlowMatch.from_frame(port_id, frame, match.values[_CT_STATE])
            result = self.sim.simulate(frame, port_id, wall_now, match=fm)
        except NotYetLoaded as exc:
            if exc.kind == NAT_BLOCK and self.upcall.flowstate is not None:
                self.upcall.flowstate.snat.lease_for(exc.id)  # simulated again next round
            else:
                self.cache.want(exc.kind, exc.id)
            return None
        except Exception as exc:  # a match the simulation cannot take: not ours to keep
            log.debug("adopted flow %s does not simulate: %s", match, exc)
            return False
        # What the flow's packets taught the bridges and routers is learned again: the
        # previous agent's learned entries left the NSDB with its session.
        self.upcall.learn(result)
        commits = self.upcall.commits_for(result) if result.ct_kernel else None
        if result.flow_state and commits is None:
            # State the restart lost (or never saved): made again. Not for a flow that
            # commits connections in the datapath: its packet here is made up (ports
            # 0), and the datapath's table, pinned, kept the real ones.
            self.upcall.track(result)
        desired = self.upcall.desired_flow(result, port, port_id, commits)
        if desired is None:
            return False
        if commits is None:
            self.upcall.attach(result, match)
        if desired.match == match and desired.flow.actions == inst.flow.actions:
            self.flows.add(DesiredFlow(desired.flow, desired.tags, desired.expiry, self.clock()))
            self.kept += 1
            return True
        if desired.match == match:
            try:
                self.upcall.install(desired)
            except DatapathError:
                return False
            self.replaced += 1
            return True
        return False
