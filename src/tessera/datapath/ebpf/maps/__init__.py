"""Typed access to the fast path's maps: one module per map (Cilium style).

* :mod:`.bpfmap` -- `BpfMap` (one map fd, typed keys and values) and `MAP_SPECS`;
* :mod:`.flows` -- `FlowMap`, the megaflows, over
* :mod:`.masks` -- `MaskTable`, the mask slots the program scans, and
* :mod:`.floodsets` -- `FloodSetTable`, outputs too many for a flow;
* :mod:`.small` -- ``config``, ``ports``, ``vni_ports``, ``stats``;
* :mod:`.fastpath` -- `FastPathMaps`, all of them opened from a pin directory.

Every operation is one ``bpf(2)`` call through :mod:`..bpf`; nothing here forks. The
kernel map is the truth: the only Python-side state is the refcounts of mask slots and
flood sets, and `FlowMap` rebuilds them from the kernel when it opens a pinned map, so
an agent restart neither loses nor flushes flows.
"""

from tessera.datapath.ebpf.actions import FlowTooLarge
from tessera.datapath.ebpf.maps.bpfmap import (
    MAP_SPECS,
    BpfMap,
    MapSpec,
    map_spec_mismatches,
    spec_mismatch,
)
from tessera.datapath.ebpf.maps.fastpath import FastPathMaps
from tessera.datapath.ebpf.maps.floodsets import FloodSetsFull, FloodSetTable
from tessera.datapath.ebpf.maps.flows import FlowEntry, FlowMap, RawFlow
from tessera.datapath.ebpf.maps.masks import MASK_GRACE, MaskTable, MaskTableFull
from tessera.datapath.ebpf.maps.small import (
    ConfigMap,
    PortMap,
    StatsMap,
    VniPortMap,
    possible_cpus,
)

__all__ = [
    "MAP_SPECS",
    "MASK_GRACE",
    "BpfMap",
    "ConfigMap",
    "FastPathMaps",
    "FloodSetTable",
    "FloodSetsFull",
    "FlowEntry",
    "FlowMap",
    "RawFlow",
    "FlowTooLarge",
    "MapSpec",
    "MaskTable",
    "MaskTableFull",
    "PortMap",
    "StatsMap",
    "VniPortMap",
    "map_spec_mismatches",
    "possible_cpus",
    "spec_mismatch",
]
