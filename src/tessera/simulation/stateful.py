"""Connection tracking and NAT inside a simulation (MidoNet's ConnTrackState, NatState).

Every decision reads the packet through the flow match (so the mask holds the 5-tuple
of any flow that depends on state) and the state through the snapshot's read-only
`FlowStateView`; what it looked up is tagged (`conntrack_tag`, `nat_tag`), found or not,
so that an entry arriving or leaving invalidates the flows it decided. New state is
collected on the `Simulation` and only becomes part of a FORWARD result: nothing is
written here.

- `is_forward`: asked by `match_forward_flow`/`match_return_flow` conditions, answered
  once per simulation from the packet's headers on arrival and its ingress device; a
  packet the network generated (an ICMP error) counts as a return flow, as in MidoNet.
  When the datapath tracks connections itself (`tessera.datapath.conntrack`: the
  ingress port has a zone, the agent's number for that same device) it has answered
  already, in the packet's `ct_state`: the answer is read from there, and the flow is
  keyed on `ct_state` instead of the 5-tuple (`Simulation.ct_kernel`), so one flow
  serves every connection. The agent then commits new connections in the datapath
  (`CtCommit`) or, where it cannot, keys the flow on the 5-tuple after all
  (`KERNEL_TUPLE`).
- `track`: at each output of a forward flow that was asked about, the connection as it
  leaves (after NAT) on the egress device becomes a `ConntrackEntry`.
- `nat` / `reverse_nat`: the `dnat`/`snat` and `rev_dnat`/`rev_snat` rules. A rule whose
  single target is one address with ports 0-0 is a 1:1 static translation (a floating
  IP): the address is rewritten and no state is kept. An ICMP echo is translated by its
  identifier, which takes the place of both ports: dynamic SNAT gives it a new one from
  the target's ports (so two hosts pinging one address with one id never collide) and
  its reply gets the original one back; DNAT keeps it.

Fragments (MidoNet let a floating IP match any packet and a dynamic translation only
unfragmented ones): a static translation rewrites every fragment, its addresses being
all it changes, so fragmented datagrams cross a floating IP both ways. A dynamic one
keys its binding by ports that only the first fragment carries: it drops every fragment
of TCP, UDP or ICMP, the first included (translated alone, it would only be a datagram
its receiver can never reassemble); dropped in a router's filter, the first fragment is
answered "fragmentation needed" (`router`). A reverse rule cannot tell a later
fragment's connection either: it passes it over untranslated (a first fragment, which has
the ports, is translated), so a fragmented reply does not cross a dynamic translation.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from tessera.packet.addr import ip_to_str
from tessera.packet.ethernet import ETH_TYPE_IPV4
from tessera.packet.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from tessera.packet.match import CT_REPLY, CT_TRACKED, Field, FlowMatch
from tessera.simulation import related
from tessera.simulation.flowstate import (
    ConnKey,
    ConntrackEntry,
    NatBinding,
    NatEntry,
    NatKey,
    NatRange,
    SnatRequest,
    nat_return,
)
from tessera.simulation.result import TraceNode
from tessera.simulation.rules import CompiledRule
from tessera.simulation.tags import conntrack_tag, nat_tag

if TYPE_CHECKING:  # the simulation calls in here; only its type is needed
    from tessera.simulation.context import Simulation

_ECHO = (0, 8)
_TRACK = Field.IP_PROTO | Field.IP_SRC | Field.IP_DST | Field.TP_SRC | Field.TP_DST | Field.ICMP_ID
_NAT_PROTOS = (PROTO_TCP, PROTO_UDP, PROTO_ICMP)
_PROTO = Field.ETH_TYPE | Field.IP_PROTO
_ADDRS = Field.IP_SRC | Field.IP_DST
_PORTS = Field.TP_SRC | Field.TP_DST
# What a decision on the connection reads when the datapath did not answer it: the
# fields a flow keyed without `ct_state` must match (the agent records them on a
# result whose new connections it cannot commit in the datapath).
KERNEL_TUPLE = _PROTO | _ADDRS | _PORTS | Field.ICMP_ID | Field.IP_FRAG


def _arrival_key(m: FlowMatch) -> tuple[int, int, int, int, int] | None:
    """(proto, src, dst, sport, dport) of the packet on arrival, or None if untracked."""
    eth_type, proto = m.arrival(_PROTO)
    if eth_type != ETH_TYPE_IPV4:
        return None
    if proto in (PROTO_TCP, PROTO_UDP):
        src, dst, sport, dport = m.arrival(_ADDRS | _PORTS)
        return proto, src, dst, sport, dport
    if proto == PROTO_ICMP:
        (icmp_type,) = m.arrival(Field.TP_SRC)
        if icmp_type not in _ECHO:
            return None
        src, dst, ident = m.arrival(_ADDRS | Field.ICMP_ID)
        return proto, src, dst, ident, ident
    return None


def is_forward(sim: Simulation, node: TraceNode | None = None) -> bool:
    """Whether the packet is a forward flow: no tracked connection it is a reply to."""
    if sim.ct_forward is not None:
        return sim.ct_forward
    sim.stateful = True
    if sim.generated:
        sim.ct_forward = False
        if node is not None:
            node.add("conntrack", None, "generated packet: a return flow")
        return False
    m = sim.ct_match
    assert m is not None, "the driver sets the match as it arrived"
    in_port = m.in_port
    assert in_port is not None
    port = sim.snap.port(in_port)
    ct_state = m.ct_state
    if ct_state & CT_TRACKED:
        # The datapath looked the reversed tuple up in the zone of this port's device.
        device = sim.snap.conn_device(port)
        if device != port.device_id:
            sim.tags.add(device)
        found = bool(ct_state & CT_REPLY)
        sim.ct_forward = not found
        sim.ct_kernel = True
        if node is not None:
            what = "return flow" if found else "forward flow"
            node.add("conntrack", None, f"{what} (the datapath's connection table)")
        return not found
    tuple5 = _arrival_key(m)
    if tuple5 is None and related.arrived_as_error(m):
        return related.is_forward_error(sim, port, node)
    if tuple5 is None:
        sim.ct_forward = True
        sim.ct_match = None  # untracked: its outputs create no entry (`Simulation.output`)
        if node is not None:
            node.add("conntrack", None, "not tracked (not TCP, UDP or ICMP echo): forward flow")
        return True
    device = sim.snap.conn_device(port)
    if device != port.device_id:
        sim.tags.add(device)
    key = ConnKey(tuple5[0], tuple5[1], tuple5[2], tuple5[3], tuple5[4], device)
    probe = key.reversed()
    sim.tags.add(conntrack_tag(probe))
    found = probe in sim.snap.flow_state.conntrack
    sim.ct_forward = not found
    if found:
        sim.state_refs[probe] = None
    if node is not None:
        if found:
            node.add("conntrack", None, f"return flow of {probe.describe()}")
        else:
            node.add("conntrack", None, f"forward flow {key.describe()}")
    return not found


def track(sim: Simulation, m: FlowMatch, port_id: str) -> ConnKey | None:
    """The connection a forward flow creates by leaving at `port_id` (None if none)."""
    if not sim.ct_forward or sim.generated:
        return None
    if sim.ct_kernel:
        # Read without recording: the flow is keyed on ct_state, and the agent commits
        # the connection in the datapath (or records KERNEL_TUPLE where it cannot).
        src, dst, proto, tp_src, tp_dst, ident = m.peek(_TRACK)  # FIELD_NAMES order
        if proto == PROTO_ICMP:
            if tp_src not in _ECHO:
                return None
            sport = dport = ident
        elif proto in (PROTO_TCP, PROTO_UDP):
            sport, dport = tp_src, tp_dst
        else:
            return None
    else:
        proto = m.ip_proto
        if proto == PROTO_ICMP:
            if m.tp_src not in _ECHO:
                return None
            sport = dport = m.icmp_id
        elif proto in (PROTO_TCP, PROTO_UDP):
            sport, dport = m.tp_src, m.tp_dst
        else:
            return None
        src, dst = m.ip_src, m.ip_dst
    device = sim.snap.conn_device(sim.snap.port(port_id))
    key = ConnKey(proto, src, dst, sport, dport, device)
    sim.tags.add(conntrack_tag(key))
    sim.new_state[ConntrackEntry(key)] = None
    return key


# -- NAT --------------------------------------------------------------------------------


def _nat_tuple(m: FlowMatch) -> tuple[int, int, int, int, int] | None:
    """(proto, src, sport, dst, dport) as the packet is now, if NAT applies to it."""
    if m.eth_type != ETH_TYPE_IPV4:
        return None
    proto = m.ip_proto
    if proto in (PROTO_TCP, PROTO_UDP):
        if m.ip_frag == 2:
            return None  # a later fragment has no ports to translate
        return proto, m.ip_src, m.tp_src, m.ip_dst, m.tp_dst
    if proto == PROTO_ICMP and m.ip_frag != 2 and m.tp_src in _ECHO:
        ident = m.icmp_id
        return proto, m.ip_src, ident, m.ip_dst, ident
    return None


def _static(rule: CompiledRule) -> int | None:
    """The address of a 1:1 static translation (one address, ports 0-0), else None."""
    if len(rule.nat) != 1:
        return None
    t = rule.nat[0]
    if t.ip_from == t.ip_to and t.port_from == 0 and t.port_to == 0:
        return t.ip_from
    return None


def _choose_dnat(key: NatKey, targets: tuple[NatRange, ...]) -> NatBinding:
    """A deterministic spread over the targets (MidoNet picks at random): a stable hash
    of the key, so that the same connection always gets the same backend."""
    h = zlib.crc32(repr((key.proto, key.src, key.sport, key.dst, key.dport)).encode())
    t = targets[h % len(targets)]
    ip = t.ip_from + (h >> 8) % (t.ip_to - t.ip_from + 1)
    if key.proto == PROTO_ICMP or (t.port_from == 0 and t.port_to == 0):
        return NatBinding(ip, key.dport)
    low = max(t.port_from, 1)
    return NatBinding(ip, low + (h >> 16) % (max(t.port_to, low) - low + 1))


def nat(
    sim: Simulation, m: FlowMatch, rule: CompiledRule, device: str, node: TraceNode | None
) -> bool | None:
    """Apply a `dnat`/`snat` rule. True: translated; False: the rule does not apply to
    this packet (not TCP, UDP or ICMP echo); None: drop it (SNAT found no free source,
    or a fragment, whose connection cannot be told, met a dynamic translation)."""
    snat = rule.action == "snat"
    static = _static(rule)
    if static is not None:
        if m.eth_type != ETH_TYPE_IPV4:
            return False
        # Nothing else is read (but whether it is an ICMP error): one flow serves every
        # connection of the address.
        error = related.is_error(m)
        before = (m.ip_src if snat else m.ip_dst) if error else 0
        if snat:
            m.set_ip_src(static)
        else:
            m.set_ip_dst(static)
        if node is not None:
            where = "source" if snat else "destination"
            node.add("nat", rule.id, f"static {rule.action}: {where} -> {ip_to_str(static)}")
        if error:
            related.static_error(sim, m, before, static, source=snat, node=node)
        return True
    if m.eth_type == ETH_TYPE_IPV4 and m.ip_proto in _NAT_PROTOS and m.ip_frag:
        # Its connection cannot be told without ports (the later fragments have none):
        # translating it wrongly or letting it out untranslated would be worse.
        sim.drop(f"{rule.action}: a fragmented datagram cannot be translated by ports", node)
        return None
    t = _nat_tuple(m)
    if t is None and related.is_error(m):
        return related.nat_error(sim, m, "fwd_snat" if snat else "fwd_dnat", rule.id, device, node)
    if t is None:
        if node is not None:
            node.add("nat", rule.id, f"{rule.action}: not applicable (not TCP, UDP or ICMP echo)")
        return False
    sim.stateful = True
    proto, src, sport, dst, dport = t
    key = NatKey("fwd_snat" if snat else "fwd_dnat", proto, src, sport, dst, dport, device)
    sim.tags.add(nat_tag(key))
    binding = sim.nat_overlay.get(key) or sim.snap.flow_state.nat.get(key)
    new = binding is None
    if binding is None:
        if snat:
            binding = _allocate_snat(sim, key, rule.nat)
            if binding is None:
                sim.drop(f"SNAT on {device}: no free address and port in the targets", node)
                return None
        else:
            binding = _choose_dnat(key, rule.nat)
        rev = nat_return(key, binding)
        sim.nat_overlay[key] = binding
        sim.nat_overlay[rev.key] = rev.binding
        sim.new_state[NatEntry(key, binding)] = None
        sim.new_state[rev] = None
        sim.tags.add(nat_tag(rev.key))
    else:
        sim.state_refs[key] = None
    _rewrite(m, binding, proto, source=snat)
    if node is not None:
        old = f"{ip_to_str(src)}:{sport}" if snat else f"{ip_to_str(dst)}:{dport}"
        to = f"{ip_to_str(binding.ip)}:{binding.port}"
        what = "new binding" if new else "existing binding"
        node.add("nat", rule.id, f"{rule.action} {old} -> {to} ({what}, {key.describe()})")
    return True


def _rewrite(m: FlowMatch, binding: NatBinding, proto: int, *, source: bool) -> None:
    """Translate the packet's source (or destination) to `binding`; for an ICMP echo the
    binding's port is the identifier, on whichever side."""
    if source:
        m.set_ip_src(binding.ip)
    else:
        m.set_ip_dst(binding.ip)
    if proto == PROTO_ICMP:
        m.set_icmp_id(binding.port)
    elif source:
        m.set_tp_src(binding.port)
    else:
        m.set_tp_dst(binding.port)


