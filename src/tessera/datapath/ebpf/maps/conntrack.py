"""``port_zones``, ``conntrack`` and ``conntrack_new``: the kernel's connection table
and who looks it up.

A port with a zone has every packet's reversed tuple looked up in ``conntrack`` before
the flow lookup (the answer is the key's ``ct_state``); a flow's CT_COMMIT action adds
the packet's own tuple. The agent writes both maps too: zones as ports bind, entries it
learns elsewhere (a peer's connection whose replies enter here), and it removes the
entries that went idle (`sweep` reads them all in batches).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator, Sequence

from tessera.datapath.base import MAX_PORT_NO, CtTuple
from tessera.datapath.conntrack import CT_F_UNREPLIED
from tessera.datapath.ebpf import bpf
from tessera.datapath.ebpf.layout import CtKey, CtValue
from tessera.datapath.ebpf.maps.bpfmap import BpfMap, u32_key

__all__ = ["ConntrackMap", "PortZoneMap"]


class PortZoneMap:
    """``port_zones``: port number -> the conntrack zone its packets are looked up in."""

    def __init__(self, m: BpfMap[ctypes.c_uint32, ctypes.c_uint32]) -> None:
        self.map = m

    def set(self, port_no: int, zone: int) -> None:
        if not 1 <= port_no <= MAX_PORT_NO:
            raise ValueError(f"port number {port_no} out of 1..{MAX_PORT_NO}")
        if not 0 <= zone < 1 << 32:
            raise ValueError(f"zone {zone} out of 0..2^32-1")
        self.map.update(u32_key(port_no), ctypes.c_uint32(zone))

    def get(self, port_no: int) -> int:
        v = self.map.lookup(u32_key(port_no))
        return 0 if v is None else int(v.value)

    def items(self) -> dict[int, int]:
        """Ports with a zone (an array map holds every index: zero ones are left out)."""
        return {int(k.value): int(v.value) for k, v in self.map.items() if v.value}


# CtKey and CtValue as `struct` reads them (native order, as ctypes lays them out).
_KEY = struct.Struct("=IIIHHB3x")
_VALUE = struct.Struct("=QI4x")
assert (_KEY.size, _VALUE.size) == (ctypes.sizeof(CtKey), ctypes.sizeof(CtValue))


def _key(t: CtTuple) -> CtKey:
    zone, proto, src, dst, sport, dport = t
    return CtKey(zone=zone, src=src, dst=dst, sport=sport, dport=dport, proto=proto)


class ConntrackMap:
    """``conntrack`` and ``conntrack_new``: (zone, proto, src, dst, sport, dport) ->
    (last used, TCP flags), as one table. The program keeps a connection nobody
    answered in ``conntrack_new`` (`new`) and moves it to ``conntrack`` (`map`) with
    its first reply; what the agent writes goes to ``conntrack``."""

    def __init__(
        self, m: BpfMap[CtKey, CtValue], new: BpfMap[CtKey, CtValue] | None = None
    ) -> None:
        self.map = m
        self.new = new
        self._maps = (m,) if new is None else (m, new)
        # Connections the last full read found in `new`: where `delete_many` looks first.
        self._in_new: set[CtTuple] = set()

    def commit(self, t: CtTuple, last_used_ns: int, tcp_flags: int = 0) -> None:
        self.map.update(_key(t), CtValue(last_used=last_used_ns, tcp_flags=tcp_flags))

    def get(self, t: CtTuple) -> tuple[int, int] | None:
        """(last used in CLOCK_MONOTONIC ns, TCP flags), None if not tracked."""
        for m in self._maps:
            v = m.lookup(_key(t))
            if v is not None:
                return int(v.last_used), int(v.tcp_flags)
        return None

    def delete(self, t: CtTuple) -> bool:
        gone = [m.delete(_key(t)) for m in self._maps]  # both: a reply may be moving it
        return any(gone)

    def delete_many(self, ts: Sequence[CtTuple]) -> int:
        """`delete` of each, packed with `struct` and deleted in batch calls (a sweep
        after a burst of connections expires tens of thousands); how many were there.
        Each is looked for first where the last read found it (an absent key costs a
        batch call its own), then in the other table."""
        if self.new is None:
            return sum(self.map.delete_many_bytes([_pack(t) for t in ts]))
        in_new = self._in_new
        first: dict[int, list[CtTuple]] = {0: [], 1: []}
        for t in ts:
            first[1 if t in in_new else 0].append(t)
        gone = 0
        for i, (m, other) in enumerate(((self.map, self.new), (self.new, self.map))):
            keys = [_pack(t) for t in first[i]]
            if not keys:
                continue
            done = m.delete_many_bytes(keys)
            gone += sum(done)
            left = [k for k, d in zip(keys, done, strict=True) if not d]
            if left:
                gone += sum(other.delete_many_bytes(left))
        return gone

    def items(self) -> dict[CtTuple, tuple[int, int]]:
        """Every entry. Decoded with `struct` from the packed chunks: the tables hold
        hundreds of thousands of connections and the agent reads them on every sweep
        (0.2 s through ctypes fields for 65,536, a stall of the miss path each time)."""
        out: dict[CtTuple, tuple[int, int]] = {}
        for part in self.items_parts():
            out.update(part)
        return out

    def items_parts(self) -> Iterator[dict[CtTuple, tuple[int, int]]]:
        """`items` a map batch at a time (`BpfMap.parts_bytes`): the agent's sweep
        reads a part between two misses."""
        in_new: set[CtTuple] = set()
        for m in self._maps:
            for keys, values in m.parts_bytes():
                part = {
                    (zone, proto, src, dst, sport, dport): (last, flags)
                    for (zone, src, dst, sport, dport, proto), (last, flags) in zip(
                        _KEY.iter_unpack(keys), _VALUE.iter_unpack(values), strict=True
                    )
                }
                if m is self.new:
                    in_new.update(part)
                if part:
                    yield part
        self._in_new = in_new

    def merge_from(self, other: ConntrackMap) -> int:
        """Copy `other`'s connections here, used longest ago first (a smaller table
        keeps the recent ones); one held by both keeps the later use, both sides'
        flags, and is unanswered only if unanswered in both. How many were copied.
        The agent resizes the table of answered connections this way (`EbpfFastPath`)."""
        entries = sorted(other.items().items(), key=lambda item: item[1][0])
        for t, (last, flags) in entries:
            mine = self.get(t)
            if mine is not None:
                unreplied = flags & mine[1] & CT_F_UNREPLIED
                flags = (flags | mine[1]) & ~CT_F_UNREPLIED | unreplied
                last = max(last, mine[0])
            self.commit(t, last, flags)
        return len(entries)

    def clear(self) -> int:
        n = 0
        for m in self._maps:
            for k in m.collect_keys():
                try:
                    n += m.delete(k)
                except bpf.BpfError:
                    pass
        return n


def _pack(t: CtTuple) -> bytes:
    zone, proto, src, dst, sport, dport = t
    return _KEY.pack(zone, src, dst, sport, dport, proto)
