"""What a simulation decides, as data: a closed set of types the agent acts on.

Everything is in terms of virtual port ids: which of them are local and which sit
behind a tunnel is the agent's business. A result is only ever *applied* by the caller
(install the flow, send the emitted packets, write the state updates), which is what
makes a simulation free of side effects and safe to re-run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from tessera.packet.addr import ip_to_str, mac_to_str
from tessera.packet.match import FIELD_NAMES, FlowMatch
from tessera.simulation.flowstate import ConnKey, FlowStateEntry, NatKey


class Verdict(StrEnum):
    FORWARD = "forward"  # at least one output
    DROP = "drop"
    CONSUMED = "consumed"  # answered or absorbed by a device (ARP, DHCP, ping to a router)
    HOLD = "hold"  # waiting for ARP: keep the packet and simulate it again later


class ExpiryClass(StrEnum):
    """How long a flow built from the result may live (MidoNet's figures).

    Every class a flow can have is here; the agent's `flowtable.IDLE_TIMEOUTS` gives each
    installable one its idle timeout, and a test checks that none is missing.
    """

    ERROR = "error"  # drops and ICMP errors: short, so a fix takes effect soon
    NORMAL = "normal"
    # A forward whose decision read or made flow state (connection tracking, NAT): the
    # flow keeps the entries of `state_refs` and `flow_state` alive while it is used.
    STATEFUL = "stateful"
    # Install nothing: the decision read more than the flow match can express (an ARP or
    # DHCP body, a ping payload), or the packet is held; every such packet is simulated.
    UNCACHED = "uncached"
    # MidoNet keeps flows of tunnelled traffic longest; nothing assigns it yet (the
    # engine gives a packet from a tunnel the class its own decision calls for).
    TUNNEL = "tunnel"


EmitKind = Literal[
    "arp_request", "arp_reply", "icmp_echo_reply", "icmp_error", "dhcp_reply", "mirror"
]


@dataclass(frozen=True, slots=True)
class PortOutput:
    """Send the packet out of an exterior port, after these rewrites (None: unchanged).

    Not the datapath's `tessera.datapath.base.Output`, hence the name: this one names a
    virtual port by id, wherever it is bound, and its rewrites are relative to the
    packet as it arrived, one set per output; the datapath's names a local port number
    on one host and is one step of an ordered action list whose rewrites accumulate.
    The agent turns the one into the other (`tessera.agent.translate`).
    """

    port_id: str
    eth_src: int | None = None
    eth_dst: int | None = None
    ttl_dec: int = 0
    # NAT rewrites: tp_src/tp_dst are TCP/UDP ports, icmp_id the identifier of an ICMP
    # echo (dynamic SNAT translates it like a source port, and its replies back).
    nw_src: int | None = None
    nw_dst: int | None = None
    tp_src: int | None = None
    tp_dst: int | None = None
    icmp_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"port_id": self.port_id}
        if self.eth_src is not None:
            out["set_eth_src"] = mac_to_str(self.eth_src)
        if self.eth_dst is not None:
            out["set_eth_dst"] = mac_to_str(self.eth_dst)
        if self.ttl_dec:
            out["ttl_dec"] = self.ttl_dec
        if self.nw_src is not None:
            out["set_nw_src"] = ip_to_str(self.nw_src)
        if self.nw_dst is not None:
            out["set_nw_dst"] = ip_to_str(self.nw_dst)
        if self.tp_src is not None:
            out["set_tp_src"] = self.tp_src
        if self.tp_dst is not None:
            out["set_tp_dst"] = self.tp_dst
        if self.icmp_id is not None:
            out["set_icmp_id"] = self.icmp_id
        return out


#: The former name, for the simulation's own modules and tests until they say PortOutput.
Output = PortOutput


@dataclass(frozen=True, slots=True)
class MirrorCopy:
    """A copy of the packet that mirror `mirror_id` sends out of `output.port_id`, with
    the rewrites the packet had where the mirror saw it (see `mirror.py`).

    Copies are sent with the packet's outputs, by the same flow, but are not outputs:
    the packet's verdict and connection state ignore them.
    """

    mirror_id: str
    output: PortOutput

    def to_dict(self) -> dict[str, Any]:
        return {"mirror_id": self.mirror_id, **self.output.to_dict()}


@dataclass(frozen=True, slots=True)
class EmittedPacket:
    """A packet the virtual network generated, to send out of an exterior port as is.

    Generated packets that leave through an interior port were already simulated onward
    by the engine, so `port_id` is always where the frame leaves the virtual network.
    They are sent once, for this packet only: they are never part of a cached flow.
    """

    port_id: str
    frame: bytes
    kind: EmitKind

    def to_dict(self) -> dict[str, Any]:
        return {"port_id": self.port_id, "kind": self.kind, "frame": self.frame.hex()}


@dataclass(frozen=True, slots=True)
class MacLearned:
    """Write to the bridge's MAC table: `mac` in `vlan_id` lives behind `port_id`."""

    bridge_id: str
    vlan_id: int
    mac: int
    port_id: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "mac",
            "bridge_id": self.bridge_id,
            "vlan_id": self.vlan_id,
            "mac_addr": mac_to_str(self.mac),
            "port_id": self.port_id,
        }


@dataclass(frozen=True, slots=True)
class ArpLearned:
    """Write to the router's ARP table: `ip` is at `mac` until `expiry` (Unix seconds)."""

    router_id: str
    ip: int
    mac: int
    expiry: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "arp",
            "router_id": self.router_id,
            "ip_addr": ip_to_str(self.ip),
            "mac_addr": mac_to_str(self.mac),
            "expiry": self.expiry,
        }


StateUpdate = MacLearned | ArpLearned


