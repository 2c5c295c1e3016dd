"""Ports: where a packet enters and leaves a device.

Ingress: a port that is down drops (a router port answers ICMP administratively
prohibited, as MidoNet's router port does; a bridge port has no address to answer
from, so it drops silently); a bridge port hands DHCP requests to the bridge's
DHCP server before any filter (as MidoNet does, so that anti-spoofing filters that only
allow a VM's own address do not starve it of its address); then the port's inbound
filter. Egress: a port that is down drops; the port's outbound filter; then an interior
port hands the packet to its peer, and an exterior port is where the packet leaves the
virtual network (on this host or another: the agent decides).

A port's mirrors (`mirror.py`) copy the packet first thing on ingress and, on egress,
once its outbound filter accepted it.

A `reject` verdict on a router port (or on a chain run for a router) answers with ICMP
administratively prohibited; on the bridge side there is no address to send it from, so
it is a drop.
"""

from __future__ import annotations

from tessera.packet import icmp as icmp_codes
from tessera.packet.match import FlowMatch
from tessera.simulation import dhcp, icmp, mirror
from tessera.simulation.chain import apply_chain
from tessera.simulation.context import Simulation
from tessera.simulation.result import TraceNode
from tessera.simulation.topology import PortSnap


def ingress(
    sim: Simulation, m: FlowMatch, port: PortSnap, hops: int, node: TraceNode | None
) -> bool:
    """Whether the packet gets past the port into its device."""
    sim.tags.add(port.id)
    if port.inbound_mirrors:
        mirror.copy(sim, m, port.inbound_mirrors, port.id, None, node, "port inbound")
    if not port.admin_up:
        if port.is_router:
            icmp.prohibited(sim, m, port, hops, node, from_down_port=True)
        sim.drop(f"port {port.id} is down", node)
        return False
    if not port.is_router:
        bridge = sim.snap.bridge(port.device_id)
        if bridge.dhcp_hosts and dhcp.serve(sim, m, bridge, port, hops, node):
            return False
    if port.inbound_filter is not None:
        verdict = apply_chain(
            sim, port.inbound_filter, m, port.id, None, node, "inbound filter", port.device_id
        )
        if verdict != "accept":
            reject(sim, m, port if port.is_router else None, verdict, hops, node)
            return False
    return True


def egress(
    sim: Simulation,
    m: FlowMatch,
    port: PortSnap,
    in_port: PortSnap,
    hops: int,
    node: TraceNode | None,
) -> str | None:
    """The peer port to continue at, or None when the branch ends here (output or drop).

    `in_port` is where the packet entered the device: the `in_ports` of the outbound
    filter, and where a router sends a reject's ICMP error.
    """
    sim.tags.add(port.id)
    if not port.admin_up:
        sim.drop(f"port {port.id} is down", node)
        return None
    if port.outbound_filter is not None:
        verdict = apply_chain(
            sim,
            port.outbound_filter,
            m,
            in_port.id,
            port.id,
            node,
            "outbound filter",
            port.device_id,
        )
        if verdict != "accept":
            reject(sim, m, in_port if in_port.is_router else None, verdict, hops, node)
            return None
    if port.outbound_mirrors:
        mirror.copy(sim, m, port.outbound_mirrors, in_port.id, port.id, node, "port outbound")
    if port.peer_id is not None:
        return port.peer_id
    sim.output(m, port.id)
    if node is not None:
        where = f"host {port.host_id}" if port.host_id else "no host (unbound)"
        node.add("output", port.id, f"out of port {port.id} on {where}")
    return None


def reject(
    sim: Simulation,
    m: FlowMatch,
    router_port: PortSnap | None,
    verdict: str,
    hops: int,
    node: TraceNode | None,
) -> None:
    """End the branch after a chain said drop or reject."""
    if verdict == "reject" and router_port is not None:
        icmp.send_error(
            sim,
            m,
            router_port,
            icmp_codes.DEST_UNREACHABLE,
            icmp_codes.ADMIN_PROHIBITED,
            hops,
            node,
        )
        sim.drop("rejected by a rule", node)
    elif verdict == "reject":
        sim.drop("rejected by a rule (no ICMP: not on a router)", node)
    else:
        sim.drop("dropped by a rule", node)
