"""Predicted reply flows: a new connection's reply flow installed with its forward flow.

Every new connection misses twice: its first packet where it enters, and its first
reply where that enters — with connection tracking each connection, without it each
new pair of endpoints (a stateless flow is keyed on addresses, not on ports), and again
after every change that invalidates their flows. When the reply will enter on a port of
this host, the second miss is predictable: right after the forward packet's flow is
installed, the agent builds the reply as it will look —
the forward packet as it leaves (its flow's actions run on it, so after NAT), with the
Ethernet and IP addresses and the TCP/UDP ports swapped, an echo request turned into
its reply — simulates it entering the egress port with the state just created visible,
and installs that flow too, before it reinjects the forward packet: reinjected first,
the packet's reply comes back sooner than the prediction takes (a SYN-ACK from a VM on
the same host in tens of microseconds) and would miss anyway — not simulated then, its
flow covers it, but read, counted and reinjected by the agent, the cost of a miss
without the simulation.

Why this is safe: a flow installed from the simulation of a packet carries that
packet's megaflow mask, so it is right for every packet that matches it, whichever
packet it was simulated from. A real reply that differs in a field the simulation read
(another TTL below a router's floor, a MAC the guess got wrong) does not match, and
misses as today. TCP flags are not a match field, so a SYN-ACK and the ACKs after it
are one flow.

Which packets: any that created connection state (the reply is what the state is
for), and without state an IPv4 echo request or TCP SYN (`asks_reply`): a reply is all
but certain, and a plain bridge or router path predicts as cleanly as a tracked one.

What is never predicted (counted by reason in `tessera_agent_reply_predictions`):
- `remote`: the reply enters on another host (it decides its own flows there);
- `unsupported`: not an untagged, unfragmented IPv4 TCP/UDP/echo packet with exactly
  one output;
- `covered`: a flow for the reply exists already;
- `unclean`: the reply's simulation did anything but forward, with nothing else to do,
  back to the port the connection came from: a drop, a held or answered packet,
  packets it generates, MACs or ARP entries it would learn (facts only a real packet
  may teach), flow state of its own (which would have to be pushed to peers), an
  uncacheable decision or a cost limit;
- `not_loaded`: the reply's path needs an object the cache has not loaded;
- `error`: the prediction raised (logged, rate-limited): the connection simply misses.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tessera.datapath.base import Miss, Output, key_of
from tessera.datapath.frames import csum_replace, run_actions
from tessera.packet.errors import PacketError
from tessera.packet.match import FlowMatch
from tessera.simulation.errors import NotYetLoaded
from tessera.simulation.result import SimulationResult, Verdict

if TYPE_CHECKING:
    from tessera.agent.flowtable import DesiredFlow
    from tessera.agent.upcall import UpcallHandler

log = logging.getLogger(__name__)

_TCP, _UDP, _ICMP = 6, 17, 1
_ECHO_REQUEST, _ECHO_REPLY = 8, 0
_SYN = 0x02


def reply_frame(out: bytes) -> bytes | None:
    """The reply to `out` (a frame as it leaves towards its destination), as that
    destination would send it; None if it is not a packet this module predicts for.

    Swapping the addresses and ports leaves every checksum right (ones' complement
    sums do not depend on order); only the echo type change needs one fixed."""
    l4 = _l4_offset(out)
    if l4 is None:
        return None
    proto = out[23]
    f = bytearray(out)
    f[0:6], f[6:12] = out[6:12], out[0:6]
    f[26:30], f[30:34] = out[30:34], out[26:30]
    if proto in (_TCP, _UDP):
        f[l4 : l4 + 2], f[l4 + 2 : l4 + 4] = out[l4 + 2 : l4 + 4], out[l4 : l4 + 2]
    elif proto == _ICMP and out[l4] == _ECHO_REQUEST:
        old = out[l4 : l4 + 2]
        new = bytes((_ECHO_REPLY, out[l4 + 1]))
        f[l4] = _ECHO_REPLY
        csum = csum_replace(int.from_bytes(out[l4 + 2 : l4 + 4], "big"), old, new)
        f[l4 + 2 : l4 + 4] = csum.to_bytes(2, "big")
    else:
        return None
    return bytes(f)


def asks_reply(frame: bytes) -> bool:
    """Whether `frame` is a plain IPv4 echo request or TCP SYN: a packet whose reply is
    all but certain, worth a prediction when no connection state says so. Not UDP: a
    stateless UDP flow is as often one way (a stream, a flood) as not, and a prediction
    costs a simulation."""
    l4 = _l4_offset(frame)
    if l4 is None:
        return False
    proto = frame[23]
    if proto == _ICMP:
        return frame[l4] == _ECHO_REQUEST
    # SYN without ACK
    return proto == _TCP and len(frame) >= l4 + 20 and frame[l4 + 13] & 0x12 == _SYN


def _l4_offset(frame: bytes) -> int | None:
    """Where the L4 header of a plain (untagged) IPv4 frame starts, with at least 8
    bytes of it there; None for anything else, a fragment included."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None  # not plain IPv4 (a VLAN tag included)
    ihl = (frame[14] & 0x0F) * 4
    l4 = 14 + ihl
    if ihl < 20 or len(frame) < l4 + 8 or int.from_bytes(frame[20:22], "big") & 0x3FFF:
        return None  # a short header or a fragment
    return l4