def _allocate_snat(
    sim: Simulation, key: NatKey, targets: tuple[NatRange, ...]
) -> NatBinding | None:
    view = sim.snap.flow_state.nat
    overlay = sim.nat_overlay

    def taken(ip: int, port: int) -> bool:
        # The reply's key (`nat_return`): an echo reply carries the new id on both sides.
        dport = port if key.proto == PROTO_ICMP else key.dport
        rkey = NatKey("rev_snat", key.proto, key.dst, dport, ip, port, key.device)
        sim.tags.add(nat_tag(rkey))
        return rkey in overlay or rkey in view

    request = SnatRequest(key.device, key.proto, key.src, key.sport, key.dst, key.dport, targets)
    return sim.allocator.allocate_snat(request, taken)


def reverse_nat(
    sim: Simulation, m: FlowMatch, rule: CompiledRule, device: str, node: TraceNode | None
) -> None:
    """Apply a `rev_dnat`/`rev_snat` rule: restore what the forward translation changed,
    if the packet is a reply to a translated connection."""
    t = _nat_tuple(m)
    if t is None and related.is_error(m):
        rev = rule.action == "rev_snat"
        related.nat_error(sim, m, "rev_snat" if rev else "rev_dnat", rule.id, device, node)
        return
    if t is None:
        if node is not None:
            node.add("nat", rule.id, f"{rule.action}: not applicable (not TCP, UDP or ICMP echo)")
        return
    sim.stateful = True
    proto, src, sport, dst, dport = t
    snat = rule.action == "rev_snat"
    key = NatKey("rev_snat" if snat else "rev_dnat", proto, src, sport, dst, dport, device)
    sim.tags.add(nat_tag(key))
    binding = sim.nat_overlay.get(key) or sim.snap.flow_state.nat.get(key)
    if binding is None:
        if node is not None:
            node.add("nat", rule.id, f"{rule.action}: no binding for {key.describe()}")
        return
    if key not in sim.nat_overlay:
        sim.state_refs[key] = None
    _rewrite(m, binding, proto, source=not snat)
    if node is not None:
        old = f"{ip_to_str(dst)}:{dport}" if snat else f"{ip_to_str(src)}:{sport}"
        to = f"{ip_to_str(binding.ip)}:{binding.port}"
        node.add("nat", rule.id, f"{rule.action} {old} -> {to} ({key.describe()})")
