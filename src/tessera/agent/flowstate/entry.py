"""The agent's bookkeeping around the simulation's flow-state records.

The records themselves are the simulation's (`tessera.simulation.flowstate`:
`ConntrackEntry`, `NatEntry` and their keys), so that what a simulation creates, what the
table holds, what crosses the wire and what a restart reloads are one vocabulary. What
only the agent needs lives here: the key an entry is held by, the one tag that names it
(`simulation.tags.conntrack_tag` / `nat_tag`), the idle timeout it starts with, and the
range checks a decoder makes before bytes become an entry.
"""

from __future__ import annotations

from tessera.packet.addr import ip_to_str
from tessera.simulation.flowstate import (
    STICKY_TIMEOUT,
    ConnKey,
    ConntrackEntry,
    FlowStateEntry,
    NatEntry,
    NatKey,
)
from tessera.simulation.tags import conntrack_tag, nat_tag

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

MAX_ZONE_BYTES = 64  # devices are bridge, router or port-group ids (UUIDs): 36 bytes

StateKey = ConnKey | NatKey

# Idle timeouts by protocol (seconds) that new entries start with.
TIMEOUTS: dict[int, float] = {PROTO_TCP: 600.0, PROTO_UDP: 60.0, PROTO_ICMP: 30.0}
DEFAULT_TIMEOUT = 60.0

# TCP flags as the datapath reports them (`FlowStats.tcp_flags`: byte 13 of the header).
TCP_FIN = 0x01
TCP_RST = 0x04

# Once a flow carrying a TCP entry has seen FIN, the entry's idle timeout drops to this:
# the connection is closing, and what is left is the other side's last data and ACKs
# (a half-closed connection still talking keeps its flows in use, so it never expires).
# 60 s is Linux conntrack's CLOSE_WAIT and its TIME_WAIT (2 x MSL): a reused 5-tuple or
# SNAT port cannot meet an end still in TIME_WAIT for the old connection.
TCP_FIN_TIMEOUT = 60.0
# After RST neither end sends more than segments already in flight or a retransmitted
# RST: a few seconds let those still find the state (and be translated back, not leak
# untranslated), then the SNAT port is free again — what matters with 64-port blocks.
TCP_RST_TIMEOUT = 5.0
# A copy of a peer's entry that the peer removed (`wire` op remove): gone at the next
# sweep unless a flow here used it within this time, then as soon as its flows here
# stay idle that long — a live connection is never cut off by its owner's expiry.
RELEASED_TIMEOUT = 5.0


def closing_timeout(
    tcp_flags: int, fin: float = TCP_FIN_TIMEOUT, rst: float = TCP_RST_TIMEOUT
) -> float | None:
    """The idle timeout a TCP entry whose flows saw `tcp_flags` is held to (None: the
    flags do not shorten it)."""
    if tcp_flags & TCP_RST:
        return rst
    if tcp_flags & TCP_FIN:
        return fin
    return None


def tcp_state(proto: int, tcp_flags: int) -> str:
    """What `tessera conntrack` shows: a TCP entry is "established" until a FIN
    ("closing") or an RST ("reset") went through a flow carrying it; others are
    "active" (they have no close, only their idle timeout)."""
    if proto != PROTO_TCP:
        return "active"
    if tcp_flags & TCP_RST:
        return "reset"
    return "closing" if tcp_flags & TCP_FIN else "established"


def default_timeout(proto: int) -> float:
    return TIMEOUTS.get(proto, DEFAULT_TIMEOUT)


def entry_timeout(entry: FlowStateEntry) -> float:
    """The idle timeout a new entry starts with: its protocol's, but a load balancer's
    sticky entry (`sticky_dnat`) has its own, far longer one (`STICKY_TIMEOUT`)."""
    if is_sticky(entry.key):
        return STICKY_TIMEOUT
    return default_timeout(entry.key.proto)


def is_sticky(key: StateKey) -> bool:
    """A client's member under SOURCE_IP persistence: it outlives its connections, so a
    connection's FIN or RST must not shorten it."""
    return isinstance(key, NatKey) and key.kind == "sticky_dnat"


def key_of(entry: FlowStateEntry) -> StateKey:
    return entry.key


def tag_of(key: StateKey) -> str:
    """The one tag of a piece of state: flows that read it, missed it or created it."""
    return conntrack_tag(key) if isinstance(key, ConnKey) else nat_tag(key)


def describe(entry: FlowStateEntry) -> str:
    """`tcp 10.0.0.1:3333 > 10.0.0.2:80 on <device>` (NAT: `… -> 192.0.2.1:61000`)."""
    if isinstance(entry, ConntrackEntry):
        return entry.key.describe()
    return f"{entry.key.describe()} -> {ip_to_str(entry.binding.ip)}:{entry.binding.port}"


def _u32(v: int) -> bool:
    return 0 <= v < 1 << 32


def _u16(v: int) -> bool:
    return 0 <= v <= 0xFFFF


def valid(entry: FlowStateEntry, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether an entry is well formed (ranges, a device, a sane timeout): what a decoder
    checks before anything is created from bytes it received."""
    k = entry.key
    if not (0 <= k.proto <= 255 and _u32(k.src) and _u32(k.dst)):
        return False
    if not (_u16(k.sport) and _u16(k.dport)):
        return False
    if not k.device or len(k.device.encode("utf-8")) > MAX_ZONE_BYTES:
        return False
    if not 0 < timeout < 1e7:
        return False
    if isinstance(entry, NatEntry):
        return _u32(entry.binding.ip) and _u16(entry.binding.port)
    return True
