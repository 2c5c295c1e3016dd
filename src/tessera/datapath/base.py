"""The one datapath interface the agent drives, whatever moves the packets.

A datapath knows local ports (a number 1..4095 on this host, bound to an interface) and
a table of megaflows; it knows nothing of the virtual topology. The agent turns each
simulation into a `Flow` over local port numbers and tunnel endpoints, so that the eBPF
fast path, the AF_PACKET userspace path and the fake used in tests all execute the same
thing and are interchangeable behind `Datapath`.

A `Match` is a megaflow: the fields the simulation read (a `tessera.packet.Field` mask)
and their values; a packet hits it iff the packet agrees on every masked field. Values
outside the mask are always zero, so two matches are equal exactly when they select the
same packets — which is what lets the agent compare desired and installed tables.
"""

from __future__ import annotations

import abc
import functools
import ipaddress
import operator
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from tessera.packet.addr import ip_from_str, ip_to_str, mac_from_str, mac_to_str
from tessera.packet.match import ALL_FIELDS, FIELD_NAMES, FlowMatch, mask_indexes

MAX_PORT_NO = 4095  # the eBPF miss path carries the port in a 12-bit VLAN id
# The top bit of the 24-bit VNI asks the receiving host to commit the packet's connection
# (`OutputTunnel.commit`); a port's tunnel key is below it (`model.devices.Port`).
VNI_COMMIT = 1 << 23
# Misses one `recv_misses` call hands over at most: then the agent's loop runs its timers
# again (invalidations do not wait for it: the agent applies them between two misses).
MAX_MISSES_PER_WAKE = 256

_MAC_FIELDS = frozenset({"eth_src", "eth_dst"})
_IP_FIELDS = frozenset({"ip_src", "ip_dst"})
_INDEX = {name: i for i, name in enumerate(FIELD_NAMES)}
PacketKey: TypeAlias = tuple[int, ...]
# A tracked connection: (zone, ip_proto, ip_src, ip_dst, sport, dport), an ICMP echo's
# identifier as both ports (`tessera.datapath.conntrack`).
CtTuple: TypeAlias = tuple[int, int, int, int, int, int]


@functools.cache
def masked_getter(mask: int) -> Callable[[PacketKey], PacketKey]:
    """A function from a full key to its values under `mask` (a tuple, whatever the number
    of fields): per-mask tables key by it, once per mask and lookup."""
    idx = mask_indexes(mask)
    if len(idx) > 1:
        return operator.itemgetter(*idx)  # type: ignore[return-value]  # a tuple for 2+
    return lambda key: tuple([key[i] for i in idx])


