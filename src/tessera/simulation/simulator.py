"""The driver: one loop that walks a packet from port to device to port.

`simulate` is a pure function of (flow match, frame bytes, snapshot, time): devices
decide (`bridge.process`, `router.process` return a `DeviceAction`), this loop moves the
packet on — through the egress port, to the peer of an interior port, into the next
device — and forks on floods. Each branch may cross at most `MAX_HOPS` devices; beyond,
the topology has a loop and the whole packet is dropped (as MidoNet does), with a short
expiry so a fixed topology takes over quickly. The other cost limits (`context.MAX_*`:
device visits, rules tested, chain nesting) end the run the same way, and the result
names the limit (`SimulationResult.limit`); a trace stops growing at `MAX_TRACE_NODES`
steps and says so.

A device's mirrors (`mirror.py`) copy the packet here, as it enters the device and as
the device's action sends it on; a port's, in `port.py`.

Packets the network generates (ARP requests and replies, ICMP, DHCP) leave a port: from
an exterior port they are emitted as they are; from an interior one they are simulated
onwards, in a child run, until they leave the virtual network, so `EmittedPacket`s are
always on exterior ports. A generated packet that would wait for ARP is dropped (MidoNet
does the same for generated packets).
"""

from __future__ import annotations

from collections.abc import Collection

from tessera.packet.addr import ip_to_str, mac_to_str
from tessera.packet.errors import PacketError
from tessera.packet.ethernet import Ethernet
from tessera.packet.match import FlowMatch
from tessera.simulation import bridge, mirror, port, router
from tessera.simulation.actions import Fork, ToPort
from tessera.simulation.context import LimitExceeded, Simulation, settle_ttl
from tessera.simulation.flowstate import FIRST_FREE, NatAllocator
from tessera.simulation.loadbalancer import RANDOM_PICKER, MemberPicker
from tessera.simulation.result import (
    MAX_TRACE_NODES,
    EmitKind,
    ExpiryClass,
    SimulationResult,
    TraceBudget,
    TraceNode,
    Verdict,
)
from tessera.simulation.topology import BridgeSnap, RouterSnap, Snapshot


def simulate(
    snapshot: Snapshot,
    match: FlowMatch,
    frame: bytes,
    now: float,
    *,
    trace: bool = False,
    arp_failed: Collection[tuple[str, int]] = (),
    allocator: NatAllocator = FIRST_FREE,
    picker: MemberPicker = RANDOM_PICKER,
) -> SimulationResult:
    """Everything the virtual network does with `frame`, which entered port `match.in_port`.

    `match` must be `FlowMatch.from_frame(in_port, frame)` (or `from_packet`); its mask
    records what the decision read. `arp_failed` holds `(router_id, ip)` pairs whose ARP
    resolution timed out: packets held for them now get ICMP unreachable instead.
    Connection tracking and NAT read `snapshot.flow_state`; `allocator` chooses the
    source of new dynamic SNAT bindings (see `flowstate.NatAllocator`), `picker` the
    member of a new load-balanced connection (see `loadbalancer.MemberPicker`).

    Raises `NotYetLoaded` when the snapshot lacks an object on the packet's path.
    """
    sim = Simulation(
        snapshot,
        now,
        frame,
        arp_failed=frozenset(arp_failed),
        allocator=allocator,
        picker=picker,
    )
    sim.ct_match = match
    sim.generator = _generate
    in_port = match.in_port
    root = None
    if trace:
        root = TraceNode("packet", in_port, describe(match), budget=TraceBudget())
    if in_port is None:
        sim.drop("the packet has no ingress port", root)
        return sim.result(match, root)
    try:
        _travel(sim, match, in_port, 0, root)
    except LimitExceeded as exc:
        # Drop the whole packet, and cache the drop (briefly): a packet that agrees on
        # what was read so far would take the same path to the same limit.
        _truncated(root)
        if root is not None:
            root.add_final("drop", None, str(exc))
        settle_ttl(match, ())
        visits, rules = sim.cost()
        return SimulationResult(
            Verdict.DROP,
            match,
            tags=frozenset(sim.tags),
            expiry=ExpiryClass.ERROR,
            drop_reason=str(exc),
            trace=root,
            limit=exc.limit,
            devices_visited=visits,
            rules_evaluated=rules,
        )
    _truncated(root)
    return sim.result(match, root)


def _truncated(root: TraceNode | None) -> None:
    """End a trace that ran out of steps with a line that says so."""
    if root is not None and root.budget is not None and root.budget.refused:
        refused = root.budget.refused
        root.add_final(
            "note",
            None,
            f"trace truncated: {refused} more step(s) not shown (at most {MAX_TRACE_NODES})",
        )


def simulate_frame(
    snapshot: Snapshot, in_port: str, frame: bytes, now: float, *, trace: bool = False
) -> SimulationResult:
    """`simulate` for a raw frame; raises PacketError if its headers cannot be parsed."""
    return simulate(snapshot, FlowMatch.from_frame(in_port, frame), frame, now, trace=trace)


