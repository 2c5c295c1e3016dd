"""The state of one simulation run: what the devices collect while the packet travels.

Devices never return early with partial answers; each branch of the packet's path ends
in exactly one of the terminal calls below (`output`, `drop`, `consume`, `hold`), and
`Simulation.result()` folds them into one `SimulationResult`. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from tessera.packet.addr import ip_to_str
from tessera.packet.errors import PacketError
from tessera.packet.ethernet import Ethernet
from tessera.packet.ipv4 import IPv4
from tessera.packet.match import Field, FlowMatch
from tessera.simulation import related, stateful
from tessera.simulation.flowstate import (
    FIRST_FREE,
    ConnKey,
    FlowStateEntry,
    NatAllocator,
    NatBinding,
    NatKey,
)
from tessera.simulation.loadbalancer import RANDOM_PICKER, MemberPicker
from tessera.simulation.result import (
    ArpWait,
    EmitKind,
    EmittedPacket,
    ExpiryClass,
    MirrorCopy,
    Output,
    SimulationResult,
    StateUpdate,
    TraceNode,
    Verdict,
)
from tessera.simulation.topology import Snapshot

# -- limits: what one simulation may cost -----------------------------------------------
# A simulation runs on the agent's only upcall thread (and behind `POST /traces`): every
# packet of every tenant waits while it runs, so its work must be bounded whatever the
# topology says. Past a limit the whole packet is dropped with a reason naming it
# (`LimitExceeded.limit`, `SimulationResult.limit`), which the agent counts.

MAX_HOPS = 12
"""Devices one branch may cross (MidoNet's limit): beyond, the topology has a loop."""
MAX_DEVICE_VISITS = 4096
"""Devices one whole simulation may visit, all branches and generated packets together,
so that a flood through a badly looped topology cannot take exponential time. Large
enough for a broadcast on a provider bridge that hundreds of tenant routers hang off."""
MAX_RULES_EVALUATED = 100_000
"""Rules one whole simulation may test, all chains, branches and generated packets
together: chains are most of a simulation's work (about a microsecond a rule at worst,
so this is a tenth of a second of one core). Repeated evaluations of one chain for one
packet are answered from a memo (`chain.py`) and cost nothing here, so only rules really
tested count; a flood to a thousand ports, each filtered by a hundred rules, fits."""
MAX_CHAIN_DEPTH = 32
"""Chains one evaluation may nest through `jump` rules (the chain a device names is the
first). Far deeper than any policy people or orchestrators write (security groups nest
two or three levels), and far below Python's recursion limit, which a deeper nesting
would hit as an exception instead of a drop."""

_ETH_SRC = int(Field.ETH_SRC)
_ETH_DST = int(Field.ETH_DST)
_IP_TTL = int(Field.IP_TTL)
_IP_SRC = int(Field.IP_SRC)
_IP_DST = int(Field.IP_DST)
_TP_SRC = int(Field.TP_SRC)
_TP_DST = int(Field.TP_DST)
_ICMP_ID = int(Field.ICMP_ID)
_L3L4 = _IP_SRC | _IP_DST | _TP_SRC | _TP_DST | _ICMP_ID


@dataclass(frozen=True, slots=True)
class ChainMemo:
    """What one evaluation of a chain decided, when it had no side effect (no NAT rule
    acted, no jump loop was met), to answer the same question again in the same run
    without testing a rule: see `chain.py`."""

    verdict: str
    mask: int  # the match's mask once it was decided: every field the evaluation read
    visited: frozenset[str]  # the chains it jumped into, directly or not
    height: int  # the deepest nesting of chains it reached, its own chain counted


class Generator(Protocol):
    """Sends a generated packet (see `Simulation.generate`)."""

    def __call__(
        self,
        sim: Simulation,
        port_id: str,
        eth: Ethernet,
        kind: EmitKind,
        hops: int,
        node: TraceNode | None,
        *,
        from_down_port: bool = False,
    ) -> None: ...


class LimitExceeded(Exception):
    """Raised through the whole simulation when one of the limits above is exceeded.

    `limit` names it for counters and logs: "hops", "device_visits", "rules_evaluated"
    or "chain_depth"; the message, for humans, says what was exceeded and why.
    """

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


class LoopDetected(LimitExceeded):
    """A hop or device visit limit: the topology sends the packet round in circles."""


class Simulation:
    """One run. `child()` makes the run of a generated packet (an ICMP error, an ARP
    request) that shares the snapshot, time, budget and learned-in-this-run ARP entries."""

    __slots__ = (
        "_packet",
        "allocator",
        "arp_failed",
        "arp_overlay",
        "budget",
        "chain_memo",
        "consumed",
        "ct_forward",
        "ct_kernel",
        "ct_match",
        "drops",
        "emitted",
        "frame",
        "generated",
        "generator",
        "limit",
        "mac_overlay",
        "mirrored",
        "nat_overlay",
        "new_state",
        "now",
        "outputs",
        "picker",
        "quoted",
        "snap",
        "state_refs",
        "stateful",
        "tags",
        "uncacheable",
        "updates",
        "waits",
    )

    def __init__(
        self,
        snap: Snapshot,
        now: float,
        frame: bytes,
        *,
        arp_failed: frozenset[tuple[str, int]] = frozenset(),
        arp_overlay: dict[tuple[str, int], int] | None = None,
        mac_overlay: dict[tuple[str, int, int], str] | None = None,
        budget: list[int] | None = None,
        allocator: NatAllocator = FIRST_FREE,
        nat_overlay: dict[NatKey, NatBinding] | None = None,
        picker: MemberPicker = RANDOM_PICKER,
    ) -> None:
        self.snap = snap
        self.now = now
        self.frame = frame
        self.arp_failed = arp_failed
        self.arp_overlay: dict[tuple[str, int], int] = {} if arp_overlay is None else arp_overlay
        # MACs learned earlier in this run (a reply to this packet must find its sender).
        self.mac_overlay: dict[tuple[str, int, int], str] = (
            {} if mac_overlay is None else mac_overlay
        )
        # [device visits left, rules left], shared with the runs of generated packets.
        self.budget = [MAX_DEVICE_VISITS, MAX_RULES_EVALUATED] if budget is None else budget
        # Chain evaluations without side effects, by chain and packet state (`chain.py`):
        # one per run, since a run's matches all share one mask.
        self.chain_memo: dict[tuple[object, ...], ChainMemo] = {}
        # The limit a run of a generated packet hit (that packet was dropped, not this one).
        self.limit: str | None = None
        self.tags: set[str] = set()
        self.outputs: dict[Output, None] = {}  # ordered set: a flood may reach a port twice
        self.emitted: list[EmittedPacket] = []
        self.mirrored: list[MirrorCopy] = []  # a list: two mirrors may copy alike
        self.updates: list[StateUpdate] = []
        self.waits: list[ArpWait] = []
        self.drops: list[str] = []
        self.consumed = False
        self.uncacheable = False
        # An ICMP error's quote was read (`related.py`): uncacheable, and so is the run
        # whose generated packet this run is.
        self.quoted = False
        self._packet: Ethernet | None = None
        # Set by the driver: sends a generated packet out of a port (see `generate`).
        self.generator: Generator | None = None
        # Flow state (see `stateful.py`): the SNAT allocator, the match as it arrived,
        # the forward/return answer once asked, whether any state was read or made, what
        # the decision found (kept alive by the flow) and what it creates (only part of a
        # FORWARD result).
        self.allocator = allocator
        self.ct_match: FlowMatch | None = None
        self.ct_forward: bool | None = None
        # The answer came from the datapath's ct_state (`stateful.is_forward`).
        self.ct_kernel = False
        self.generated = False
        self.stateful = False
        self.state_refs: dict[ConnKey | NatKey, None] = {}
        self.new_state: dict[FlowStateEntry, None] = {}
        # NAT bindings made earlier in this run, so that a second rule or branch sees them.
        self.nat_overlay: dict[NatKey, NatBinding] = {} if nat_overlay is None else nat_overlay
        # Chooses the member of a new load-balanced connection (`loadbalancer`).
        self.picker = picker

    def generate(
        self,
        port_id: str,
        eth: Ethernet,
        kind: EmitKind,
        hops: int,
        node: TraceNode | None,
        *,
        from_down_port: bool = False,
    ) -> None:
        """Send a packet the virtual network made (a reply, an error, an ARP request) out
        of `port_id`: emitted as is from an exterior port, simulated onwards from the
        peer of an interior one. Nothing leaves a port that is down, except the port's
        own refusal (`from_down_port`: the ICMP error a down router port answers with)."""
        assert self.generator is not None, "the driver sets the generator"
        self.generator(self, port_id, eth, kind, hops, node, from_down_port=from_down_port)

    def child(self, frame: bytes) -> Simulation:
        sim = Simulation(
            self.snap,
            self.now,
            frame,
            arp_failed=self.arp_failed,
            arp_overlay=self.arp_overlay,
            mac_overlay=self.mac_overlay,
            budget=self.budget,
            allocator=self.allocator,
            nat_overlay=self.nat_overlay,
            picker=self.picker,
        )
        sim.generator = self.generator
        sim.generated = True
        return sim

    def forward(self) -> bool:
        """Whether the packet is a forward flow (for `match_*_flow` conditions)."""
        if self.ct_forward is not None:
            return self.ct_forward
        return stateful.is_forward(self)

    def packet(self) -> Ethernet:
        """The frame fully parsed, on demand: most packets never need more than the match.

        Raises PacketError for a frame the full parser refuses.
        """
        if self._packet is None:
            self._packet = Ethernet.parse(self.frame)
        return self._packet

    def current_ip(self, m: FlowMatch) -> IPv4 | None:
        """The IPv4 packet as it is now on this branch (TTL rewritten), for ICMP quotes.

        Only the IP header is parsed: whether an error can be sent must not depend on
        the rest of the packet parsing (a UDP datagram between the DHCP ports that is
        not DHCP, say), since the flow match cannot see that.
        """
        frame = self.frame
        offset = 18 if frame[12:14] == b"\x81\x00" else 14
        try:
            ip, _ = IPv4.parse_quoted(frame[offset:])
        except PacketError:
            return None
        if int(m.modified) & _IP_TTL:
            ip = replace(ip, ttl=m.ip_ttl)
        return ip

    def vlan_id(self) -> int | None:
        """The frame's 802.1Q VLAN id, from its bytes (for replies, which keep the tag)."""
        frame = self.frame
        if frame[12:14] == b"\x81\x00" and len(frame) >= 16:
            return int.from_bytes(frame[14:16], "big") & 0x0FFF
        return None

    def visit(self, hops: int) -> None:
        """Count a device visit; raise LoopDetected past either limit."""
        if hops > MAX_HOPS:
            raise LoopDetected("hops", f"loop: more than {MAX_HOPS} devices on the packet's path")
        budget = self.budget
        budget[0] -= 1
        if budget[0] < 0:
            text = f"loop: more than {MAX_DEVICE_VISITS} device visits"
            raise LoopDetected("device_visits", text)

    def count_rules(self, n: int) -> None:
        """Count `n` rules tested; raise LimitExceeded past `MAX_RULES_EVALUATED`."""
        budget = self.budget
        budget[1] -= n
        if budget[1] < 0:
            raise LimitExceeded(
                "rules_evaluated",
                f"simulation stopped: more than {MAX_RULES_EVALUATED} filter rules to test "
                "(chains jump into each other too often)",
            )

    def cost(self) -> tuple[int, int]:
        """(device visits, rules tested) so far, by this run and every run sharing its
        budget (the packets it generated)."""
        budget = self.budget
        return MAX_DEVICE_VISITS - budget[0], MAX_RULES_EVALUATED - budget[1]

    # -- terminal calls: every branch ends in exactly one ---------------------------------

    def output(self, m: FlowMatch, port_id: str) -> None:
        if m.icmp_data is not None:  # an ICMP error NAT translated: sent from userspace
            related.emit_translated(self, m, port_id)
            return
        modified = int(m.modified)
        if self.ct_forward and self.ct_match is not None:
            stateful.track(self, m, port_id)
        if not modified:
            self.outputs[Output(port_id)] = None
            return
        self.outputs[port_output(m, port_id)] = None

    def mirror_copy(self, mirror_id: str, m: FlowMatch, port_id: str) -> None:
        """A mirror sends a copy of the packet, as `m` has it now, out of `port_id`
        (not a terminal call: the branch goes on)."""
        if m.icmp_data is not None:  # a quote NAT rewrote: no flow action can copy it
            self.emit(port_id, related.translated_frame(self, m), "mirror")
            self.uncacheable = True
            return
        self.mirrored.append(MirrorCopy(mirror_id, port_output(m, port_id)))

    def drop(self, reason: str, node: TraceNode | None = None) -> None:
        self.drops.append(reason)
        if node is not None:
            node.add("drop", None, reason)

    def consume(self, what: str, node: TraceNode | None = None) -> None:
        self.consumed = True
        self.uncacheable = True
        if node is not None:
            node.add("consumed", None, what)

    def hold(self, wait: ArpWait, node: TraceNode | None = None) -> None:
        self.waits.append(wait)
        if node is not None:
            text = f"held until the ARP entry for {ip_to_str(wait.ip)} arrives"
            node.add("hold", wait.router_id, text)

    def emit(self, port_id: str, frame: bytes, kind: EmitKind) -> None:
        self.emitted.append(EmittedPacket(port_id, frame, kind))

    # -- folding ---------------------------------------------------------------------------

    def absorb(self, child: Simulation, base: Ethernet, kind: EmitKind) -> None:
        """Fold a generated packet's run into this one: where it left the virtual network
        becomes an emitted packet, with that branch's rewrites applied to its bytes."""
        for out in child.outputs:
            self.emit(out.port_id, _rewritten(base, out), kind)
        for c in child.mirrored:  # copies of a generated packet: sent once, like it
            self.emit(c.output.port_id, _rewritten(base, c.output), "mirror")
        self.emitted.extend(child.emitted)
        self.updates.extend(u for u in child.updates if u not in self.updates)
        self.tags |= child.tags
        self.state_refs.update(child.state_refs)
        self.stateful |= child.stateful
        if child.quoted:  # its path read an error's quote, which no flow key holds
            self.quoted = self.uncacheable = True
        if child.limit is not None:  # a packet the child generated hit a limit
            self.limit = child.limit

    def result(self, m: FlowMatch, trace: TraceNode | None) -> SimulationResult:
        # Copies are made by the flow the result installs, and a held packet (HOLD) makes
        # them again when it is simulated again: only the other verdicts carry them.
        mirrored = tuple(self.mirrored)
        settle_ttl(m, self.outputs)
        visits, rules = self.cost()
        tags = frozenset(self.tags)
        updates = tuple(self.updates)
        emitted = tuple(self.emitted)
        if self.waits:
            if trace is not None and self.outputs:
                trace.add("note", None, "outputs of other branches wait with the packet")
            return SimulationResult(
                Verdict.HOLD,
                m,
                emitted=emitted,
                tags=tags,
                expiry=ExpiryClass.UNCACHED,
                state_updates=updates,
                waits=tuple(self.waits),
                trace=trace,
                limit=self.limit,
                devices_visited=visits,
                rules_evaluated=rules,
            )
        flow_state: tuple[FlowStateEntry, ...] = ()
        if self.outputs:
            verdict = Verdict.FORWARD
            if self.uncacheable:
                expiry = ExpiryClass.UNCACHED
            else:
                expiry = ExpiryClass.STATEFUL if self.stateful else ExpiryClass.NORMAL
            reason = None
            flow_state = tuple(self.new_state)
        elif self.consumed:
            verdict, expiry, reason = Verdict.CONSUMED, ExpiryClass.UNCACHED, None
        else:
            verdict = Verdict.DROP
            expiry = ExpiryClass.UNCACHED if self.uncacheable else ExpiryClass.ERROR
            reason = "; ".join(dict.fromkeys(self.drops)) or "no egress port"
        return SimulationResult(
            verdict,
            m,
            outputs=tuple(self.outputs),
            emitted=emitted,
            tags=tags,
            expiry=expiry,
            state_updates=updates,
            drop_reason=reason,
            trace=trace,
            flow_state=flow_state,
            state_refs=tuple(self.state_refs),
            limit=self.limit,
            devices_visited=visits,
            rules_evaluated=rules,
            mirrored=mirrored,
            ct_kernel=self.ct_kernel,
        )


def port_output(m: FlowMatch, port_id: str) -> Output:
    """The packet as `m` has it now, out of `port_id`: its rewrites so far."""
    modified = int(m.modified)
    eth_src = m.eth_src if modified & _ETH_SRC else None
    eth_dst = m.eth_dst if modified & _ETH_DST else None
    ttl_dec = 0
    if modified & _IP_TTL:
        ttl_dec = m.original()["ip_ttl"] - m.ip_ttl
    out = Output(port_id, eth_src, eth_dst, ttl_dec)
    if modified & _L3L4:
        out = replace(
            out,
            nw_src=m.ip_src if modified & _IP_SRC else None,
            nw_dst=m.ip_dst if modified & _IP_DST else None,
            tp_src=m.tp_src if modified & _TP_SRC else None,
            tp_dst=m.tp_dst if modified & _TP_DST else None,
            icmp_id=m.icmp_id if modified & _ICMP_ID else None,
        )
    return out


def settle_ttl(m: FlowMatch, outputs: Iterable[Output]) -> None:
    """Key the flow on the exact TTL unless its own TTL decrement guards the bound.

    Routers only asked "TTL above n?" (`FlowMatch.ip_ttl_above`), so the mask may leave
    the TTL out: the datapath's `DecTtl` hands a packet whose TTL would reach zero to the
    agent, before it sends anything, when every output takes the same decrement and that
    decrement covers the bound. Otherwise (a drop after a router, outputs that took
    different decrements, a loop) a packet at or below the bound would get this flow's
    answer instead of its own, so the exact TTL joins the mask.
    """
    floor = m.ttl_floor
    if not floor:
        return
    decs = {o.ttl_dec for o in outputs}
    if len(decs) != 1 or decs.pop() < floor:
        m.record(Field.IP_TTL)


def _rewritten(base: Ethernet, out: Output) -> bytes:
    eth = base
    if out.eth_src is not None or out.eth_dst is not None:
        eth = replace(
            eth,
            src=base.src if out.eth_src is None else out.eth_src,
            dst=base.dst if out.eth_dst is None else out.eth_dst,
        )
    if out.ttl_dec and isinstance(eth.payload, IPv4):
        ip = eth.payload
        eth = replace(eth, payload=replace(ip, ttl=max(ip.ttl - out.ttl_dec, 0)))
    return eth.build()
