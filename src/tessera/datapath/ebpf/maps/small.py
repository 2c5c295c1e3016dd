"""The small maps: ``config``, ``ports``, ``vni_ports`` and the per-CPU ``stats``."""

from __future__ import annotations

import ctypes
from pathlib import Path

from tessera.datapath.base import MAX_PORT_NO, VNI_COMMIT
from tessera.datapath.ebpf.layout import ACT_F_PEER, DpConfig, PortInfo, Stat, VniPort
from tessera.datapath.ebpf.maps.bpfmap import BpfMap, u32_key

__all__ = ["ConfigMap", "PortMap", "StatsMap", "VniPortMap", "possible_cpus"]


class ConfigMap:
    """``config``: where misses go and the default VXLAN device."""

    def __init__(self, m: BpfMap[ctypes.c_uint32, DpConfig]) -> None:
        self.map = m

    def get(self) -> DpConfig:
        return self.map.lookup(u32_key(0)) or DpConfig()

    def set(self, *, miss_ifindex: int | None = None, vxlan_ifindex: int | None = None) -> DpConfig:
        """Change the given fields, keep the others (single-writer RMW)."""
        cfg = self.get()
        if miss_ifindex is not None:
            cfg.miss_ifindex = miss_ifindex
        if vxlan_ifindex is not None:
            cfg.vxlan_ifindex = vxlan_ifindex
        self.map.update(u32_key(0), cfg)
        return cfg


class PortMap:
    """``ports``: ifindex of a bound port -> its host-local port number."""

    def __init__(self, m: BpfMap[ctypes.c_uint32, PortInfo]) -> None:
        self.map = m

    def set(self, ifindex: int, port_no: int) -> None:
        if not 1 <= port_no <= MAX_PORT_NO:
            raise ValueError(f"port number {port_no} out of 1..{MAX_PORT_NO} (12-bit miss tag)")
        self.map.update(u32_key(ifindex), PortInfo(port_no=port_no))

    def get(self, ifindex: int) -> int | None:
        v = self.map.lookup(u32_key(ifindex))
        return None if v is None else int(v.port_no)

    def delete(self, ifindex: int) -> bool:
        return self.map.delete(u32_key(ifindex))

    def items(self) -> dict[int, int]:
        return {int(k.value): int(v.port_no) for k, v in self.map.items()}


class VniPortMap:
    """``vni_ports``: VNI (the port's global tunnel key) -> local device."""

    def __init__(self, m: BpfMap[ctypes.c_uint32, VniPort]) -> None:
        self.map = m

    def set(self, vni: int, ifindex: int, *, peer: bool = False) -> None:
        if not 0 < vni < VNI_COMMIT:
            raise ValueError(f"VNI {vni} out of 1..2^23-1 (the top bit asks for a commit)")
        self.map.update(u32_key(vni), VniPort(ifindex=ifindex, flags=ACT_F_PEER if peer else 0))

    def get(self, vni: int) -> tuple[int, bool] | None:
        v = self.map.lookup(u32_key(vni))
        return None if v is None else (int(v.ifindex), bool(v.flags & ACT_F_PEER))

    def delete(self, vni: int) -> bool:
        return self.map.delete(u32_key(vni))

    def items(self) -> dict[int, tuple[int, bool]]:
        return {
            int(k.value): (int(v.ifindex), bool(v.flags & ACT_F_PEER)) for k, v in self.map.items()
        }


def possible_cpus() -> int:
    """Number of possible CPUs: the stride of per-CPU map values."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n = max(n, int(hi or lo) + 1)
    return n


class StatsMap:
    """``stats``: per-CPU datapath counters, summed over CPUs."""

    def __init__(self, fd: int, name: str = "stats") -> None:
        self.ncpu = possible_cpus()
        self._type = ctypes.c_uint64 * self.ncpu
        self.map: BpfMap[ctypes.c_uint32, ctypes.Array[ctypes.c_uint64]] = BpfMap(
            fd, name, ctypes.c_uint32, self._type
        )

    def read(self) -> dict[Stat, int]:
        out: dict[Stat, int] = {}
        for stat in Stat:
            v = self.map.lookup(u32_key(stat))
            out[stat] = sum(v) if v is not None else 0
        return out

    def reset(self) -> None:
        zero = self._type()
        for stat in Stat:
            self.map.update(u32_key(stat), zero)
