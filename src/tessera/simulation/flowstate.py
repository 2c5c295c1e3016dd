"""Flow state: connection tracking entries and NAT bindings, as data (MidoNet's model).

A simulation reads flow state through a read-only `FlowStateView` (in the snapshot, like
the MAC and ARP tables) and never writes it: the state a forward packet creates is
carried in `SimulationResult.flow_state`, for the agent to install and push to the other
hosts, so that a simulation run again or abandoned leaves nothing behind.

Keys, as in MidoNet's ConnTrackState and NatState:

- A `ConnKey` is (protocol, source, destination, source port, destination port, device)
  of a connection *as its forward packets leave the virtual network*, on the device they
  leave by (after any NAT). A packet entering device D is a return flow iff the reversed
  key of its arrival headers on D is tracked. ICMP echo is keyed by its identifier in
  both port places, so that a request and its reply share the key; other protocols than
  TCP, UDP and ICMP echo are not tracked (always forward, never create entries).
- "Device" is the id of the bridge or router a port belongs to, or, for a port of a
  stateful port group, that group's id: the members then share the state whatever
  device they are on (the lowest group id if a port is in several).
- A NAT binding maps a `NatKey` (kind, protocol, 5-tuple of the packet when the rule
  met it, device of the rule's chain) to an address and port. Each new translation
  makes two entries, the forward one (`fwd_snat`/`fwd_dnat`) and the one its replies
  are found by (`rev_snat`/`rev_dnat`), exactly as MidoNet's NatKey.returnKey.
- A load balancer's `sticky_dnat` entry (client, port 0, VIP, VIP port; device the load
  balancer) holds the member a `SOURCE_IP` VIP sends that client's new connections to;
  it has no reverse entry (each connection has its own `fwd_dnat`/`rev_dnat` pair).

Dynamic SNAT picks its address and port through a `NatAllocator`: pure, injectable; the
agent's leases port blocks of 64 from the NSDB, `FirstFreeAllocator` serves tests and
traces.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol

from tessera.packet.addr import ip_to_str

NatKind = Literal["fwd_snat", "fwd_dnat", "rev_snat", "rev_dnat", "sticky_dnat"]

STICKY_TIMEOUT = 3600.0
"""Idle seconds a load balancer's `sticky_dnat` entry (a client's member under
`SOURCE_IP` persistence) outlives the last use of its client's connections: an hour, as
MidoNet's sticky source IP timeout did; far longer than a TCP entry, since it must span
the pauses between a client's connections, not within one (`loadbalancer`)."""

PROTO_ICMP = 1
_PROTO_NAMES = {PROTO_ICMP: "icmp", 6: "tcp", 17: "udp"}


def _proto(proto: int) -> str:
    return _PROTO_NAMES.get(proto, str(proto))


@dataclass(frozen=True, slots=True)
class ConnKey:
    """A tracked connection as its forward packets leave `device` (see the module doc)."""

    proto: int
    src: int
    dst: int
    sport: int  # the echo id for ICMP
    dport: int  # the echo id for ICMP
    device: str

    def reversed(self) -> ConnKey:
        return ConnKey(self.proto, self.dst, self.src, self.dport, self.sport, self.device)

    def describe(self) -> str:
        return (
            f"{_proto(self.proto)} {ip_to_str(self.src)}:{self.sport} > "
            f"{ip_to_str(self.dst)}:{self.dport} on {self.device}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "proto": self.proto,
            "src": ip_to_str(self.src),
            "dst": ip_to_str(self.dst),
            "sport": self.sport,
            "dport": self.dport,
            "device": self.device,
        }


@dataclass(frozen=True, slots=True)
class NatKey:
    """A packet's headers where a NAT rule met it, on the device owning the chain."""

    kind: NatKind
    proto: int
    src: int
    sport: int
    dst: int
    dport: int
    device: str

    def describe(self) -> str:
        return (
            f"{self.kind} {_proto(self.proto)} {ip_to_str(self.src)}:{self.sport} > "
            f"{ip_to_str(self.dst)}:{self.dport} on {self.device}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "proto": self.proto,
            "src": ip_to_str(self.src),
            "sport": self.sport,
            "dst": ip_to_str(self.dst),
            "dport": self.dport,
            "device": self.device,
        }


@dataclass(frozen=True, slots=True)
class NatBinding:
    """The address and port a key translates to (the port is the echo id for ICMP)."""

    ip: int
    port: int


