"""Mirrors: copies of the packets a port or device sees, sent to another port.

MidoNet's port mirroring. Ports, bridges and routers name mirrors in
`inbound_mirror_ids` / `outbound_mirror_ids`, and each is consulted at one point of the
packet's path, with the packet as it is there (the rewrites made so far applied):

- a port's inbound mirrors as the packet enters the port, before anything else the port
  does (its inbound filter, a DHCP answer, the check that it is up);
- a port's outbound mirrors as the packet leaves it, after its outbound filter accepted;
- a device's inbound mirrors as the packet enters the device (`simulator._travel`),
  its outbound mirrors as it leaves (after the device's outbound filter and a router's
  rewrites; once for a flood, whose copies all leave the same).

A mirror copies the packet when any of its `conditions` holds (no condition: every
packet). Conditions are rule conditions, evaluated through the same compiled code as a
chain's rules, so the fields they read join the flow's mask like a filter's, and
`in_ports`/`out_ports` mean what they mean to the filter at that point. The copy goes
straight out of `to_port` — no filter, no device of the target's is simulated; the agent
sends it to the port's interface here or through the tunnel to the port's host, which
delivers it — and nothing of the original packet's path changes. A copy is a
`MirrorCopy` in the result, never one of its `outputs`: a dropped packet that was
mirrored stays a drop, and the hosts that receive copies are not sent connection state.

Every mirror consulted tags the flow (and so does its target port), so that a change to
a mirror, or to the mirror list of a port or device (tagged by its own id already),
invalidates exactly the flows that copy — or did not copy — because of it.
"""

from __future__ import annotations

from collections.abc import Sequence

from tessera.packet.match import FlowMatch
from tessera.simulation.context import Simulation
from tessera.simulation.result import TraceNode


def copy(
    sim: Simulation,
    m: FlowMatch,
    mirror_ids: Sequence[str],
    in_port: str,
    out_port: str | None,
    node: TraceNode | None,
    where: str,
) -> None:
    """Let each mirror of `mirror_ids` copy the packet as it is now.

    `in_port`/`out_port` are the ports the mirror conditions see (as a filter at this
    point would); `where` says, for the trace, which list the mirrors come from.
    """
    snap = sim.snap
    for mirror_id in mirror_ids:
        mirror = snap.mirror(mirror_id)
        sim.tags.update(mirror.tags)
        label = f"{where} mirror {mirror.name or mirror.id}"
        if mirror.conditions:
            i = mirror.first_match(m, in_port, out_port, 0, sim.forward)
            sim.count_rules(i + 1 if i >= 0 else len(mirror.conditions))  # as a chain's
            if i < 0:
                if node is not None:
                    node.add("mirror", mirror.id, f"{label}: no condition matches, no copy")
                continue
            why = f" (condition {i + 1}: {mirror.conditions[i].summary})"
        else:
            why = " (every packet)"
        target = snap.port(mirror.to_port)
        sim.tags.add(target.id)
        if not target.admin_up or target.peer_id is not None:
            if node is not None:
                state = "is down" if not target.admin_up else "is interior (linked)"
                node.add("mirror", mirror.id, f"{label}: port {target.id} {state}, no copy")
            continue
        sim.mirror_copy(mirror.id, m, target.id)
        if node is not None:
            node.add("mirror", mirror.id, f"{label} copies the packet to port {target.id}{why}")
