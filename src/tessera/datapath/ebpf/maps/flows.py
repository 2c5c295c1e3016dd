"""The ``flows`` map: megaflows install/delete/walk, over its masks and flood sets."""

from __future__ import annotations

import ctypes
import errno
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from tessera.datapath.base import Action
from tessera.datapath.ebpf import bpf
from tessera.datapath.ebpf.actions import (
    SLOT_SIZE,
    Device,
    decode,
    encode,
    flood_slot,
    outputs_to,
)
from tessera.datapath.ebpf.layout import (
    FLOW_ACTION_PACK,
    FLOW_KEY_PACK,
    FLOW_MAX_ACTIONS,
    FLOW_MAX_MASKS,
    FLOW_VALUE_HEAD_PACK,
    LOOKUP_INDEX_PACK,
    ActionType,
    FlowKey,
    FlowLookupKey,
    FlowValue,
)
from tessera.datapath.ebpf.maps.bpfmap import BpfMap
from tessera.datapath.ebpf.maps.floodsets import FloodSetTable
from tessera.datapath.ebpf.maps.masks import MaskTable

__all__ = ["FlowEntry", "FlowMap", "RawFlow"]

_VALUE_HEAD = FLOW_VALUE_HEAD_PACK.pack
_HEAD_SIZE: Final = FLOW_VALUE_HEAD_PACK.size
_KEY_SIZE: Final = FLOW_KEY_PACK.size
_EMPTY_SLOTS: Final = bytes(SLOT_SIZE * FLOW_MAX_ACTIONS)
_INDEX_SIZE: Final = LOOKUP_INDEX_PACK.size
_LOOKUP_SIZE: Final = ctypes.sizeof(FlowLookupKey)
_VALUE_SIZE: Final = ctypes.sizeof(FlowValue)
_INDEX_UNPACK = LOOKUP_INDEX_PACK.unpack_from
_HEAD_UNPACK = FLOW_VALUE_HEAD_PACK.unpack_from
_ACTION_UNPACK = FLOW_ACTION_PACK.unpack_from


class RawFlow(NamedTuple):
    """A flow as `FlowMap.raw` reads it: `lookup` is its ``struct flow_lookup_key``
    (mask index, then the masked key), `slots` as in `FlowEntry`."""

    lookup: bytes
    mask_index: int
    slots: bytes
    packets: int
    bytes: int
    last_used_ns: int
    tcp_flags: int
    flood_set: int | None


@dataclass(frozen=True, slots=True)
class FlowEntry:
    """A flow as the kernel holds it, with its counters."""

    mask_index: int
    mask: FlowKey | None  # None: an orphan whose slot is not active
    key: FlowKey  # already masked
    #: ``struct flow_action`` slots in execution order, a flood set's outputs in place
    #: of the FLOOD slot naming it (left as is when the set is gone).
    slots: bytes
    packets: int
    bytes: int
    last_used_ns: int  # CLOCK_MONOTONIC (time.monotonic_ns()), 0 = never
    tcp_flags: int = 0  # OR of the TCP flags of the packets that hit it
    flood_set: int | None = None  # the flood set its trailing outputs live in

    def actions(self, ports: Mapping[int, int]) -> tuple[Action, ...] | None:
        """The flow's actions, `ports` naming the local port of each ifindex (see
        `tessera.datapath.ebpf.actions.decode`)."""
        return decode(self.slots, ports)


def _flood_id(value: FlowValue) -> int | None:
    """The set a flow value floods to.  FlowMap writes FLOOD only as the last
    action, so one slot tells (cheap enough for a walk of every flow)."""
    n = int(value.n_actions)
    if not 0 < n <= FLOW_MAX_ACTIONS:
        return None
    last = value.actions[n - 1]
    return int(last.ifindex) if last.type == ActionType.FLOOD else None


