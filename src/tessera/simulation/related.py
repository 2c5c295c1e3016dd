"""ICMP errors about tracked and translated connections (Linux conntrack's RELATED).

A destination unreachable, time exceeded or parameter problem quotes the start of the
packet it is about. When that packet belongs to a tracked connection the error is
*related* to it: `match_return_flow` accepts it (in whichever direction it travels, as
Linux's `RELATED` state does), and it never creates state. When the connection was
translated, the error is translated back as the packet it quotes was (MidoNet's
`NatState.reverseNatOnICMPData`): the NAT key is the quoted packet's, reversed (the error
travels against it), the outer address NAT had changed is restored, and so are the
quoted packet's addresses and ports — otherwise the sender's kernel cannot find the
socket the error is for (no ECONNREFUSED, no path MTU).

Why userspace only: the quote is in no flow key (the kernel's has none), so a decision
that read it could not be cached — a flow keyed on the outer headers would give the next
error about another connection this one's answer. Every such error is simulated, and
one whose quote NAT rewrote is not output as a flow action at all: the simulation
builds the whole translated frame (outer and quoted headers, every checksum) and emits
it as a packet of its own, which the agent sends as it sends any generated packet —
the same on every datapath, and no kernel flow is ever installed for it. ICMP errors
are rare (and rate-limited by their senders), so the cost is a simulation per error.

Dynamic NAT rules only ever look bindings up for an error, never create one; a static
(1:1) rule rewrites the quoted address that mirrors the outer one it translates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tessera.packet import icmp
from tessera.packet.addr import ip_to_str
from tessera.packet.checksum import internet_checksum
from tessera.packet.ethernet import ETH_TYPE_IPV4
from tessera.packet.ipv4 import PROTO_ICMP
from tessera.packet.match import Field, FlowMatch
from tessera.simulation.flowstate import ConnKey, NatKey, NatKind
from tessera.simulation.result import TraceNode
from tessera.simulation.tags import conntrack_tag, nat_tag

if TYPE_CHECKING:  # the simulation calls in here; only its types are needed
    from tessera.simulation.context import Simulation
    from tessera.simulation.topology import PortSnap

_ETH_SRC = int(Field.ETH_SRC)
_ETH_DST = int(Field.ETH_DST)
_IP_TTL = int(Field.IP_TTL)
_IP_SRC = int(Field.IP_SRC)
_IP_DST = int(Field.IP_DST)


def is_error(m: FlowMatch) -> bool:
    """Whether the packet on this branch is an ICMP error that quotes a packet (reads
    the EtherType, protocol and ICMP type: errors and other packets never share a flow)."""
    return (
        m.eth_type == ETH_TYPE_IPV4
        and m.ip_proto == PROTO_ICMP
        and m.ip_frag != 2
        and m.tp_src in icmp.QUOTING_TYPES
    )


def arrived_as_error(m: FlowMatch) -> bool:
    """`is_error` for the packet as it arrived (connection tracking's view of it)."""
    eth_type, proto = m.arrival(Field.ETH_TYPE | Field.IP_PROTO)
    if eth_type != ETH_TYPE_IPV4 or proto != PROTO_ICMP:
        return False
    frag, icmp_type = m.arrival(Field.IP_FRAG | Field.TP_SRC)
    return frag != 2 and icmp_type in icmp.QUOTING_TYPES


def _frame_quote(frame: bytes) -> bytes | None:
    """The quote in the error `frame` carries (the ICMP payload), None if cut short."""
    off = 18 if frame[12:14] == b"\x81\x00" else 14
    if len(frame) < off + 20:
        return None
    hlen = (frame[off] & 0x0F) * 4
    end = off + int.from_bytes(frame[off + 2 : off + 4], "big")
    start = off + hlen + icmp.HEADER_LEN
    if end > len(frame) or start > end:
        return None
    return frame[start:end]


def _quote_bytes(sim: Simulation, m: FlowMatch) -> bytes | None:
    """The quote as it is on this branch. Reading it makes the decision uncacheable."""
    sim.quoted = sim.uncacheable = True
    data = m.icmp_data
    return data if data is not None else _frame_quote(sim.frame)


# -- connection tracking ------------------------------------------------------------------


def is_forward_error(sim: Simulation, port: PortSnap, node: TraceNode | None) -> bool:
    """`stateful.is_forward` for an ICMP error (the arrival match says it is one): a
    return flow iff the packet it quotes, as it arrived, belongs to a connection tracked
    on the ingress device, in either direction."""
    sim.quoted = sim.uncacheable = True
    data = _frame_quote(sim.frame)
    q = icmp.parse_quoted(data) if data is not None else None
    if q is None:
        sim.ct_forward = True
        sim.ct_match = None  # an error creates no entry
        if node is not None:
            node.add("conntrack", None, "ICMP error quoting no connection: forward flow")
        return True
    device = sim.snap.conn_device(port)
    if device != port.device_id:
        sim.tags.add(device)
    about = ConnKey(q.proto, q.src, q.dst, q.sport, q.dport, device)
    for key in (about, about.reversed()):
        sim.tags.add(conntrack_tag(key))
        if key in sim.snap.flow_state.conntrack:
            sim.ct_forward = False
            if node is not None:
                node.add("conntrack", None, f"ICMP error related to {key.describe()}: return flow")
            return False
    sim.ct_forward = True
    sim.ct_match = None
    if node is not None:
        text = f"ICMP error about {about.describe()}, no such connection: forward flow"
        node.add("conntrack", None, text)
    return True


# -- NAT ----------------------------------------------------------------------------------


def nat_error(
    sim: Simulation, m: FlowMatch, kind: NatKind, rule_id: str, device: str, node: TraceNode | None
) -> bool:
    """Translate an ICMP error (`is_error(m)`) by the binding of the connection it
    quotes, as the quoted packet was translated; False if there is none (the rule then
    does not apply). `kind` is the rule's: fwd_* for `snat`/`dnat`, rev_* for the others.

    The binding's "source" side (`fwd_snat`, `rev_dnat`) is where the error's quoted
    packet has its destination; the "destination" side (`fwd_dnat`, `rev_snat`) its
    source. The outer address is restored only where it is the translated one: an error
    from a router on the way has its own source, which no NAT made.
    """
    data = _quote_bytes(sim, m)
    q = icmp.parse_quoted(data) if data is not None else None
    if data is None or q is None:
        if node is not None:
            node.add("nat", rule_id, f"{kind}: ICMP error quoting no connection: not applicable")
        return False
    sim.stateful = True
    key = NatKey(kind, q.proto, q.dst, q.dport, q.src, q.sport, device)
    sim.tags.add(nat_tag(key))
    binding = sim.nat_overlay.get(key) or sim.snap.flow_state.nat.get(key)
    if binding is None:
        if node is not None:
            node.add("nat", rule_id, f"{kind}: ICMP error, no binding for {key.describe()}")
        return False
    port = None if q.proto == PROTO_ICMP else binding.port  # an echo keeps its id
    outer = ""
    if kind in ("fwd_snat", "rev_dnat"):
        quoted = icmp.translate_quoted(data, dst=binding.ip, dport=port)
        if m.ip_src == key.src:
            m.set_ip_src(binding.ip)
            outer = f", source -> {ip_to_str(binding.ip)}"
        what = f"quoted destination -> {ip_to_str(binding.ip)}"
    else:
        quoted = icmp.translate_quoted(data, src=binding.ip, sport=port)
        if m.ip_dst == key.dst:
            m.set_ip_dst(binding.ip)
            outer = f", destination -> {ip_to_str(binding.ip)}"
        what = f"quoted source -> {ip_to_str(binding.ip)}"
    if port is not None:
        what += f":{port}"
    m.set_icmp_data(quoted)
    if node is not None:
        text = f"{kind}: ICMP error related to {key.describe()}: {what}{outer} (in userspace)"
        node.add("nat", rule_id, text)
    return True


def static_error(
    sim: Simulation, m: FlowMatch, old: int, new: int, *, source: bool, node: TraceNode | None
) -> None:
    """A static (1:1) rule translated an ICMP error's outer source (`source`) or
    destination from `old` to `new`: the quoted packet, which travelled the other way,
    has `old` as its destination (or source); it becomes `new` too."""
    data = _quote_bytes(sim, m)
    q = icmp.parse_quoted(data) if data is not None else None
    if data is None or q is None or (q.dst if source else q.src) != old:
        return
    if source:
        m.set_icmp_data(icmp.translate_quoted(data, dst=new))
    else:
        m.set_icmp_data(icmp.translate_quoted(data, src=new))
    if node is not None:
        where = "destination" if source else "source"
        node.add("nat", None, f"ICMP error: quoted {where} -> {ip_to_str(new)} (in userspace)")


# -- output -------------------------------------------------------------------------------


def emit_translated(sim: Simulation, m: FlowMatch, port_id: str) -> None:
    """Send an error whose quote NAT rewrote out of `port_id` as a packet of its own:
    the arriving frame with this branch's rewrites (MACs, TTL, addresses) and quote,
    and its IP and ICMP checksums computed again (see the module doc: no flow action
    can rewrite a quote)."""
    sim.emit(port_id, translated_frame(sim, m), "icmp_error")
    sim.consumed = True
    sim.uncacheable = True


def translated_frame(sim: Simulation, m: FlowMatch) -> bytes:
    """The arriving error with this branch's rewrites and its quote as NAT rewrote it."""
    data = m.icmp_data
    assert data is not None
    frame = bytearray(sim.frame)
    modified = int(m.modified)
    if modified & _ETH_DST:
        frame[0:6] = m.eth_dst.to_bytes(6, "big")
    if modified & _ETH_SRC:
        frame[6:12] = m.eth_src.to_bytes(6, "big")
    off = 18 if frame[12:14] == b"\x81\x00" else 14
    hlen = (frame[off] & 0x0F) * 4
    if modified & _IP_TTL:
        frame[off + 8] = m.ip_ttl
    if modified & _IP_SRC:
        frame[off + 12 : off + 16] = m.ip_src.to_bytes(4, "big")
    if modified & _IP_DST:
        frame[off + 16 : off + 20] = m.ip_dst.to_bytes(4, "big")
    frame[off + 10 : off + 12] = b"\x00\x00"
    frame[off + 10 : off + 12] = internet_checksum(bytes(frame[off : off + hlen])).to_bytes(
        2, "big"
    )
    l4 = off + hlen
    start = l4 + icmp.HEADER_LEN
    frame[start : start + len(data)] = data  # same length: only fields were rewritten
    end = start + len(data)
    frame[l4 + 2 : l4 + 4] = b"\x00\x00"
    frame[l4 + 2 : l4 + 4] = internet_checksum(bytes(frame[l4:end])).to_bytes(2, "big")
    return bytes(frame)
