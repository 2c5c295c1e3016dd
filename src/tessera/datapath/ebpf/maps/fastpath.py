"""Every map of one fast path instance, opened together from its pin directory."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from tessera.datapath.ebpf import bpf
from tessera.datapath.ebpf.layout import (
    CtKey,
    CtValue,
    DpConfig,
    FloodSet,
    FlowLookupKey,
    FlowValue,
    MaskList,
    PortInfo,
    VniPort,
)
from tessera.datapath.ebpf.maps.bpfmap import MAP_SPECS, BpfMap, spec_mismatch
from tessera.datapath.ebpf.maps.conntrack import ConntrackMap, PortZoneMap
from tessera.datapath.ebpf.maps.floodsets import FloodSetTable
from tessera.datapath.ebpf.maps.flows import FlowMap
from tessera.datapath.ebpf.maps.masks import MaskTable
from tessera.datapath.ebpf.maps.small import ConfigMap, PortMap, StatsMap, VniPortMap

__all__ = ["FastPathMaps"]


class FastPathMaps:
    """Every map of one fast path instance, opened from its pin directory."""

    def __init__(self, fds: dict[str, int]) -> None:
        self._fds = dict(fds)
        self.flows = FlowMap(
            BpfMap(fds["flows"], "flows", FlowLookupKey, FlowValue),
            MaskTable(BpfMap(fds["masks"], "masks", ctypes.c_uint32, MaskList)),
            FloodSetTable(BpfMap(fds["flood_sets"], "flood_sets", ctypes.c_uint32, FloodSet)),
        )
        self.ports = PortMap(BpfMap(fds["ports"], "ports", ctypes.c_uint32, PortInfo))
        self.vni_ports = VniPortMap(BpfMap(fds["vni_ports"], "vni_ports", ctypes.c_uint32, VniPort))
        self.config = ConfigMap(BpfMap(fds["config"], "config", ctypes.c_uint32, DpConfig))
        self.stats = StatsMap(fds["stats"])
        self.port_zones = PortZoneMap(
            BpfMap(fds["port_zones"], "port_zones", ctypes.c_uint32, ctypes.c_uint32)
        )
        self.conntrack = ConntrackMap(
            BpfMap(fds["conntrack"], "conntrack", CtKey, CtValue),
            BpfMap(fds["conntrack_new"], "conntrack_new", CtKey, CtValue),
        )

    @classmethod
    def open(cls, map_dir: str | os.PathLike[str]) -> FastPathMaps:
        """Open the pinned maps, checking each against :data:`MAP_SPECS`."""
        fds: dict[str, int] = {}
        try:
            for name, spec in MAP_SPECS.items():
                fd = bpf.obj_get(Path(map_dir) / name)
                fds[name] = fd
                why = spec_mismatch(spec, bpf.map_info(fd))
                if why:
                    raise ValueError(why)
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        return cls(fds)

    @classmethod
    def create(cls) -> FastPathMaps:
        """Fresh unpinned maps with the real specs (tests, tools)."""
        fds: dict[str, int] = {}
        try:
            for name, s in MAP_SPECS.items():
                fds[name] = bpf.map_create(
                    s.type, s.key_size, s.value_size, s.max_entries, s.flags, name
                )
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        return cls(fds)

    def fd(self, name: str) -> int:
        return self._fds[name]

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

    def __enter__(self) -> FastPathMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