class FlowMap:
    """``flows`` plus its :class:`MaskTable` and :class:`FloodSetTable`.

    A flow's slots go inline when they fit FLOW_MAX_ACTIONS; otherwise (`encode`
    decides) its trailing outputs go into a flood set and the flow holds the slots
    before them plus one FLOOD. Readers never see the difference: entries come back
    with the set's outputs in place of the FLOOD.

    Every public method that changes the maps takes the internal lock, so the agent's
    threads may share one instance.
    """

    def __init__(
        self,
        flows: BpfMap[FlowLookupKey, FlowValue],
        masks: MaskTable,
        floods: FloodSetTable,
    ) -> None:
        self.map = flows
        self.masks = masks
        self.floods = floods
        self._lock = threading.Lock()
        self._flood_of: dict[bytes, int] = {}  # lookup key -> flood set it names
        self._resync()

    def _resync(self) -> None:
        """Recount what names each mask slot and flood set, from the kernel.

        A flow in a slot that is not active (left by a crash between the two writes of
        an update) is deleted: no packet reaches it, and a mask that later takes the
        slot would make it reachable under a mask it was never written for.
        """
        refs = [0] * FLOW_MAX_MASKS
        flood_refs: dict[int, int] = {}
        self._flood_of = {}
        for k, v in self.map.items():
            if self.masks.mask_at(k.mask_index) is None:
                self.map.delete(k)
                continue
            refs[k.mask_index] += 1
            set_id = _flood_id(v)
            if set_id is not None:
                flood_refs[set_id] = flood_refs.get(set_id, 0) + 1
                self._flood_of[bytes(k)] = set_id
        self.masks.set_refcounts(refs)
        self.floods.set_refcounts(flood_refs)

    @staticmethod
    def _lookup_key(index: int, key: FlowKey, mask: FlowKey) -> FlowLookupKey:
        return FlowLookupKey(mask_index=index, key=key.masked(mask))

    def install(
        self,
        key: FlowKey,
        mask: FlowKey,
        actions: Sequence[Action],
        devices: Mapping[int, Device],
    ) -> None:
        """Add or replace the megaflow (key & mask) with ``actions``, local ports
        leading to the devices `devices` gives.

        A replaced flow keeps its counters.  Raises :class:`MaskTableFull`
        when the mask is new and every slot is taken, `FlowTooLarge`
        when the actions cannot be encoded, :class:`FloodSetsFull` when they
        need a new flood set and none is free.
        """
        inline, flood = encode(actions, devices)
        self.install_packed(bytes(key.masked(mask)), bytes(mask), inline, flood)

    def install_packed(
        self, key: bytes, mask: bytes, inline: bytes, flood: bytes | None = None
    ) -> None:
        """`install` for the miss path, everything already laid out: ``key`` and
        ``mask`` are ``struct flow_key`` bytes (`FLOW_KEY_PACK`), the key zero outside
        the mask (a key that is not would sit where no packet and no delete finds it:
        refused); ``inline`` and ``flood`` are what `encode` returns."""
        if len(key) != _KEY_SIZE or len(mask) != _KEY_SIZE:
            raise ValueError(f"key/mask of {len(key)}/{len(mask)} bytes, not {_KEY_SIZE}")
        if int.from_bytes(key, "little") & ~int.from_bytes(mask, "little"):
            raise ValueError("the key has bits set outside its mask")
        n = len(inline) // SLOT_SIZE + (flood is not None)
        if len(inline) % SLOT_SIZE or n > FLOW_MAX_ACTIONS:
            raise ValueError(f"{len(inline)} bytes of actions do not fit a flow's slots")
        with self._lock:
            self.masks.reap()
            set_id = None
            if flood is not None:
                set_id = self.floods.acquire(flood)
                inline += flood_slot(set_id)
            try:
                raw, old_set = self._write(key, mask, n, inline)
            except BaseException:
                if set_id is not None:
                    self.floods.release_if_unused(set_id)
                raise
            if set_id is not None:
                self.floods.ref(set_id)
                self._flood_of[raw] = set_id
            else:
                self._flood_of.pop(raw, None)
            if old_set is not None:
                self.floods.unref(old_set)  # after the ref: a set kept by the new value stays

    def _write(self, key: bytes, mask: bytes, n: int, slots: bytes) -> tuple[bytes, int | None]:
        """Write the flow: (its lookup key, the flood set of the value it replaced)."""
        packed = slots + _EMPTY_SLOTS[len(slots) :]
        idx = self.masks.acquire(mask)
        lk = LOOKUP_INDEX_PACK.pack(idx) + key
        try:
            self.map.update_bytes(lk, _VALUE_HEAD(0, 0, 0, n, 0) + packed, bpf.BPF_NOEXIST)
        except OSError as e:
            if e.errno != errno.EEXIST:
                if self.masks.refcount(idx) == 0:
                    self.masks.free(idx)
                raise
            old = self.map.lookup(FlowLookupKey.from_buffer_copy(lk))
            # A replace keeps the counters and the TCP flags seen (`Datapath.install`).
            kept = (0, 0, 0, n, 0)
            if old is not None:
                kept = (old.packets, old.bytes, old.last_used, n, old.tcp_flags)
            self.map.update_bytes(lk, _VALUE_HEAD(*kept) + packed, bpf.BPF_ANY)
            return lk, _flood_id(old) if old is not None else self._flood_of.get(lk)
        self.masks.ref(idx)
        return lk, None

    def delete(self, key: FlowKey, mask: FlowKey) -> bool:
        with self._lock:
            idx = self.masks.index_of(mask)
            if idx is None:
                return False
            lk = self._lookup_key(idx, key, mask)
            if not self.map.delete(lk):
                return False
            self._released(bytes(lk), idx)
            self.masks.reap()
            return True

    def _released(self, lookup: bytes, mask_index: int) -> None:
        """A flow left the map: drop its references to its mask slot and flood set
        (the caller reaps idle mask slots, once per batch)."""
        self.masks.unref(mask_index)
        set_id = self._flood_of.pop(lookup, None)
        if set_id is not None:
            self.floods.unref(set_id)

    def delete_many_packed(self, flows: Sequence[tuple[bytes, bytes]]) -> int:
        """`delete` of many (key, mask) pairs, as ``struct flow_key`` bytes (the key
        zero outside its mask: `packed_key`), in batch calls; how many were there."""
        with self._lock:
            lookups: list[bytes] = []
            for key, mask in flows:
                idx = self.masks.index_of(mask)
                if idx is not None:
                    lookups.append(LOOKUP_INDEX_PACK.pack(idx) + key)
            deleted = 0
            for lk, gone in zip(lookups, self.map.delete_many_bytes(lookups), strict=True):
                if not gone:
                    continue
                deleted += 1
                self._released(lk, _INDEX_UNPACK(lk)[0])
            self.masks.reap()
            return deleted

    def delete_outputs_to(self, ifindex: int) -> int:
        """Delete every flow that outputs to device `ifindex`, inline or through its
        flood set, in one walk of the map (a port is going); how many."""
        with self._lock:
            deleted = 0
            for lk, v in self.map.items():
                n = min(int(v.n_actions), FLOW_MAX_ACTIONS)
                slots = bytes(v)[_HEAD_SIZE : _HEAD_SIZE + n * SLOT_SIZE]
                set_id = _flood_id(v)
                if set_id is not None:
                    slots += self.floods.outputs(set_id) or b""
                if not outputs_to(slots, ifindex) or not self.map.delete(lk):
                    continue
                deleted += 1
                self._released(bytes(lk), int(lk.mask_index))
            self.masks.reap()
            return deleted

    def get(self, key: FlowKey, mask: FlowKey) -> FlowEntry | None:
        idx = self.masks.index_of(mask)
        if idx is None:
            return None
        lk = self._lookup_key(idx, key, mask)
        v = self.map.lookup(lk)
        return None if v is None else self._entry(lk, v)

    def _entry(self, lk: FlowLookupKey, v: FlowValue) -> FlowEntry:
        raw = self._raw(bytes(lk), bytes(v), 0)
        return self._entry_of(raw, self.masks.mask_at(raw.mask_index))

    @staticmethod
    def _entry_of(raw: RawFlow, mask: FlowKey | None) -> FlowEntry:
        return FlowEntry(
            mask_index=raw.mask_index,
            mask=mask,
            key=FlowKey.from_buffer_copy(raw.lookup, _INDEX_SIZE),
            slots=raw.slots,
            packets=raw.packets,
            bytes=raw.bytes,
            last_used_ns=raw.last_used_ns,
            tcp_flags=raw.tcp_flags,
            flood_set=raw.flood_set,
        )

    def entries(self) -> list[FlowEntry]:
        """Every flow; also releases idle mask slots whose grace has passed (the agent
        dumps the flows every few seconds, so no idle slot lingers much longer)."""
        masks: dict[int, FlowKey | None] = {}
        out: list[FlowEntry] = []
        for raw in self.raw():
            if raw.mask_index not in masks:
                masks[raw.mask_index] = self.masks.mask_at(raw.mask_index)
            out.append(self._entry_of(raw, masks[raw.mask_index]))
        return out

    def raw(self) -> list[RawFlow]:
        """Every flow as packed bytes cut with `struct`, not a ctypes object per field:
        the agent's sweep reads every flow on the thread that answers misses (at
        thousands of flows the ctypes walk held misses back for a third of a second).
        Releases idle mask slots, as `entries` does."""
        return [flow for part in self.raw_parts() for flow in part]

    def raw_parts(self) -> Iterator[list[RawFlow]]:
        """`raw` a part at a time (`BpfMap.parts_bytes`): the sweep reads a part
        between two misses."""
        with self._lock:
            self.masks.reap()
        ks, vs = _LOOKUP_SIZE, _VALUE_SIZE
        for keys, values in self.map.parts_bytes():
            yield [
                self._raw(keys[i * ks : (i + 1) * ks], values, i * vs)
                for i in range(len(keys) // ks)
            ]

    def _raw(self, lookup: bytes, values: bytes, at: int) -> RawFlow:
        """The flow of ``struct flow_lookup_key`` `lookup` whose ``struct flow_value``
        starts at `at` in `values`; a flood set's outputs in place of its FLOOD slot."""
        (mask_index,) = _INDEX_UNPACK(lookup)
        packets, nbytes, last_used, n_actions, tcp_flags = _HEAD_UNPACK(values, at)
        n = min(n_actions, FLOW_MAX_ACTIONS)
        start = at + _HEAD_SIZE
        slots = values[start : start + n * SLOT_SIZE]
        set_id = None
        if 0 < n_actions <= FLOW_MAX_ACTIONS:  # FLOOD is only ever the last slot
            last = _ACTION_UNPACK(slots, (n - 1) * SLOT_SIZE)
            if last[0] == ActionType.FLOOD:
                set_id = last[3]  # its ifindex field names the set
                outputs = self.floods.outputs(set_id)
                if outputs is not None:  # else: left as the FLOOD slot, visibly unresolved
                    slots = slots[:-SLOT_SIZE] + outputs
        return RawFlow(lookup, mask_index, slots, packets, nbytes, last_used, tcp_flags, set_id)

    def __iter__(self) -> Iterator[FlowEntry]:
        return iter(self.entries())

    def __len__(self) -> int:
        return len(self.map.collect_keys())

    def clear(self) -> int:
        """Delete every flow and free every mask and flood set; returns flows deleted."""
        with self._lock:
            keys = self.map.collect_keys()
            n = sum(1 for k in keys if self.map.delete(k))
            self.masks.clear()
            self.floods.clear()
            self._flood_of.clear()
            return n