@dataclass(frozen=True, slots=True)
class ArpWait:
    """The packet waits for `router_id` to resolve `ip` (an ARP request was emitted out of
    `port_id`). Simulate it again when tag `arp:<router>:<ip>` changes; if no answer comes
    in time, simulate it again with `(router_id, ip)` in `arp_failed` to get the ICMP error."""

    router_id: str
    ip: int
    port_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"router_id": self.router_id, "ip_addr": ip_to_str(self.ip), "port_id": self.port_id}


MAX_TRACE_NODES = 2000
"""Steps one trace may show. A trace is read by a person (`tessera trace`) and sent whole
in one API answer: past a few thousand lines it is neither readable nor cheap to send
(about 100 bytes of JSON a step). Simulation limits bound the work; this bounds the
answer, for the simulations that stay within them but still take many steps."""


@dataclass(slots=True)
class TraceBudget:
    """Steps a trace tree may still take (`left`), and how many it was refused."""

    left: int = MAX_TRACE_NODES
    refused: int = 0


@dataclass(slots=True)
class TraceNode:
    """One step of the trace tree: a port, a device, a chain, a rule, or a note.

    Built only when a trace is asked for; the tree follows the packet, with one child per
    branch where a bridge floods. A tree made with a `budget` (the simulation's) stops
    growing when it is spent: `add` then returns a node attached nowhere, which callers
    may write into as usual, and counts it in `budget.refused`.
    """

    kind: str
    id: str | None
    text: str
    children: list[TraceNode] = field(default_factory=list)
    budget: TraceBudget | None = field(default=None, compare=False, repr=False)

    def add(self, kind: str, id: str | None, text: str) -> TraceNode:
        budget = self.budget
        node = TraceNode(kind, id, text, budget=budget)
        if budget is not None:
            if budget.left <= 0:
                budget.refused += 1
                return node
            budget.left -= 1
        self.children.append(node)
        return node

    def add_final(self, kind: str, id: str | None, text: str) -> TraceNode:
        """Add a step whatever the budget: the few lines that say how a trace ended."""
        node = TraceNode(kind, id, text, budget=self.budget)
        self.children.append(node)
        return node

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "id": self.id, "text": self.text}
        if self.children:
            out["children"] = [c.to_dict() for c in self.children]
        return out


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """The whole decision for one packet.

    `match` carries the mask: every packet that agrees with this one on the masked fields
    gets the same `verdict`, `outputs` and drop (and the same kinds of emitted packets on
    the same ports) — that is what lets the agent cache the flow. `tags` name everything
    the decision depended on; `state_updates` are the MACs and ARP entries to write.
    `flow_state` (FORWARD only) is the connection tracking entries and NAT bindings the
    packet creates: install them, and push them to the hosts that may see the replies,
    before forwarding the packet. `state_refs` are the existing entries the decision
    found: a flow installed for this result keeps them (and `flow_state`) alive.
    """

    verdict: Verdict
    match: FlowMatch
    outputs: tuple[PortOutput, ...] = ()
    emitted: tuple[EmittedPacket, ...] = ()
    tags: frozenset[str] = frozenset()
    expiry: ExpiryClass = ExpiryClass.NORMAL
    state_updates: tuple[StateUpdate, ...] = ()
    waits: tuple[ArpWait, ...] = ()
    drop_reason: str | None = None
    trace: TraceNode | None = None
    flow_state: tuple[FlowStateEntry, ...] = ()
    state_refs: tuple[ConnKey | NatKey, ...] = ()
    # A cost limit the simulation hit (`context.MAX_*`: "hops", "device_visits",
    # "rules_evaluated", "chain_depth"), None if none: the packet was dropped for it, or
    # a packet the network generated for it was. The agent counts these.
    limit: str | None = None
    # What the simulation cost, the packets it generated included.
    devices_visited: int = 0
    rules_evaluated: int = 0
    # Copies mirrors make of the packet (FORWARD, DROP and CONSUMED alike): sent along
    # with `outputs`, by the flow when it is cached.
    mirrored: tuple[MirrorCopy, ...] = ()
    # The connection decision came from the datapath's ct_state (`stateful.is_forward`):
    # the match keys on ct_state, not on the 5-tuple. Whoever installs the flow commits
    # `flow_state`'s connections in the datapath, or records `stateful.KERNEL_TUPLE`.
    ct_kernel: bool = False

    @property
    def cacheable(self) -> bool:
        return self.expiry is not ExpiryClass.UNCACHED

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for `tessera trace --json` and the traces API."""
        mask = int(self.match.mask)
        original = self.match.original()
        masked: dict[str, Any] = {}
        for i, name in enumerate(FIELD_NAMES):
            if mask >> i & 1:
                value = original[name]
                if name in ("eth_src", "eth_dst"):
                    value = mac_to_str(value)
                elif name in ("ip_src", "ip_dst"):
                    value = ip_to_str(value)
                masked[name] = value
        return {
            "verdict": str(self.verdict),
            "drop_reason": self.drop_reason,
            "outputs": [o.to_dict() for o in self.outputs],
            "mirrored": [c.to_dict() for c in self.mirrored],
            "emitted": [e.to_dict() for e in self.emitted],
            "match": masked,
            "tags": sorted(self.tags),
            "expiry": str(self.expiry),
            "state_updates": [u.to_dict() for u in self.state_updates],
            "waits": [w.to_dict() for w in self.waits],
            "flow_state": [e.to_dict() for e in self.flow_state],
            "state_refs": [k.to_dict() for k in self.state_refs],
            "limit": self.limit,
            "cost": {
                "devices_visited": self.devices_visited,
                "rules_evaluated": self.rules_evaluated,
            },
            "trace": self.trace.to_dict() if self.trace is not None else None,
        }