def _travel(sim: Simulation, m: FlowMatch, port_id: str, hops: int, node: TraceNode | None) -> None:
    """The packet enters `port_id`; follow it until every branch has ended."""
    snap = sim.snap
    while True:
        in_port = snap.port(port_id)
        pnode = None
        if node is not None:
            pnode = node.add("port", port_id, f"enters port {port_id}")
        if not port.ingress(sim, m, in_port, hops, pnode):
            return
        hops += 1
        sim.visit(hops)
        dev: RouterSnap | BridgeSnap
        if in_port.is_router:
            dev = dev_r = snap.router(in_port.device_id)
            dnode = None
            if pnode is not None:
                dnode = pnode.add("router", dev_r.id, f"router {dev_r.name or dev_r.id}")
            if dev_r.inbound_mirrors:
                mirror.copy(sim, m, dev_r.inbound_mirrors, port_id, None, dnode, "router inbound")
            action = router.process(sim, m, dev_r, in_port, hops, dnode)
        else:
            dev = dev_b = snap.bridge(in_port.device_id)
            dnode = None
            if pnode is not None:
                dnode = pnode.add("bridge", dev_b.id, f"bridge {dev_b.name or dev_b.id}")
            if dev_b.inbound_mirrors:
                mirror.copy(sim, m, dev_b.inbound_mirrors, port_id, None, dnode, "bridge inbound")
            action = bridge.process(sim, m, dev_b, in_port, hops, dnode)
        if action is None:
            return
        if dev.outbound_mirrors:
            _mirror_out(sim, dev, action, port_id, dnode)
        if isinstance(action, Fork):
            for branch in action.branches:
                bnode = None
                if dnode is not None:
                    bnode = dnode.add("branch", branch.port_id, f"copy to port {branch.port_id}")
                peer = _leave(sim, branch, hops, bnode)
                if peer is not None:
                    _travel(sim, branch.match, peer, hops, bnode)
            return
        peer = _leave(sim, action, hops, dnode)
        if peer is None:
            return
        m = action.match
        port_id = peer


def _mirror_out(
    sim: Simulation,
    dev: RouterSnap | BridgeSnap,
    action: ToPort | Fork,
    in_port: str,
    node: TraceNode | None,
) -> None:
    """The device's outbound mirrors see the packet leave: once, by its one port or as
    the flood (whose copies leave alike, so the conditions see no `out_port`)."""
    kind = "router" if isinstance(dev, RouterSnap) else "bridge"
    if isinstance(action, Fork):
        m, out_port = action.branches[0].match, None
    else:
        m, out_port = action.match, action.port_id
    mirror.copy(sim, m, dev.outbound_mirrors, in_port, out_port, node, f"{kind} outbound")


def _leave(sim: Simulation, to: ToPort, hops: int, node: TraceNode | None) -> str | None:
    out = sim.snap.port(to.port_id)
    pnode = None
    if node is not None:
        pnode = node.add("port", out.id, f"leaves by port {out.id}")
    return port.egress(sim, to.match, out, to.in_port, hops, pnode)


def _generate(
    sim: Simulation,
    port_id: str,
    eth: Ethernet,
    kind: EmitKind,
    hops: int,
    node: TraceNode | None,
    *,
    from_down_port: bool = False,
) -> None:
    out = sim.snap.port(port_id)
    sim.tags.add(port_id)
    if not out.admin_up and not from_down_port:
        if node is not None:
            node.add("drop", port_id, f"generated {kind} not sent: port {port_id} is down")
        return
    frame = eth.build()
    if out.peer_id is None:
        sim.emit(port_id, frame, kind)
        if node is not None:
            node.add("output", port_id, f"emitted out of port {port_id}")
        return
    child = sim.child(frame)
    try:
        gm = FlowMatch.from_frame(out.peer_id, frame)
    except PacketError as exc:  # we built it: a bug, but never a crash of the agent
        sim.drop(f"generated {kind} is malformed: {exc}", node)
        return
    try:
        _travel(child, gm, out.peer_id, hops, node)
    except LimitExceeded as limit:  # a name per exception type: mypyc types names
        sim.limit = limit.limit
        if node is not None:
            node.add("drop", None, f"generated {kind} dropped: {limit}")
        return
    sim.absorb(child, eth, kind)


def describe(m: FlowMatch) -> str:
    """One line for the trace's root: the packet as it arrived (records nothing)."""
    f = m.original()
    text = f"{mac_to_str(f['eth_src'])} > {mac_to_str(f['eth_dst'])}"
    if f["vlan_id"]:
        text += f" vlan {f['vlan_id']}"
    eth_type = f["eth_type"]
    if eth_type == 0x0800:
        text += f", {ip_to_str(f['ip_src'])} > {ip_to_str(f['ip_dst'])}"
        text += f" proto {f['ip_proto']} ttl {f['ip_ttl']}"
        if f["ip_proto"] in (6, 17, 132):
            text += f" ports {f['tp_src']} > {f['tp_dst']}"
        elif f["ip_proto"] == 1:
            text += f" icmp type {f['tp_src']} code {f['tp_dst']}"
    elif eth_type == 0x0806:
        op = {1: "request", 2: "reply"}.get(f["ip_proto"], str(f["ip_proto"]))
        text += f", ARP {op} {ip_to_str(f['ip_src'])} > {ip_to_str(f['ip_dst'])}"
    else:
        text += f", EtherType {eth_type:#06x}"
    return text