# --- matches ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Match:
    """A megaflow: `mask` (bits of `tessera.packet.Field`) and the 15 field values in
    `FIELD_NAMES` order, zero wherever the mask is clear. `in_port` is a local port
    number, not a virtual port id."""

    mask: int
    values: PacketKey
    # A match keys the desired table, its tag index and the lookup table: hashed once.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.values) != len(FIELD_NAMES):
            raise ValueError(f"a match has {len(FIELD_NAMES)} values, got {len(self.values)}")
        if not 0 <= self.mask <= int(ALL_FIELDS):
            raise ValueError(f"mask {self.mask:#x} names unknown fields")
        if any(v and not self.mask >> i & 1 for i, v in enumerate(self.values)):
            raise ValueError("a match value is set outside its mask")
        object.__setattr__(self, "_hash", hash((self.mask, self.values)))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def of(cls, mask_fields: Iterable[str] | None = None, **fields: Any) -> Match:
        """`Match.of(in_port=1, eth_dst="02:00:00:00:00:02")`: masks the named fields
        (plus any in `mask_fields`, matched against value 0)."""
        values = [0] * len(FIELD_NAMES)
        mask = 0
        for name in mask_fields or ():
            mask |= 1 << _field_index(name)
        for name, value in fields.items():
            i = _field_index(name)
            mask |= 1 << i
            values[i] = _parse_value(name, value)
        return cls(mask, tuple(values))

    @classmethod
    def from_flow_match(cls, fm: FlowMatch, in_port: int) -> Match:
        """The megaflow a simulation recorded, with its ingress as local port `in_port`."""
        mask = int(fm.mask)
        original = fm.masked_key(ALL_FIELDS)
        values = [0] * len(FIELD_NAMES)
        for i in mask_indexes(mask):
            values[i] = in_port if i == 0 else original[i]
        # Valid by construction (values only inside the mask), and on the miss path.
        return cls.trusted(mask, tuple(values))

    @classmethod
    def trusted(cls, mask: int, values: PacketKey) -> Match:
        """A match its caller built valid (known fields, values only inside the mask),
        without the checks of __post_init__: for the miss path and the sweep's decoding
        of every installed flow, where they cost more than the rest."""
        match = object.__new__(cls)
        object.__setattr__(match, "mask", mask)
        object.__setattr__(match, "values", values)
        object.__setattr__(match, "_hash", hash((mask, values)))
        return match

    @classmethod
    def from_key(cls, mask: int, key: PacketKey) -> Match:
        """`key` (a full packet key) restricted to `mask`."""
        return cls(mask, tuple(v if mask >> i & 1 else 0 for i, v in enumerate(key)))

    def masked(self) -> PacketKey:
        """The masked values only, in key order: what a per-mask hash table is keyed by."""
        return masked_getter(self.mask)(self.values)

    def covers(self, key: PacketKey) -> bool:
        """Whether a packet with full key `key` hits this flow."""
        return all(key[i] == self.values[i] for i in mask_indexes(self.mask))

    @property
    def in_port(self) -> int | None:
        return self.values[0] if self.mask & 1 else None

    def fields(self) -> dict[str, int | str]:
        """The masked fields, readably (MACs and IPs as text), for humans and JSON."""
        out: dict[str, int | str] = {}
        for i in mask_indexes(self.mask):
            name = FIELD_NAMES[i]
            value = self.values[i]
            if name in _MAC_FIELDS:
                out[name] = mac_to_str(value)
            elif name in _IP_FIELDS:
                out[name] = ip_to_str(value)
            else:
                out[name] = value
        return out

    def __str__(self) -> str:
        text = ",".join(f"{k}={v}" for k, v in self.fields().items())
        return text or "*"


def _field_index(name: str) -> int:
    try:
        return _INDEX[name]
    except KeyError:
        raise ValueError(f"no match field '{name}'") from None


def _parse_value(name: str, value: Any) -> int:
    if isinstance(value, str):
        if name in _MAC_FIELDS:
            return mac_from_str(value)
        if name in _IP_FIELDS:
            return ip_from_str(value)
        raise ValueError(f"{name} takes an integer, not '{value}'")
    return int(value)


def packet_key(in_port: int, frame: bytes, ct_state: int = 0) -> PacketKey:
    """Every match field of a frame, as the kernel program extracts them (`ct_state`
    is not in the frame: the caller looked it up).

    Raises `tessera.packet.PacketError` for a frame the parser refuses.
    """
    return key_of(in_port, FlowMatch.from_frame(None, frame, ct_state))


def key_of(in_port: int, match: FlowMatch) -> PacketKey:
    """`packet_key` of the frame `match` was parsed from (its ingress as a port number),
    for a caller that parsed the frame already."""
    return (in_port, *match.masked_key(ALL_FIELDS)[1:])


# --- actions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetEthSrc:
    mac: int

    def __str__(self) -> str:
        return f"set_eth_src({mac_to_str(self.mac)})"


@dataclass(frozen=True, slots=True)
class SetEthDst:
    mac: int

    def __str__(self) -> str:
        return f"set_eth_dst({mac_to_str(self.mac)})"


@dataclass(frozen=True, slots=True)
class DecTtl:
    """Decrement the IPv4 TTL by `n`; a packet whose TTL would reach 0 goes to the agent,
    which simulates it and answers with ICMP time exceeded."""

    n: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.n <= 255:
            raise ValueError(f"a TTL decrement of {self.n} is out of 1..255")

    def __str__(self) -> str:
        return f"dec_ttl({self.n})"


