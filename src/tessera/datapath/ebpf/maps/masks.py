"""The ``masks`` map: the megaflow masks the program scans, in slots with refcounts."""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Sequence

from tessera.datapath.ebpf.layout import FLOW_MAX_MASKS, FlowKey, MaskList
from tessera.datapath.ebpf.maps.bpfmap import BpfMap, u32_key

__all__ = ["MASK_GRACE", "MaskTable", "MaskTableFull"]

# How long a mask slot stays allocated after its last flow is deleted (see MaskTable).
MASK_GRACE = 2.0


class MaskTableFull(RuntimeError):
    """All FLOW_MAX_MASKS slots are in use by other masks."""


class MaskTable:
    """The ``masks`` map: up to 16 megaflow masks scanned in slot order.

    A slot is allocated when the first flow with its mask is installed and
    released ``grace`` seconds after the last one is deleted (refcounts), or
    at once when a new mask needs the slot.  The grace matters on the miss
    path: an invalidation often deletes every flow of a mask and the next
    miss brings the same mask back, which would cost two writes of the table
    (and a slower first packet) without it; an idle slot meanwhile costs the
    program one failed lookup per packet that reaches it.  New masks take the
    lowest free slot; ``count`` stays one past the highest used slot so the
    program scans no dead tail.  The whole table is one map value, so one
    lookup per packet fetches every mask.
    """

    def __init__(
        self,
        m: BpfMap[ctypes.c_uint32, MaskList],
        grace: float = MASK_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.map = m
        self.grace = grace
        self.clock = clock
        self._list = m.lookup(u32_key(0)) or MaskList()
        self._refs = [0] * FLOW_MAX_MASKS
        self._idle: dict[int, float] = {}  # slot -> when its last flow went
        self._index: dict[bytes, int] = {}
        for i in range(FLOW_MAX_MASKS):
            if self._list.active & (1 << i):
                self._index.setdefault(bytes(self._list.masks[i]), i)

    def index_of(self, mask: FlowKey | bytes) -> int | None:
        return self._index.get(bytes(mask))

    def mask_at(self, index: int) -> FlowKey | None:
        if 0 <= index < FLOW_MAX_MASKS and self._list.active & (1 << index):
            return FlowKey.from_buffer_copy(bytes(self._list.masks[index]))
        return None

    def refcount(self, index: int) -> int:
        return self._refs[index]

    def active(self) -> dict[int, FlowKey]:
        return {
            i: FlowKey.from_buffer_copy(bytes(self._list.masks[i]))
            for i in range(FLOW_MAX_MASKS)
            if self._list.active & (1 << i)
        }

    def acquire(self, mask: FlowKey | bytes) -> int:
        """The slot of ``mask`` (a FlowKey or its bytes), allocating it (written to the
        kernel) if new.

        Does not take a reference: call :meth:`ref` once the flow exists.
        """
        raw = mask if isinstance(mask, bytes) else bytes(mask)
        idx = self._index.get(raw)
        if idx is not None:
            return idx
        idx = self._free_slot()
        if idx is None and self._idle:
            self.free(min(self._idle, key=self._idle.__getitem__))  # the longest idle
            idx = self._free_slot()
        if idx is None:
            raise MaskTableFull(f"all {FLOW_MAX_MASKS} mask slots in use")
        self._list.masks[idx] = FlowKey.from_buffer_copy(raw)
        self._list.active |= 1 << idx
        self._list.count = max(int(self._list.count), idx + 1)
        self._write()
        self._index[raw] = idx
        self._refs[idx] = 0
        return idx

    def _free_slot(self) -> int | None:
        for i in range(FLOW_MAX_MASKS):
            if not self._list.active & (1 << i):
                return i
        return None

    def ref(self, index: int) -> None:
        self._refs[index] += 1
        self._idle.pop(index, None)

    def unref(self, index: int) -> None:
        """Drop a reference; the slot goes idle with its last flow (see `reap`)."""
        if self._refs[index] > 0:
            self._refs[index] -= 1
        if self._refs[index] == 0:
            if self.grace <= 0:
                self.free(index)
            else:
                self._idle.setdefault(index, self.clock())

    def reap(self) -> list[int]:
        """Free the slots idle for `grace` seconds or more; returns them."""
        if not self._idle:
            return []
        limit = self.clock() - self.grace
        done = [i for i, since in self._idle.items() if since <= limit]
        for i in done:
            self.free(i)
        return done

    def idle(self) -> set[int]:
        """Active slots no flow uses, waiting for their grace to pass."""
        return set(self._idle)

    def free(self, index: int) -> None:
        if not self._list.active & (1 << index):
            return
        raw = bytes(self._list.masks[index])
        if self._index.get(raw) == index:
            del self._index[raw]
        self._list.active &= ~(1 << index)
        self._list.masks[index] = FlowKey()
        count = 0
        for i in range(FLOW_MAX_MASKS):
            if self._list.active & (1 << i):
                count = i + 1
        self._list.count = count
        self._refs[index] = 0
        self._idle.pop(index, None)
        self._write()

    def set_refcounts(self, refs: Sequence[int]) -> None:
        """After a restart: refcounts recounted from the flows map."""
        self._refs = [int(r) for r in refs]
        now = self.clock()
        self._idle = {
            i: self._idle.get(i, now)
            for i in range(FLOW_MAX_MASKS)
            if self._list.active & (1 << i) and self._refs[i] == 0
        }

    def gc(self) -> list[int]:
        """Free active slots that no flow uses; returns the freed slots."""
        freed = [
            i for i in range(FLOW_MAX_MASKS) if self._list.active & (1 << i) and self._refs[i] == 0
        ]
        for i in freed:
            self.free(i)
        return freed

    def clear(self) -> None:
        self._list = MaskList()
        self._refs = [0] * FLOW_MAX_MASKS
        self._idle.clear()
        self._index.clear()
        self._write()

    def _write(self) -> None:
        self.map.update(u32_key(0), self._list)
