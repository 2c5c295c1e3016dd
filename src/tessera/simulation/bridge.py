"""The bridge: MAC learning, forwarding, flooding, and ARP answers for what it knows.

- A bridge that is down drops everything.
- Source MACs are learned per VLAN segment (a port's `vlan_id`, 0 without one); learning
  is a state update in the result, written by the agent, never done here. A MAC seen on
  another port than the table says is a MAC move: the same update, to the new port.
  The MACs of linked router ports are known statically and never learned.
- Unicast to a known MAC goes to its port; to an unknown one, and broadcast/multicast,
  floods every other port of the segment, interior ones included. A flood carries the
  tag of the missing MAC entry, so that learning it invalidates the flood.
- A frame whose destination sits behind the port it came in by is dropped.
- An ARP request for a linked router port's address goes to that router port only (the
  router answers and learns the asker); one for a DHCP host or server is answered by
  the bridge (see `arp.py`).

VLANs are segments of one bridge: ports with the same `vlan_id` (or none) reach each
other and nothing else. Frames keep whatever 802.1Q tag they carry; a bridge does not
push or pop tags (the datapath has no such action).
"""

from __future__ import annotations

from tessera.packet import arp as arp_codes
from tessera.packet.addr import mac_to_str
from tessera.packet.ethernet import ETH_TYPE_ARP
from tessera.packet.match import FlowMatch
from tessera.simulation import arp
from tessera.simulation.actions import DeviceAction, Fork, ToPort
from tessera.simulation.chain import apply_chain
from tessera.simulation.context import Simulation
from tessera.simulation.errors import NotYetLoaded
from tessera.simulation.port import reject
from tessera.simulation.result import MacLearned, TraceNode
from tessera.simulation.tags import mac_tag
from tessera.simulation.topology import BridgeSnap, PortSnap

_MULTICAST = 0x0100_0000_0000


def process(
    sim: Simulation,
    m: FlowMatch,
    bridge: BridgeSnap,
    in_port: PortSnap,
    hops: int,
    node: TraceNode | None,
) -> DeviceAction:
    sim.tags.add(bridge.id)
    if bridge.unresolved_peers:
        raise NotYetLoaded("port", bridge.unresolved_peers[0])
    if not bridge.admin_up:
        sim.drop(f"bridge {bridge.name or bridge.id} is down", node)
        return None
    if bridge.inbound_filter is not None:
        verdict = apply_chain(
            sim, bridge.inbound_filter, m, in_port.id, None, node, "inbound filter", bridge.id
        )
        if verdict != "accept":
            reject(sim, m, None, verdict, hops, node)
            return None
    vlan = in_port.vlan
    table = sim.snap.mac_table(bridge.id)

    overlay = sim.mac_overlay
    src = m.eth_src
    if not src & _MULTICAST and src not in bridge.static_macs:
        sim.tags.add(mac_tag(bridge.id, vlan, src))
        known = (overlay and overlay.get((bridge.id, vlan, src))) or table.get((vlan, src))
        if known != in_port.id:
            overlay[(bridge.id, vlan, src)] = in_port.id
            update = MacLearned(bridge.id, vlan, src, in_port.id)
            if update not in sim.updates:
                sim.updates.append(update)
            if node is not None:
                what = "learn" if known is None else f"MAC move from port {known}:"
                node.add("learn", bridge.id, f"{what} {mac_to_str(src)} on port {in_port.id}")

    out: str | None = None
    if m.eth_type == ETH_TYPE_ARP and m.ip_proto == arp_codes.REQUEST:
        out = arp.toward_router(sim, m, bridge, in_port, node)
        if out is None and arp.bridge_reply(sim, m, bridge, in_port, hops, node):
            return None

    if out is None:
        dst = m.eth_dst
        if dst & _MULTICAST:
            return _flood(sim, m, bridge, in_port, hops, node, "broadcast/multicast")
        out = bridge.static_macs.get(dst)
        if out is None:
            sim.tags.add(mac_tag(bridge.id, vlan, dst))
            out = (overlay and overlay.get((bridge.id, vlan, dst))) or table.get((vlan, dst))
            if out is None:
                return _flood(sim, m, bridge, in_port, hops, node, f"{mac_to_str(dst)} unknown")
        if bridge.port_vlan.get(out) != vlan:
            # A stale entry (the port left the bridge or its VLAN) or another segment's
            # router.
            return _flood(sim, m, bridge, in_port, hops, node, f"{mac_to_str(dst)} unknown")
        if out == in_port.id:
            sim.drop(f"{mac_to_str(dst)} is behind the ingress port", node)
            return None
        if node is not None:
            node.add("forward", out, f"{mac_to_str(dst)} is behind port {out}")
    if bridge.outbound_filter is not None:
        verdict = apply_chain(
            sim, bridge.outbound_filter, m, in_port.id, out, node, "outbound filter", bridge.id
        )
        if verdict != "accept":
            reject(sim, m, None, verdict, hops, node)
            return None
    return ToPort(out, in_port, m)


def _flood(
    sim: Simulation,
    m: FlowMatch,
    bridge: BridgeSnap,
    in_port: PortSnap,
    hops: int,
    node: TraceNode | None,
    why: str,
) -> DeviceAction:
    if bridge.outbound_filter is not None:
        verdict = apply_chain(
            sim, bridge.outbound_filter, m, in_port.id, None, node, "outbound filter", bridge.id
        )
        if verdict != "accept":
            reject(sim, m, None, verdict, hops, node)
            return None
    targets = [p for p in bridge.segments.get(in_port.vlan, ()) if p != in_port.id]
    if node is not None:
        node.add("flood", bridge.id, f"flood ({why}) to {len(targets)} port(s)")
    if not targets:
        sim.drop("flood: the bridge has no other port", node)
        return None
    if len(targets) == 1:
        return ToPort(targets[0], in_port, m)
    return Fork(tuple(ToPort(p, in_port, m.copy()) for p in targets))