@dataclass(frozen=True, slots=True)
class Output:
    """Send out of local port `port` (towards the VM bound there)."""

    port: int

    def __post_init__(self) -> None:
        if not 1 <= self.port <= MAX_PORT_NO:
            raise ValueError(f"local port number {self.port} is out of 1..{MAX_PORT_NO}")

    def __str__(self) -> str:
        return f"output({self.port})"


@dataclass(frozen=True, slots=True)
class OutputTunnel:
    """VXLAN to host `remote_ip`; `vni` is the egress virtual port's tunnel key, so the
    receiving host only delivers.

    `commit`: the receiving host also tracks the packet's connection, as it arrives, in
    the conntrack zone of the port it delivers to (`CtCommit` there), so that the
    replies entering that port are replies to its datapath without either agent: a
    connection through a conntrack firewall across hosts costs no miss once its flow
    exists. It travels as the VNI's top bit (`VNI_COMMIT`, `wire_vni`): tunnel keys
    stay below it."""

    vni: int
    remote_ip: int
    commit: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.vni < VNI_COMMIT:
            raise ValueError(f"VNI {self.vni} is out of 1..{VNI_COMMIT - 1}")
        if not 0 < self.remote_ip < 1 << 32:
            raise ValueError(f"remote address {self.remote_ip} is not an IPv4 address")

    @property
    def wire_vni(self) -> int:
        """The VNI in the VXLAN header: the tunnel key, and the commit bit."""
        return self.vni | VNI_COMMIT if self.commit else self.vni

    def __str__(self) -> str:
        commit = ",commit" if self.commit else ""
        return f"tunnel(vni={self.vni},remote={ip_to_str(self.remote_ip)}{commit})"


def split_vni(wire_vni: int) -> tuple[int, bool]:
    """(tunnel key, commit) of a VNI as received: `OutputTunnel.wire_vni` undone."""
    return wire_vni & ~VNI_COMMIT, bool(wire_vni & VNI_COMMIT)


@dataclass(frozen=True, slots=True)
class SetIpSrc:
    """NAT: rewrite the IPv4 source address, fixing the IPv4 header checksum and the TCP
    or UDP checksum, whose pseudo-header holds the address (a UDP checksum of 0, "none",
    stays 0; ICMP has no pseudo-header). A later fragment has only its IP header
    rewritten; a frame that is not IPv4 is dropped (a broken flow; outputs before the
    rewrite have left)."""

    addr: int

    def __post_init__(self) -> None:
        _check_ip(self.addr)

    def __str__(self) -> str:
        return f"set_ip_src({ip_to_str(self.addr)})"


@dataclass(frozen=True, slots=True)
class SetIpDst:
    """NAT: rewrite the IPv4 destination address, as `SetIpSrc`."""

    addr: int

    def __post_init__(self) -> None:
        _check_ip(self.addr)

    def __str__(self) -> str:
        return f"set_ip_dst({ip_to_str(self.addr)})"


@dataclass(frozen=True, slots=True)
class SetTpSrc:
    """NAT: rewrite the TCP or UDP source port, fixing the L4 checksum (a UDP checksum
    of 0 stays 0). ICMP echo request and reply are translated by their identifier, and
    this action rewrites it, fixing the ICMP checksum (the one field an echo has for
    NAT, in both directions: dynamic SNAT gives a request a new id and its reply the
    original one back, so `SetTpDst` leaves ICMP alone). A no-op where there is no such
    field: a later fragment (no L4 header), a transport header cut short by the IP
    length, another protocol or ICMP type; a frame that is not IPv4 is dropped, as for
    `SetIpSrc`."""

    port: int

    def __post_init__(self) -> None:
        _check_tp(self.port)

    def __str__(self) -> str:
        return f"set_tp_src({self.port})"


