"""From a simulation's virtual outputs to datapath actions on this host.

The simulation speaks of virtual port ids with per-output rewrites; the datapath takes
one ordered action list over local port numbers and tunnels. Here:

- a port bound to this host and attached becomes `Output(local port number)`;
- a port bound elsewhere becomes `OutputTunnel(its tunnel key, that host's underlay
  address)`, tagged with the port and the host so that a move or a tunnel zone change
  invalidates the flow;
- an unbound port (or one whose host is unreachable) gets nothing, but its tag, so that
  binding it later invalidates the flow.

Rewrites are per output and relative to the packet as it arrived, while datapath actions
accumulate. Outputs are therefore ordered by TTL decrement (a decrement cannot be
undone), and a field left unchanged by an output after another output rewrote it is set
back explicitly — which makes the flow depend on that field, so it joins the mask. NAT
rewrites (addresses, TCP/UDP ports, the ICMP echo id) are handled like the MACs; the
datapath's actions fix the IP and L4 checksums. The echo id has no action of its own:
`SetTpSrc` rewrites it in an echo (the one field an echo has for NAT).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tessera.datapath.base import (
    Action,
    DecTtl,
    Output,
    OutputTunnel,
    SetEthDst,
    SetEthSrc,
    SetIpDst,
    SetIpSrc,
    SetTpDst,
    SetTpSrc,
)
from tessera.packet.match import Field, FlowMatch
from tessera.simulation.result import PortOutput
from tessera.simulation.tags import host_tag


@dataclass(frozen=True)
class PortLocation:
    """Where a virtual port leaves this host: a local port number or a tunnel."""

    local: int | None = None
    vni: int | None = None
    remote_ip: int | None = None
    host_id: str | None = None


@dataclass
class Translation:
    actions: list[Action] = field(default_factory=list)
    tags: set[str] = field(default_factory=set)
    extra_mask: int = 0  # Field bits to add to the match (restored MACs)


Locate = Callable[[str], PortLocation | None]


def egress(port_id: str, locate: Locate, tags: set[str]) -> Output | OutputTunnel | None:
    tags.add(port_id)
    where = locate(port_id)
    if where is None:
        return None
    if where.host_id is not None:
        tags.add(host_tag(where.host_id))
    if where.local is not None:
        return Output(where.local)
    if where.vni and where.remote_ip:
        return OutputTunnel(where.vni, where.remote_ip)
    return None


# (FlowMatch field name, mask bit, action) of every rewrite a PortOutput may ask for.
_REWRITES: tuple[tuple[str, Field, Callable[[int], Action]], ...] = (
    ("eth_src", Field.ETH_SRC, SetEthSrc),
    ("eth_dst", Field.ETH_DST, SetEthDst),
    ("ip_src", Field.IP_SRC, SetIpSrc),
    ("ip_dst", Field.IP_DST, SetIpDst),
    ("tp_src", Field.TP_SRC, SetTpSrc),
    ("tp_dst", Field.TP_DST, SetTpDst),
    ("icmp_id", Field.ICMP_ID, SetTpSrc),
)


def _wanted(o: PortOutput) -> tuple[int | None, ...]:
    """The output's rewrites in `_REWRITES` order (None: as the packet arrived)."""
    return (o.eth_src, o.eth_dst, o.nw_src, o.nw_dst, o.tp_src, o.tp_dst, o.icmp_id)


def _output_order(o: PortOutput) -> tuple[int, bool, bool, bool]:
    nat = o.nw_src is not None or o.nw_dst is not None or o.tp_src is not None
    nat = nat or o.tp_dst is not None or o.icmp_id is not None
    return (o.ttl_dec, nat, o.eth_src is not None, o.eth_dst is not None)


def translate(outputs: Sequence[PortOutput], match: FlowMatch, locate: Locate) -> Translation:
    out = Translation()
    current: list[int | None] = [None] * len(_REWRITES)  # None: as the packet arrived
    ttl_done = 0
    # TTL decrements cannot be undone; within one TTL, unchanged fields first, so that a
    # restore is needed only when a decrement forces a rewritten branch earlier.
    order = sorted(outputs, key=_output_order) if len(outputs) > 1 else outputs
    for o in order:
        # The decrement comes first even for a port bound nowhere: the flow's mask holds
        # only "TTL above the hops", so the kernel's DecTtl is what hands a packet whose
        # TTL would expire to the agent (for its ICMP time exceeded) instead of dropping.
        if o.ttl_dec > ttl_done:
            out.actions.append(DecTtl(o.ttl_dec - ttl_done))
            ttl_done = o.ttl_dec
        target = egress(o.port_id, locate, out.tags)
        if target is None:
            continue
        for i, want in enumerate(_wanted(o)):
            name, bit, action = _REWRITES[i]
            if want is None and current[i] is not None:
                want = match.original()[name]
                out.extra_mask |= int(bit)
            if want is not None and want != current[i]:
                out.actions.append(action(want))
                current[i] = want
        out.actions.append(target)
    return out