def predict_reply(
    handler: UpcallHandler, miss: Miss, in_port_id: str, result: SimulationResult,
    forward: DesiredFlow,
) -> None:  # fmt: skip
    """After `forward` (the flow of `result`, simulated from `miss`) is installed: if
    the result created connection state whose reply enters on a port of this host,
    install the reply's flow too; without connection state, only when the packet
    asks for a reply (`asks_reply`). Never raises: a failed prediction costs a miss."""
    if result.verdict is not Verdict.FORWARD:
        return
    if not result.flow_state and not asks_reply(miss.frame):
        return
    counter = handler.metrics.reply_predictions
    try:
        outcome = _predict(handler, miss, in_port_id, result, forward)
    except Exception as exc:  # the forward flow is in place: only the prediction is lost
        outcome = "error"
        handler._log.warning(
            (in_port_id, "predict", type(exc).__name__),
            "predicting the reply flow of a packet of port %s raised %s: %s",
            in_port_id, type(exc).__name__, exc, exc_info=exc,
        )  # fmt: skip
    counter.labels(result=outcome).inc()


def _predict(
    handler: UpcallHandler, miss: Miss, in_port_id: str, result: SimulationResult,
    forward: DesiredFlow,
) -> str:  # fmt: skip
    if len(result.outputs) != 1:
        return "unsupported"
    reply_port_id = result.outputs[0].port_id
    where = handler.locate(reply_port_id)
    if where is None or where.local is None:
        return "remote"
    number = where.local
    sent = [
        frame
        for action, frame in run_actions(miss.frame, forward.flow.actions).outputs
        if isinstance(action, Output) and action.port == number
    ]
    if len(sent) != 1:
        return "unsupported"
    frame = reply_frame(sent[0])
    if frame is None:
        return "unsupported"
    ct_state = 0
    kct = handler.kernel_ct
    if kct is not None:  # the ct_state the datapath will give the real reply
        ct_state = kct.reply_state(result, kct.port_zone.get(number, 0))
    try:
        match = FlowMatch.from_frame(reply_port_id, frame, ct_state)
    except PacketError:
        return "unsupported"
    key = key_of(number, match)
    if handler.flows.lookup(key) is not None or key in handler.parked:
        return "covered"
    try:
        reply = handler.sim.simulate(frame, reply_port_id, handler.wall_clock(), match=match)
    except NotYetLoaded:
        return "not_loaded"
    if not _clean(reply, in_port_id):
        return "unclean"
    desired = handler.desired_flow(reply, number, reply_port_id)
    if desired is None:
        return "unclean"
    handler.install(desired)
    handler.attach(reply, desired.match)
    return "installed"


def _clean(reply: SimulationResult, back_to: str) -> bool:
    """Whether installing the flow of `reply` (a simulated, not a real, packet) does
    nothing but what the real reply's own miss would have done."""
    return (
        reply.verdict is Verdict.FORWARD
        and reply.cacheable
        and reply.limit is None
        and not reply.emitted
        and not reply.waits
        and not reply.state_updates
        and not reply.flow_state
        and len(reply.outputs) == 1
        and reply.outputs[0].port_id == back_to
    )