@dataclass(frozen=True, slots=True)
class SetTpDst:
    """NAT: rewrite the TCP or UDP destination port, as `SetTpSrc` (no-op on ICMP)."""

    port: int

    def __post_init__(self) -> None:
        _check_tp(self.port)

    def __str__(self) -> str:
        return f"set_tp_dst({self.port})"


def _check_ip(addr: int) -> None:
    if not 0 <= addr < 1 << 32:
        raise ValueError(f"{addr} is not an IPv4 address")


def _check_tp(port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"transport port {port} is out of 0..65535")


@dataclass(frozen=True, slots=True)
class Drop:
    def __str__(self) -> str:
        return "drop"


@dataclass(frozen=True, slots=True)
class CtCommit:
    """Commit the packet's connection, as it arrived, to conntrack zone `zone`: its
    replies, entering a port of that zone, then carry `CT_REPLY` in their key
    (`tessera.datapath.conntrack`). Changes nothing in the packet."""

    zone: int

    def __post_init__(self) -> None:
        if not 0 < self.zone < 1 << 32:
            raise ValueError(f"conntrack zone {self.zone} is out of 1..2^32-1")

    def __str__(self) -> str:
        return f"ct_commit(zone={self.zone})"


@dataclass(frozen=True, slots=True)
class ToUserspace:
    """Every packet of the flow goes to the agent, as a miss would."""

    def __str__(self) -> str:
        return "userspace"


Action: TypeAlias = (
    SetEthSrc | SetEthDst | DecTtl | SetIpSrc | SetIpDst | SetTpSrc | SetTpDst
    | Output | OutputTunnel | Drop | ToUserspace | CtCommit
)  # fmt: skip
NatAction: TypeAlias = SetIpSrc | SetIpDst | SetTpSrc | SetTpDst


def action_to_json(action: Action) -> dict[str, Any]:
    if isinstance(action, SetEthSrc | SetEthDst):
        name = "set_eth_src" if isinstance(action, SetEthSrc) else "set_eth_dst"
        return {"type": name, "mac": mac_to_str(action.mac)}
    if isinstance(action, SetIpSrc | SetIpDst):
        name = "set_ip_src" if isinstance(action, SetIpSrc) else "set_ip_dst"
        return {"type": name, "addr": ip_to_str(action.addr)}
    if isinstance(action, SetTpSrc | SetTpDst):
        name = "set_tp_src" if isinstance(action, SetTpSrc) else "set_tp_dst"
        return {"type": name, "port": action.port}
    if isinstance(action, DecTtl):
        return {"type": "dec_ttl", "n": action.n}
    if isinstance(action, Output):
        return {"type": "output", "port": action.port}
    if isinstance(action, OutputTunnel):
        out: dict[str, Any] = {
            "type": "tunnel", "vni": action.vni, "remote_ip": ip_to_str(action.remote_ip),
        }  # fmt: skip
        if action.commit:
            out["commit"] = True
        return out
    if isinstance(action, Drop):
        return {"type": "drop"}
    if isinstance(action, CtCommit):
        return {"type": "ct_commit", "zone": action.zone}
    return {"type": "userspace"}


def action_from_json(data: dict[str, Any]) -> Action:
    kind = data.get("type")
    if kind == "set_eth_src":
        return SetEthSrc(mac_from_str(data["mac"]))
    if kind == "set_eth_dst":
        return SetEthDst(mac_from_str(data["mac"]))
    if kind == "dec_ttl":
        return DecTtl(int(data["n"]))
    if kind == "set_ip_src":
        return SetIpSrc(int(ipaddress.IPv4Address(data["addr"])))
    if kind == "set_ip_dst":
        return SetIpDst(int(ipaddress.IPv4Address(data["addr"])))
    if kind == "set_tp_src":
        return SetTpSrc(int(data["port"]))
    if kind == "set_tp_dst":
        return SetTpDst(int(data["port"]))
    if kind == "output":
        return Output(int(data["port"]))
    if kind == "tunnel":
        return OutputTunnel(
            int(data["vni"]),
            int(ipaddress.IPv4Address(data["remote_ip"])),
            bool(data.get("commit", False)),
        )
    if kind == "drop":
        return Drop()
    if kind == "userspace":
        return ToUserspace()
    if kind == "ct_commit":
        return CtCommit(int(data["zone"]))
    raise ValueError(f"unknown datapath action {kind!r}")


