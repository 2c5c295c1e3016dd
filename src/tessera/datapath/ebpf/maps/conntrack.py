"""``port_zones`` and ``conntrack``: the kernel's connection table and who looks it up.

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
    """``conntrack``: (zone, proto, src, dst, sport, dport) -> (last used, TCP flags)."""

    def __init__(self, m: BpfMap[CtKey, CtValue]) -> None:
        self.map = m

    def commit(self, t: CtTuple, last_used_ns: int, tcp_flags: int = 0) -> None:
        self.map.update(_key(t), CtValue(last_used=last_used_ns, tcp_flags=tcp_flags))

    def get(self, t: CtTuple) -> tuple[int, int] | None:
        """(last used in CLOCK_MONOTONIC ns, TCP flags), None if not tracked."""
        v = self.map.lookup(_key(t))
        return None if v is None else (int(v.last_used), int(v.tcp_flags))

    def delete(self, t: CtTuple) -> bool:
        return self.map.delete(_key(t))

    def delete_many(self, ts: Sequence[CtTuple]) -> int:
        """`delete` of each, packed with `struct` and deleted in batch calls (a sweep
        after a burst of connections expires tens of thousands); how many were there."""
        keys = [_KEY.pack(z, src, dst, sp, dp, proto) for z, proto, src, dst, sp, dp in ts]
        return sum(self.map.delete_many_bytes(keys))

    def items(self) -> dict[CtTuple, tuple[int, int]]:
        """Every entry. Decoded with `struct` from the packed chunks: the table holds up
        to 65,536 connections and the agent reads it on every sweep (0.2 s through
        ctypes fields at that size, a stall of the miss path each time)."""
        out: dict[CtTuple, tuple[int, int]] = {}
        for part in self.items_parts():
            out.update(part)
        return out

    def items_parts(self) -> Iterator[dict[CtTuple, tuple[int, int]]]:
        """`items` a map batch at a time (`BpfMap.parts_bytes`): the agent's sweep
        reads a part between two misses."""
        for keys, values in self.map.parts_bytes():
            yield {
                (zone, proto, src, dst, sport, dport): (last, flags)
                for (zone, src, dst, sport, dport, proto), (last, flags) in zip(
                    _KEY.iter_unpack(keys), _VALUE.iter_unpack(values), strict=True
                )
            }

    def clear(self) -> int:
        n = 0
        for k in self.map.collect_keys():
            try:
                n += self.map.delete(k)
            except bpf.BpfError:
                pass
        return n