@dataclass(frozen=True, slots=True)
class ConntrackEntry:
    """State to create: the connection `key` is tracked."""

    key: ConnKey

    def to_dict(self) -> dict[str, Any]:
        return {"type": "conntrack", **self.key.to_dict()}


@dataclass(frozen=True, slots=True)
class NatEntry:
    """State to create: packets with `key` translate to `binding`."""

    key: NatKey
    binding: NatBinding

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "nat",
            **self.key.to_dict(),
            "to_ip": ip_to_str(self.binding.ip),
            "to_port": self.binding.port,
        }


FlowStateEntry = ConntrackEntry | NatEntry


def nat_return(key: NatKey, binding: NatBinding) -> NatEntry:
    """The entry a forward translation's replies are found by (MidoNet's returnKey).

    An ICMP echo has one identifier for both ports, so its reply carries the translated
    one (`binding.port`) on both sides of the key."""
    echo = key.proto == PROTO_ICMP
    if key.kind == "fwd_snat":
        dport = binding.port if echo else key.dport
        rkey = NatKey("rev_snat", key.proto, key.dst, dport, binding.ip, binding.port, key.device)
        return NatEntry(rkey, NatBinding(key.src, key.sport))
    assert key.kind == "fwd_dnat"
    sport = binding.port if echo else key.sport
    rkey = NatKey("rev_dnat", key.proto, binding.ip, binding.port, key.src, sport, key.device)
    return NatEntry(rkey, NatBinding(key.dst, key.dport))


_NO_CONNS: frozenset[ConnKey] = frozenset()
_NO_BINDINGS: Mapping[NatKey, NatBinding] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class FlowStateView:
    """What a simulation may read of the flow state: read-only, swapped in O(1).

    `conntrack` holds the tracked connections (any container answering `in`, e.g. a
    frozenset or the keys view of the agent's table); `nat` the bindings, forward and
    reverse. The agent builds it from its local table (its own entries and those pushed
    by other hosts); a trace uses an empty one unless given another.
    """

    conntrack: Collection[ConnKey] = _NO_CONNS
    nat: Mapping[NatKey, NatBinding] = field(default_factory=lambda: _NO_BINDINGS)


EMPTY_FLOW_STATE = FlowStateView()


@dataclass(frozen=True, slots=True)
class NatRange:
    """A rule's nat target, compiled: addresses and ports (0-0: keep the packet's)."""

    ip_from: int
    ip_to: int
    port_from: int
    port_to: int


@dataclass(frozen=True, slots=True)
class SnatRequest:
    """A new connection needing a source address and port (MidoNet's NatLeaser call).

    For ICMP echo `sport` and `dport` are the echo id, translated like a source port:
    the new id comes from the targets' ports (0-0 keeps it, as it keeps a TCP port).
    """

    device: str
    proto: int
    src: int
    sport: int
    dst: int
    dport: int
    targets: tuple[NatRange, ...]


class NatAllocator(Protocol):
    """Chooses the source of a new dynamic SNAT binding; MUST NOT change any state.

    `taken(ip, port)` says whether the view (or this very simulation) already binds a
    connection of the same protocol to the same destination through `(ip, port)` on the
    device: any choice it refuses would make two connections' replies indistinguishable.
    Return None when nothing is free (the packet is dropped as "SNAT ports exhausted");
    an allocator that must first lease more ports (the agent's, blocks of 64 from the
    NSDB) raises `NotYetLoaded("nat_block", ...)` instead, for the caller to lease and
    simulate again. The choice is reserved only when the agent installs the result's
    `NatEntry`s, so a simulation that is run again or abandoned leaks nothing.
    """

    def allocate_snat(
        self, request: SnatRequest, taken: Callable[[int, int], bool]
    ) -> NatBinding | None: ...


class FirstFreeAllocator:
    """The first free (address, port) in target order, addresses then ports ascending.

    A target with ports 0-0 keeps the packet's source port (an echo's id). Deterministic:
    the same request and view give the same binding, which is what traces and tests need.
    """

    def allocate_snat(
        self, request: SnatRequest, taken: Callable[[int, int], bool]
    ) -> NatBinding | None:
        for t in request.targets:
            for ip in range(t.ip_from, t.ip_to + 1):
                if t.port_from == 0 and t.port_to == 0:
                    if not taken(ip, request.sport):
                        return NatBinding(ip, request.sport)
                    continue
                for port in range(max(t.port_from, 1), t.port_to + 1):
                    if not taken(ip, port):
                        return NatBinding(ip, port)
        return None


FIRST_FREE = FirstFreeAllocator()
