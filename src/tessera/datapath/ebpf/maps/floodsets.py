"""The ``flood_sets`` map: output lists too long for a flow, shared by content."""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Mapping
from typing import Final

from tessera.datapath.ebpf.actions import SLOT_SIZE, FlowTooLarge, is_output_slots
from tessera.datapath.ebpf.layout import FLOOD_MAX_OUTPUTS, FLOOD_MAX_SETS, FloodSet
from tessera.datapath.ebpf.maps.bpfmap import BpfMap, u32_key

__all__ = ["FloodSetTable", "FloodSetsFull"]

_HEAD: Final = struct.Struct("=II")  # flood_set before its outputs: n_outputs, flags
_VALUE_SIZE: Final = ctypes.sizeof(FloodSet)
_KEY = struct.Struct("=I").pack


class FloodSetsFull(RuntimeError):
    """All FLOOD_MAX_SETS flood sets are in use."""


class FloodSetTable:
    """The ``flood_sets`` map, a set being the packed output slots it holds.

    Flows with the same outputs (a bridge floods the same ports for many source MACs)
    share one set, refcounted by the flows naming it; the set is deleted with the last
    of them. Sets are keyed by their bytes, which is exact: equal outputs to equal
    devices pack equally. A set is never rewritten while named, so the program never
    sees a half-written flood. Ids are handed out round robin rather than lowest-free:
    a packet that read a flow value just before its set was deleted must not find a
    new, unrelated set under the same id (the map is RCU-freed, but ids are not). The
    refcounts live in Python only and `FlowMap` recounts them from the flows map when
    it opens a pinned one.
    """

    def __init__(self, m: BpfMap[ctypes.c_uint32, FloodSet]) -> None:
        self.map = m
        self._id_of: dict[bytes, int] = {}
        self._outputs: dict[int, bytes] = {}
        self._refs: dict[int, int] = {}
        self._next = 0
        for k, v in m.items():
            set_id = int(k.value)
            n = int(v.n_outputs)
            outputs = bytes(v)[_HEAD.size : _HEAD.size + n * SLOT_SIZE]
            if not 0 < n <= FLOOD_MAX_OUTPUTS or not is_output_slots(outputs):
                m.delete(u32_key(set_id))  # garbage: no flow written by us names it
                continue
            self._outputs[set_id] = outputs
            self._id_of.setdefault(outputs, set_id)
            self._refs[set_id] = 0
            self._next = max(self._next, set_id + 1) % FLOOD_MAX_SETS

    def __len__(self) -> int:
        return len(self._outputs)

    def id_of(self, outputs: bytes) -> int | None:
        return self._id_of.get(outputs)

    def outputs(self, set_id: int) -> bytes | None:
        """The output slots of a set (None: no such set)."""
        return self._outputs.get(set_id)

    def refcount(self, set_id: int) -> int:
        return self._refs.get(set_id, 0)

    def acquire(self, outputs: bytes) -> int:
        """The id of the set holding ``outputs`` (packed output slots), writing a new
        one if needed.

        Takes no reference (call :meth:`ref` once a flow names it, or
        :meth:`release_if_unused` when that failed).
        """
        set_id = self._id_of.get(outputs)
        if set_id is not None:
            return set_id
        n, rest = divmod(len(outputs), SLOT_SIZE)
        if rest or not is_output_slots(outputs):
            raise TypeError("a flood set holds output slots only")
        if n > FLOOD_MAX_OUTPUTS:
            raise FlowTooLarge(f"{n} outputs, a flood set holds at most {FLOOD_MAX_OUTPUTS}")
        if len(self._outputs) >= FLOOD_MAX_SETS:
            raise FloodSetsFull(f"all {FLOOD_MAX_SETS} flood sets in use")
        set_id = self._next
        while set_id in self._outputs:
            set_id = (set_id + 1) % FLOOD_MAX_SETS
        value = _HEAD.pack(n, 0) + outputs
        self.map.update_bytes(_KEY(set_id), value + bytes(_VALUE_SIZE - len(value)))
        self._next = (set_id + 1) % FLOOD_MAX_SETS
        self._outputs[set_id] = outputs
        self._id_of[outputs] = set_id
        self._refs[set_id] = 0
        return set_id

    def ref(self, set_id: int) -> None:
        self._refs[set_id] = self._refs.get(set_id, 0) + 1

    def unref(self, set_id: int) -> None:
        """Drop a reference; the set goes with its last flow."""
        if set_id not in self._outputs:
            return
        self._refs[set_id] = max(0, self._refs.get(set_id, 0) - 1)
        self.release_if_unused(set_id)

    def release_if_unused(self, set_id: int) -> None:
        if set_id in self._outputs and self._refs.get(set_id, 0) == 0:
            self._free(set_id)

    def _free(self, set_id: int) -> None:
        outputs = self._outputs.pop(set_id)
        if self._id_of.get(outputs) == set_id:
            del self._id_of[outputs]
        self._refs.pop(set_id, None)
        self.map.delete(u32_key(set_id))

    def set_refcounts(self, refs: Mapping[int, int]) -> None:
        """Refcounts recounted from the flows map; deletes the sets no flow names."""
        self._refs = {set_id: int(refs.get(set_id, 0)) for set_id in self._outputs}
        for set_id in [i for i, n in self._refs.items() if n == 0]:
            self._free(set_id)

    def clear(self) -> None:
        for set_id in list(self._outputs):
            self._free(set_id)
