"""tessera.simulation: what the virtual network does with a packet, as a pure function.

`simulate(snapshot, match, frame, now)` walks a packet through ports, bridges, routers
and their filter chains over a frozen `Snapshot` and returns a `SimulationResult`:
outputs on virtual ports, drops with reasons, packets to emit, the flow match with the
mask of what was read, the tags of what the decision depended on, state to learn, and
on request a trace. No I/O, time passed in (MidoNet's design).

How an agent uses it, on a missed packet entering virtual port P:

    snap = Snapshot.from_objects(objects, mac_tables, arp_tables, previous=old_snap)
    snap = snap.with_state(flow_state=FlowStateView(conntrack_keys, nat_bindings))
    try:
        result = simulate(snap, FlowMatch.from_frame(P, frame), frame, now)
    except NotYetLoaded as missing:
        ...load missing.kind/missing.id, rebuild, simulate again (no side effect happened)
    write result.state_updates; install and push result.flow_state (connection
        tracking entries, NAT bindings) before the packet leaves;
    send result.emitted (exterior ports, frames as is);
    FORWARD: send the packet to result.outputs; DROP: drop it;
    if result.cacheable: install a flow for result.match (its mask) with those actions,
        tagged result.tags, idle timeout by result.expiry;
    HOLD: keep the packet; simulate it again when a tag `arp:...` of result.waits
        changes, or after a timeout with `arp_failed=[(w.router_id, w.ip) ...]`.

`tessera.simulation.trace` turns a packet description into a traced simulation
(`trace_packet`, JSON-ready); `tessera trace` (`tessera.cli.trace`) draws it, and the
API's `POST /traces` runs it over the whole topology (`tessera.api.snapshot`). The
package imports only `tessera.model` and `tessera.packet` (tests/unit/test_import_graph.py).
"""

from tessera.simulation.context import MAX_HOPS
from tessera.simulation.errors import NotYetLoaded, SimulationError
from tessera.simulation.flowstate import (
    ConnKey,
    ConntrackEntry,
    FirstFreeAllocator,
    FlowStateEntry,
    FlowStateView,
    NatAllocator,
    NatBinding,
    NatEntry,
    NatKey,
    NatRange,
    SnatRequest,
)
from tessera.simulation.result import (
    ArpLearned,
    ArpWait,
    EmittedPacket,
    ExpiryClass,
    MacLearned,
    Output,
    SimulationResult,
    StateUpdate,
    TraceNode,
    Verdict,
)
from tessera.simulation.simulator import simulate, simulate_frame
from tessera.simulation.tags import arp_tag, conntrack_tag, mac_tag, nat_tag
from tessera.simulation.topology import Snapshot

__all__ = [
    "MAX_HOPS",
    "ArpLearned",
    "ArpWait",
    "ConnKey",
    "ConntrackEntry",
    "EmittedPacket",
    "ExpiryClass",
    "FirstFreeAllocator",
    "FlowStateEntry",
    "FlowStateView",
    "MacLearned",
    "NatAllocator",
    "NatBinding",
    "NatEntry",
    "NatKey",
    "NatRange",
    "NotYetLoaded",
    "Output",
    "SimulationError",
    "SimulationResult",
    "SnatRequest",
    "Snapshot",
    "StateUpdate",
    "TraceNode",
    "Verdict",
    "arp_tag",
    "conntrack_tag",
    "mac_tag",
    "nat_tag",
    "simulate",
    "simulate_frame",
]