# --- flows, counters, misses -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flow:
    """A megaflow and what to do with its packets, in order. No action at all drops."""

    match: Match
    actions: tuple[Action, ...]


@dataclass(frozen=True, slots=True)
class FlowStats:
    """Counters kept by the datapath itself: `last_used` is `time.monotonic()` seconds of
    the last hit, None if the flow never carried a packet.

    `tcp_flags` is the OR of the TCP flags (FIN 0x01, SYN 0x02, RST 0x04, ... : byte 13
    of the header) of every packet that hit the flow, as OVS keeps them: after a
    connection's first packet its packets stay in the datapath, and this is how the
    agent learns that it is closing. Counted for IPv4 TCP in a first or only fragment
    whose first 14 header bytes (up to the flags) lie within the IP total length and the
    frame (`tessera.datapath.frames.tcp_flags`); other packets add nothing."""

    packets: int = 0
    bytes: int = 0
    last_used: float | None = None
    tcp_flags: int = 0


@dataclass(frozen=True, slots=True)
class InstalledFlow:
    flow: Flow
    stats: FlowStats


@dataclass(frozen=True, slots=True)
class Miss:
    """A packet no flow matched, with the local port it entered on."""

    port: int
    frame: bytes
    received: float = field(default=0.0, compare=False)  # time.monotonic()
    # The CT_* bits the datapath's connection table gave the packet (its key's ct_state).
    ct_state: int = 0
    # What the backend needs to write this very packet back (offload state): opaque.
    meta: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class PortBinding:
    port: int
    ifname: str
    tunnel_key: int | None


class DatapathError(Exception):
    """A datapath operation failed; the message is for humans (one line)."""


_R = TypeVar("_R")


def stepped(steps: Iterable[_R | None]) -> Generator[None, None, _R | None]:
    """A `..._in_steps` read inside a caller that steps itself (`yield from`): yields
    at each boundary between two parts, and returns the read's result."""
    result = None
    for part in steps:
        if part is None:
            yield
        else:
            result = part
    return result


def read_at_once(steps: Iterable[_R | None], what: str) -> _R:
    """A `..._in_steps` read done whole, for callers that do not step."""
    result = None
    for part in steps:
        if part is not None:
            result = part
    if result is None:
        raise DatapathError(f"reading {what} ended without a result")
    return result


