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
from tessera.simulation.flowstate import ConnKey, ConntrackEntry, FlowStateEntry, NatEntry, NatKey
from tessera.simulation.tags import conntrack_tag, nat_tag

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

MAX_ZONE_BYTES = 64  # devices are bridge, router or port-group ids (UUIDs): 36 bytes

StateKey = ConnKey | NatKey

# Idle timeouts by protocol (seconds) that new entries start with.
TIMEOUTS: dict[int, float] = {PROTO_TCP: 600.0, PROTO_UDP: 60.0, PROTO_ICMP: 30.0}
DEFAULT_TIMEOUT = 60.0


def default_timeout(proto: int) -> float:
    return TIMEOUTS.get(proto, DEFAULT_TIMEOUT)


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
