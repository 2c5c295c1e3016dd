"""Simulations over the cache: compile a `Snapshot` only when the topology changed.

Compiling is the expensive part (every device, route table and chain); learned MACs and
ARP entries change far more often and are swapped in with `Snapshot.with_state`, O(1).
Chains the change did not touch are reused from the previous snapshot, and the agent calls
`prepare` when the topology has settled after a change, so that the first packet after a
change does not pay for the compile (a miss costs hundreds of microseconds more when it
has to compile first). Flow state is not swapped at all: the snapshot holds the agent's
table view, which follows the table as it changes.
"""

from __future__ import annotations

from collections.abc import Callable

from tessera.agent.cache import TopologyCache
from tessera.packet.match import FlowMatch
from tessera.simulation import simulate
from tessera.simulation.flowstate import (
    EMPTY_FLOW_STATE,
    FIRST_FREE,
    FlowStateView,
    NatAllocator,
)
from tessera.simulation.loadbalancer import RANDOM_PICKER, MemberPicker
from tessera.simulation.result import SimulationResult
from tessera.simulation.topology import Snapshot


class SnapshotSimulator:
    def __init__(
        self,
        cache: TopologyCache,
        flow_state: FlowStateView = EMPTY_FLOW_STATE,
        allocator: NatAllocator = FIRST_FREE,
        picker: MemberPicker = RANDOM_PICKER,
    ) -> None:
        """`flow_state` is the agent's live table view (read in place, never copied);
        `allocator` picks dynamic SNAT sources (the agent's leases port blocks);
        `picker` the members of new load-balanced connections."""
        self.cache = cache
        self.flow_state = flow_state
        self.allocator = allocator
        self.picker = picker
        self._topology_generation = -1
        self._generation = -1
        self._base: Snapshot | None = None
        self._snap: Snapshot | None = None
        self.compiles = 0
        # Told of each newly compiled topology before any simulation reads it (the
        # agent gives its ports their datapath conntrack zones from it).
        self.on_compile: Callable[[Snapshot], None] | None = None

    def snapshot(self) -> Snapshot:
        view = self.cache.view()
        if self._base is None or view.topology_generation != self._topology_generation:
            self._base = Snapshot.from_objects(
                view.objects, previous=self._base, fronts=view.fronts
            )
            self._topology_generation = view.topology_generation
            self._generation = -1
            self.compiles += 1
            if self.on_compile is not None:
                self.on_compile(self._base)
        if self._snap is None or view.generation != self._generation:
            self._snap = self._base.with_state(view.macs, view.arps, self.flow_state)
            self._generation = view.generation
        return self._snap

    def prepare(self) -> None:
        """Compile now what the next simulation would otherwise compile."""
        self.snapshot()

    def simulate(
        self,
        frame: bytes,
        in_port_id: str,
        now: float,
        arp_failed: frozenset[tuple[str, int]] = frozenset(),
        match: FlowMatch | None = None,
    ) -> SimulationResult:
        if match is None:
            match = FlowMatch.from_frame(in_port_id, frame)
        return simulate(
            self.snapshot(),
            match,
            frame,
            now,
            arp_failed=arp_failed,
            allocator=self.allocator,
            picker=self.picker,
        )