class Datapath(abc.ABC):
    """What the agent needs from any backend. Thread-safety: install/delete/stats may be
    called from the agent's threads concurrently with `recv_misses`."""

    kind: str = "abstract"

    @abc.abstractmethod
    def start(self) -> None:
        """Acquire resources; on a restart, adopt what a previous agent left in place."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release this process's resources. Kernel state (flows, ports) that can keep
        forwarding without the agent is left in place for the next agent to reconcile."""

    # -- ports --
    @abc.abstractmethod
    def add_port(self, port: int, ifname: str, tunnel_key: int | None = None) -> None:
        """Attach to `ifname` as local port `port`; packets tunnelled here with VNI
        `tunnel_key` are delivered to it. Re-adding an existing port updates it."""

    @abc.abstractmethod
    def remove_port(self, port: int) -> None:
        """Detach; an unknown port is ignored. Every flow that outputs to the port is
        deleted with it: its packets reach the agent again instead of leaving by a
        device that is no longer this port (or, later, another port's)."""

    @abc.abstractmethod
    def ports(self) -> dict[int, PortBinding]:
        """The ports attached now (after a restart: those a previous agent attached)."""

    # -- flows --
    @abc.abstractmethod
    def install(self, flow: Flow) -> None:
        """Add the flow, or replace the actions of an installed one with the same match.

        A replaced flow keeps its counters: it carries the same traffic, and what reads
        them (the agent's idle expiry, connection liveness) must not take a replace for
        a flow that has just gone quiet."""

    @abc.abstractmethod
    def delete(self, match: Match) -> bool:
        """Remove a flow; False if it was not installed."""

    def delete_many(self, matches: Sequence[Match]) -> int:
        """`delete` of each; how many were installed. A rule change may invalidate
        thousands of flows at once: the eBPF datapath deletes them in batch calls."""
        return sum(self.delete(m) for m in matches)

    @abc.abstractmethod
    def dump(self) -> dict[Match, InstalledFlow]:
        """Every installed flow with its counters."""

    def dump_in_steps(self) -> Iterator[dict[Match, InstalledFlow] | None]:
        """`dump` read a part per step: None after each part but the last, then the
        whole dump. The agent reads one part between two misses, so that a large table
        does not hold them back. A flow installed or removed while the steps go on may
        or may not be in it. Here: one step (a table in memory is read at once)."""
        yield self.dump()

    @abc.abstractmethod
    def stats(self, match: Match) -> FlowStats | None:
        """Counters of one flow, None if not installed."""

    # -- packets --
    @abc.abstractmethod
    def recv_misses(self, timeout: float) -> Iterable[Miss]:
        """Misses that arrived, in order of arrival, waiting up to `timeout` seconds for
        the first one; at most `MAX_MISSES_PER_WAKE`, the rest wait for the next call.

        May be lazy (a generator reading the next miss when asked): the caller handles
        each miss before taking the next, so the first is never held up by the rest."""

    @abc.abstractmethod
    def reinject(self, miss: Miss) -> None:
        """Run a missed packet through the flow table again, as if it had just entered
        (after the agent installed its flow); a second miss drops it, never loops."""

    @abc.abstractmethod
    def execute(self, frame: bytes, actions: Sequence[Action]) -> None:
        """Apply `actions` to one packet without installing anything: how generated
        packets (ARP/ICMP/DHCP replies) and results not worth caching leave."""

    def wakeup(self) -> None:  # noqa: B027 - optional
        """Make a pending `recv_misses` return early (for shutdown)."""

    # -- connection tracking (`tessera.datapath.conntrack`) --
    @abc.abstractmethod
    def set_port_zone(self, port: int, zone: int) -> None:
        """Look up the replies of port `port`'s packets in conntrack zone `zone` (0: no
        lookup; the packets' ct_state is then 0)."""

    @abc.abstractmethod
    def port_zones(self) -> dict[int, int]:
        """Ports with a conntrack zone (after a restart: those a previous agent set)."""

    @abc.abstractmethod
    def ct_commit(self, conn: CtTuple, tcp_flags: int = 0) -> None:
        """Track `conn` as if a `CtCommit` had just carried its packet (last used now)."""

    @abc.abstractmethod
    def ct_delete(self, conn: CtTuple) -> bool:
        """Stop tracking `conn`; False if it was not tracked."""

    def ct_delete_many(self, conns: Sequence[CtTuple]) -> int:
        """`ct_delete` of each; how many were tracked. The sweep may expire a whole
        table's worth at once: the eBPF datapath deletes them in batch calls."""
        return sum(self.ct_delete(c) for c in conns)

    @abc.abstractmethod
    def ct_entries(self) -> dict[CtTuple, tuple[float, int]]:
        """Every tracked connection: (`time.monotonic()` of its last packet either way,
        the OR of the TCP flags seen either way)."""

    @abc.abstractmethod
    def ct_capacity(self) -> int:
        """How many connections the table holds; beyond that the one used longest ago
        is evicted (its next packet is "new" again)."""

    def ct_entries_in_steps(self) -> Iterator[dict[CtTuple, tuple[float, int]] | None]:
        """`ct_entries` read a part per step, as `dump_in_steps`. Here: one step."""
        yield self.ct_entries()
