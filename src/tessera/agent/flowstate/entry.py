"""The state record: a tracked connection and, for NAT, its translation.

Kept free of the simulation's own types so the table, the wire format and the file can be
built and tested before the simulation produces state; an adapter turns the
simulation's results into `StateEntry`s.

Times are the agent's monotonic clock: `created` is when this agent learned the entry,
`expiry` its idle timeout in seconds (how long it lives without traffic). Only the
timeout crosses the wire or a restart; each agent stamps `created` on its own clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from tessera.packet.addr import ip_to_str

Kind = Literal["conntrack", "nat"]
NatSide = Literal["src", "dst"]

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

MAX_ZONE_BYTES = 64  # zones are device or port-group ids (UUIDs): 36 bytes


@dataclass(frozen=True, slots=True)
class ConnKey:
    """A connection as one direction sees it, in the zone (device or stateful port
    group id) that tracked it. ICMP echo uses its echo id as both ports, so a request
    and its reply are reverses of each other like TCP and UDP."""

    proto: int
    src_ip: int
    dst_ip: int
    src_port: int
    dst_port: int
    zone: str

    def reversed(self) -> ConnKey:
        """The key of the other direction's packets."""
        return ConnKey(
            self.proto, self.dst_ip, self.src_ip, self.dst_port, self.src_port, self.zone
        )

    def text(self) -> str:
        """`tcp 10.0.0.1:3333 > 10.0.0.2:80` for people (the CLI, logs)."""
        name = {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMP: "icmp"}.get(
            self.proto, f"proto{self.proto}"
        )
        if self.proto == PROTO_ICMP:
            return f"{name} {ip_to_str(self.src_ip)} > {ip_to_str(self.dst_ip)} id={self.src_port}"
        return (
            f"{name} {ip_to_str(self.src_ip)}:{self.src_port} > "
            f"{ip_to_str(self.dst_ip)}:{self.dst_port}"
        )


@dataclass(frozen=True, slots=True)
class StateEntry:
    """One piece of flow state. `kind="conntrack"`: the connection `key` is known, so
    packets with its reversed key are return traffic. `kind="nat"`: `key` (as the first
    packet had it) is translated on `nat_side` to (`nat_ip`, `nat_port`), and return
    traffic arrives addressed to the translation."""

    kind: Kind
    key: ConnKey
    nat_ip: int | None = None
    nat_port: int | None = None
    created: float = 0.0
    expiry: float = 60.0
    nat_side: NatSide = "src"

    def return_key(self) -> ConnKey:
        """The key return traffic carries when it reaches the tracking zone."""
        k = self.key
        if self.kind != "nat" or self.nat_ip is None:
            return k.reversed()
        port = self.nat_port
        if self.nat_side == "src":  # replies are addressed to the translated source
            if k.proto == PROTO_ICMP:
                ident = k.src_port if port is None else port
                return ConnKey(k.proto, k.dst_ip, self.nat_ip, ident, ident, k.zone)
            return ConnKey(
                k.proto, k.dst_ip, self.nat_ip, k.dst_port,
                k.src_port if port is None else port, k.zone,
            )  # fmt: skip
        if k.proto == PROTO_ICMP:  # replies come from the translated destination
            ident = k.dst_port if port is None else port
            return ConnKey(k.proto, self.nat_ip, k.src_ip, ident, ident, k.zone)
        return ConnKey(
            k.proto, self.nat_ip, k.src_ip, k.dst_port if port is None else port,
            k.src_port, k.zone,
        )  # fmt: skip

    def stamped(self, created: float) -> StateEntry:
        """The same entry as learned at `created` on this agent's clock."""
        return replace(self, created=created)

    def translation(self) -> str:
        """`src→192.0.2.1:40001` for people; '' for plain conntrack."""
        if self.kind != "nat" or self.nat_ip is None:
            return ""
        port = "" if self.nat_port is None else f":{self.nat_port}"
        return f"{self.nat_side}→{ip_to_str(self.nat_ip)}{port}"


def valid(entry: StateEntry) -> bool:
    """Whether an entry is well formed (ranges, NAT fields present for NAT): what a
    decoder checks before anything is created from bytes it received."""
    k = entry.key
    if not (0 <= k.proto <= 255 and 0 <= k.src_ip < 1 << 32 and 0 <= k.dst_ip < 1 << 32):
        return False
    if not (0 <= k.src_port <= 0xFFFF and 0 <= k.dst_port <= 0xFFFF):
        return False
    if not k.zone or len(k.zone.encode("utf-8")) > MAX_ZONE_BYTES:
        return False
    if not (entry.expiry > 0 and entry.expiry < 1e7):
        return False
    if entry.kind == "nat":
        if entry.nat_ip is None or not 0 <= entry.nat_ip < 1 << 32:
            return False
        if entry.nat_port is not None and not 0 <= entry.nat_port <= 0xFFFF:
            return False
        return entry.nat_side in ("src", "dst")
    return entry.kind == "conntrack" and entry.nat_ip is None and entry.nat_port is None
