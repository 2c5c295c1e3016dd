"""Typed access to the fast path's maps (one class per map, Cilium style).

Every operation is one ``bpf(2)`` call through :mod:`.bpf`; nothing here
forks.  The kernel map is the truth: the only Python-side state is the mask
slot refcounts, and :class:`FlowMap` rebuilds them from the kernel when it
opens a pinned map, so an agent restart neither loses nor flushes flows.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from tessera.datapath.ebpf import bpf
from tessera.datapath.ebpf.actions import (
    Action,
    Flood,
    Output,
    decode_actions,
    decode_flood_set,
    encode_flood_set,
    pack_actions,
    split_flood,
)
from tessera.datapath.ebpf.layout import (
    ACT_F_PEER,
    FLOOD_MAX_OUTPUTS,
    FLOOD_MAX_SETS,
    FLOW_MAX_ACTIONS,
    FLOW_MAX_ENTRIES,
    FLOW_MAX_MASKS,
    FLOW_VALUE_HEAD_PACK,
    LOOKUP_INDEX_PACK,
    MAX_PORT_NO,
    PORT_MAX_ENTRIES,
    STAT_MAX,
    VNI_MAX_ENTRIES,
    ActionType,
    DpConfig,
    FloodSet,
    FlowKey,
    FlowLookupKey,
    FlowValue,
    MaskList,
    PortInfo,
    Stat,
    VniPort,
)

__all__ = [
    "MAP_SPECS",
    "BpfMap",
    "ConfigMap",
    "FastPathMaps",
    "FloodSetTable",
    "FloodSetsFull",
    "Flow",
    "FlowEntry",
    "FlowMap",
    "FlowTooLarge",
    "MapSpec",
    "MaskTable",
    "MaskTableFull",
    "PortMap",
    "ReconcileResult",
    "StatsMap",
    "VniPortMap",
]

K = TypeVar("K", bound=ctypes.Structure | ctypes.c_uint32)
V = TypeVar("V", bound=ctypes.Structure | ctypes.Array[ctypes.c_uint64])


@dataclass(frozen=True, slots=True)
class MapSpec:
    """What tessera_dp.c declares for a map; checked before reusing a pin."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0


MAP_SPECS: dict[str, MapSpec] = {
    s.name: s
    for s in (
        MapSpec(
            "flows",
            bpf.BPF_MAP_TYPE_HASH,
            ctypes.sizeof(FlowLookupKey),
            ctypes.sizeof(FlowValue),
            FLOW_MAX_ENTRIES,
            bpf.BPF_F_NO_PREALLOC,
        ),
        MapSpec("masks", bpf.BPF_MAP_TYPE_ARRAY, 4, ctypes.sizeof(MaskList), 1),
        MapSpec(
            "flood_sets",
            bpf.BPF_MAP_TYPE_HASH,
            4,
            ctypes.sizeof(FloodSet),
            FLOOD_MAX_SETS,
            bpf.BPF_F_NO_PREALLOC,
        ),
        MapSpec("ports", bpf.BPF_MAP_TYPE_HASH, 4, ctypes.sizeof(PortInfo), PORT_MAX_ENTRIES),
        MapSpec("vni_ports", bpf.BPF_MAP_TYPE_HASH, 4, ctypes.sizeof(VniPort), VNI_MAX_ENTRIES),
        MapSpec("config", bpf.BPF_MAP_TYPE_ARRAY, 4, ctypes.sizeof(DpConfig), 1),
        MapSpec("stats", bpf.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, STAT_MAX),
    )
}


def spec_mismatch(spec: MapSpec, info: bpf.MapInfo) -> str | None:
    """Why a pinned map cannot serve as ``spec`` (None when it can)."""
    got = (info.type, info.key_size, info.value_size, info.max_entries, info.flags)
    want = (spec.type, spec.key_size, spec.value_size, spec.max_entries, spec.flags)
    if got == want:
        return None
    return (
        f"map {spec.name}: pinned (type, key, value, max_entries, flags)={got}, "
        f"program expects {want}"
    )


class BpfMap(Generic[K, V]):
    """A map fd with typed keys and values; owns the fd."""

    key_type: type[K]
    value_type: type[V]

    def __init__(self, fd: int, name: str, key_type: type[K], value_type: type[V]) -> None:
        self.fd = fd
        self.name = name
        self.key_type = key_type
        self.value_type = value_type
        self._sizes = (ctypes.sizeof(key_type), ctypes.sizeof(value_type))

    @classmethod
    def open_pinned(
        cls, path: str | os.PathLike[str], key_type: type[K], value_type: type[V]
    ) -> BpfMap[K, V]:
        return cls(bpf.obj_get(path), Path(path).name, key_type, value_type)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def info(self) -> bpf.MapInfo:
        return bpf.map_info(self.fd)

    def lookup(self, key: K) -> V | None:
        value = self.value_type()
        return value if bpf.map_lookup(self.fd, key, value, self.name) else None

    def update(self, key: K, value: V, flags: int = bpf.BPF_ANY) -> None:
        bpf.map_update(self.fd, key, value, flags, self.name)

    def update_bytes(self, key: bytes, value: bytes, flags: int = bpf.BPF_ANY) -> None:
        """`update` from a key and value already laid out (struct-packed)."""
        if (len(key), len(value)) != self._sizes:
            raise ValueError(
                f"map {self.name}: key/value of {len(key)}/{len(value)} bytes, "
                f"the map takes {self._sizes[0]}/{self._sizes[1]}"
            )
        bpf.map_update_bytes(self.fd, key, value, flags, self.name)

    def delete(self, key: K) -> bool:
        return bpf.map_delete(self.fd, key, self.name)

    def items(self) -> list[tuple[K, V]]:
        """Every entry, collected before returning so callers may delete freely.

        One BPF_MAP_LOOKUP_BATCH per chunk; kernels without it fall back to
        GET_NEXT_KEY + LOOKUP per entry.  Concurrent updates may be missed
        or seen twice, as with any walk of a live map.
        """
        try:
            return self._items_batched()
        except bpf.BpfError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, _ENOTSUPP):
                raise
        return [(k, v) for k in self._keys_one_by_one() if (v := self.lookup(k)) is not None]

    def collect_keys(self) -> list[K]:
        """All keys, collected before returning (see :meth:`items`)."""
        return [k for k, _ in self.items()]

    def _items_batched(self) -> list[tuple[K, V]]:
        chunk = 512
        token = ctypes.create_string_buffer(max(ctypes.sizeof(self.key_type), 8))
        in_token: ctypes.Array[ctypes.c_char] | None = None
        out: list[tuple[K, V]] = []
        # Bounded: each round returns at least one entry or ends the walk.
        for _ in range(self.info().max_entries + 8):
            keys = (self.key_type * chunk)()
            values = (self.value_type * chunk)()
            try:
                n, done = bpf.map_lookup_batch(
                    self.fd, in_token, token, keys, values, chunk, self.name
                )
            except bpf.BpfError as e:
                if e.errno == errno.ENOSPC and chunk < 1 << 16:  # a bucket larger than chunk
                    chunk *= 4
                    continue
                raise
            out.extend(zip(self._elements(keys, n), self._elements(values, n), strict=True))
            if done:
                break
            in_token = token
        return out

    @staticmethod
    def _elements(arr: ctypes.Array[Any], n: int) -> list[Any]:
        """The first n elements as ctypes objects (an array of a simple type
        yields Python ints on indexing; the map API wants buffers)."""
        elem = arr._type_
        if issubclass(elem, ctypes.Structure | ctypes.Array):
            return list(arr[:n])  # views that keep their chunk alive
        return [elem(x) for x in arr[:n]]

    def _keys_one_by_one(self) -> list[K]:
        # GET_NEXT_KEY restarts from the first key when the current one was
        # deleted, so the walk is bounded by max_entries (twice, for churn).
        out: list[K] = []
        prev: K | None = None
        for _ in range(2 * self.info().max_entries + 1):
            nxt = self.key_type()
            if not bpf.map_get_next_key(self.fd, prev, nxt, self.name):
                break
            out.append(nxt)
            prev = nxt
        return out

    def __enter__(self) -> BpfMap[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_ACTIONS_OFFSET = FlowValue.n_actions.offset  # what a flow does, without its counters
_VALUE_HEAD = FLOW_VALUE_HEAD_PACK.pack
_KEY_SIZE = ctypes.sizeof(FlowKey)
_ENOTSUPP = 524  # kernel-internal "operation not supported" leaking to users


def _u32(v: int) -> ctypes.c_uint32:
    return ctypes.c_uint32(v)


# --- small maps ---------------------------------------------------------------


class ConfigMap:
    """``config``: where misses go and the default VXLAN device."""

    def __init__(self, m: BpfMap[ctypes.c_uint32, DpConfig]) -> None:
        self.map = m

    def get(self) -> DpConfig:
        return self.map.lookup(_u32(0)) or DpConfig()

    def set(self, *, miss_ifindex: int | None = None, vxlan_ifindex: int | None = None) -> DpConfig:
        """Change the given fields, keep the others (single-writer RMW)."""
        cfg = self.get()
        if miss_ifindex is not None:
            cfg.miss_ifindex = miss_ifindex
        if vxlan_ifindex is not None:
            cfg.vxlan_ifindex = vxlan_ifindex
        self.map.update(_u32(0), cfg)
        return cfg


class PortMap:
    """``ports``: ifindex of a bound port -> its host-local port number."""

    def __init__(self, m: BpfMap[ctypes.c_uint32, PortInfo]) -> None:
        self.map = m

    def set(self, ifindex: int, port_no: int) -> None:
        if not 1 <= port_no <= MAX_PORT_NO:
            raise ValueError(f"port number {port_no} out of 1..{MAX_PORT_NO} (12-bit miss tag)")
        self.map.update(_u32(ifindex), PortInfo(port_no=port_no))

    def get(self, ifindex: int) -> int | None:
        v = self.map.lookup(_u32(ifindex))
        return None if v is None else int(v.port_no)

    def delete(self, ifindex: int) -> bool:
        return self.map.delete(_u32(ifindex))

    def items(self) -> dict[int, int]:
        return {int(k.value): int(v.port_no) for k, v in self.map.items()}


class VniPortMap:
    """``vni_ports``: VNI (the port's global tunnel key) -> local device."""

    def __init__(self, m: BpfMap[ctypes.c_uint32, VniPort]) -> None:
        self.map = m

    def set(self, vni: int, ifindex: int, *, peer: bool = False) -> None:
        if not 0 < vni < 1 << 24:
            raise ValueError(f"VNI {vni} out of 1..2^24-1")
        self.map.update(_u32(vni), VniPort(ifindex=ifindex, flags=ACT_F_PEER if peer else 0))

    def get(self, vni: int) -> tuple[int, bool] | None:
        v = self.map.lookup(_u32(vni))
        return None if v is None else (int(v.ifindex), bool(v.flags & ACT_F_PEER))

    def delete(self, vni: int) -> bool:
        return self.map.delete(_u32(vni))

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
            v = self.map.lookup(_u32(stat))
            out[stat] = sum(v) if v is not None else 0
        return out

    def reset(self) -> None:
        zero = self._type()
        for stat in Stat:
            self.map.update(_u32(stat), zero)


# --- masks ---------------------------------------------------------------------


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
        self._list = m.lookup(_u32(0)) or MaskList()
        self._refs = [0] * FLOW_MAX_MASKS
        self._idle: dict[int, float] = {}  # slot -> when its last flow went
        self._index: dict[bytes, int] = {}
        for i in range(FLOW_MAX_MASKS):
            if self._list.active & (1 << i):
                self._index.setdefault(bytes(self._list.masks[i]), i)

    def index_of(self, mask: FlowKey) -> int | None:
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
        self.map.update(_u32(0), self._list)


# --- flood sets ------------------------------------------------------------------


class FloodSetsFull(RuntimeError):
    """All FLOOD_MAX_SETS flood sets are in use."""


class FlowTooLarge(ValueError):
    """The actions fit neither a flow's action list nor one flood set."""


class FloodSetTable:
    """The ``flood_sets`` map: output lists too long for a flow, shared by content.

    Flows with the same outputs (a bridge floods the same ports for many
    source MACs) share one set, refcounted by the flows naming it; the set is
    deleted with the last of them.  A set is never rewritten while named, so
    the program never sees a half-written flood.  Ids are handed out round
    robin rather than lowest-free: a packet that read a flow value just
    before its set was deleted must not find a new, unrelated set under the
    same id (the map is RCU-freed, but ids are not).  The refcounts live in
    Python only and :class:`FlowMap` recounts them from the flows map when it
    opens a pinned one.
    """

    def __init__(self, m: BpfMap[ctypes.c_uint32, FloodSet]) -> None:
        self.map = m
        self._id_of: dict[tuple[Output, ...], int] = {}
        self._outputs: dict[int, tuple[Output, ...]] = {}
        self._refs: dict[int, int] = {}
        self._next = 0
        for k, v in m.items():
            set_id = int(k.value)
            try:
                outputs = decode_flood_set(v)
            except ValueError:
                m.delete(_u32(set_id))  # garbage: no flow written by us names it
                continue
            self._outputs[set_id] = outputs
            self._id_of.setdefault(outputs, set_id)
            self._refs[set_id] = 0
            self._next = max(self._next, set_id + 1) % FLOOD_MAX_SETS

    def __len__(self) -> int:
        return len(self._outputs)

    def id_of(self, outputs: tuple[Output, ...]) -> int | None:
        return self._id_of.get(outputs)

    def outputs(self, set_id: int) -> tuple[Output, ...] | None:
        return self._outputs.get(set_id)

    def refcount(self, set_id: int) -> int:
        return self._refs.get(set_id, 0)

    def acquire(self, outputs: tuple[Output, ...]) -> int:
        """The id of the set holding ``outputs``, writing a new one if needed.

        Takes no reference (call :meth:`ref` once a flow names it, or
        :meth:`release_if_unused` when that failed).
        """
        set_id = self._id_of.get(outputs)
        if set_id is not None:
            return set_id
        if len(outputs) > FLOOD_MAX_OUTPUTS:
            raise FlowTooLarge(
                f"{len(outputs)} outputs, a flood set holds at most {FLOOD_MAX_OUTPUTS}"
            )
        if len(self._outputs) >= FLOOD_MAX_SETS:
            raise FloodSetsFull(f"all {FLOOD_MAX_SETS} flood sets in use")
        set_id = self._next
        while set_id in self._outputs:
            set_id = (set_id + 1) % FLOOD_MAX_SETS
        value = FloodSet()
        encode_flood_set(outputs, value)
        self.map.update(_u32(set_id), value)
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
        self.map.delete(_u32(set_id))

    def set_refcounts(self, refs: Mapping[int, int]) -> None:
        """Refcounts recounted from the flows map; deletes the sets no flow names."""
        self._refs = {set_id: int(refs.get(set_id, 0)) for set_id in self._outputs}
        for set_id in [i for i, n in self._refs.items() if n == 0]:
            self._free(set_id)

    def clear(self) -> None:
        for set_id in list(self._outputs):
            self._free(set_id)


def _flood_id(value: FlowValue) -> int | None:
    """The set a flow value floods to.  FlowMap writes FLOOD only as the last
    action, so one slot tells (cheap enough for a walk of every flow)."""
    n = int(value.n_actions)
    if not 0 < n <= FLOW_MAX_ACTIONS:
        return None
    last = value.actions[n - 1]
    return int(last.ifindex) if last.type == ActionType.FLOOD else None


# --- flows -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flow:
    """A desired megaflow: match ``key`` on the fields set in ``mask``."""

    key: FlowKey
    mask: FlowKey
    actions: tuple[Action, ...]

    def ident(self) -> tuple[bytes, bytes]:
        """Identity in the kernel: (mask, key & mask)."""
        return bytes(self.mask), bytes(self.key.masked(self.mask))


@dataclass(frozen=True, slots=True)
class FlowEntry:
    """A flow as the kernel holds it, with its counters."""

    mask_index: int
    mask: FlowKey | None  # None: an orphan whose slot is not active
    key: FlowKey  # already masked
    actions: tuple[Action, ...]
    packets: int
    bytes: int
    last_used_ns: int  # CLOCK_MONOTONIC (time.monotonic_ns()), 0 = never
    flood_set: int | None = None  # the flood set its trailing outputs live in


@dataclass(slots=True)
class ReconcileResult:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    errors: list[str] = field(default_factory=list)


class FlowMap:
    """``flows`` plus its :class:`MaskTable` and :class:`FloodSetTable`:
    megaflow install/delete/walk.

    A flow's actions go inline when they fit FLOW_MAX_ACTIONS; otherwise its
    trailing outputs go into a flood set and the flow holds the actions
    before them plus one FLOOD.  Readers never see the difference: entries
    come back with the set's outputs in place of the FLOOD.

    Not for concurrent use from several threads without the internal lock,
    which every public method takes.
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
        refs = [0] * FLOW_MAX_MASKS
        flood_refs: dict[int, int] = {}
        self._flood_of = {}
        for k, v in self.map.items():
            if 0 <= k.mask_index < FLOW_MAX_MASKS:
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

    @staticmethod
    def _plan(actions: Sequence[Action]) -> tuple[tuple[Action, ...], tuple[Output, ...] | None]:
        """(inline actions, outputs for a flood set or None); raises FlowTooLarge."""
        if any(type(a) is Flood for a in actions):
            raise TypeError("Flood is written by FlowMap itself; pass the outputs")
        if len(actions) <= FLOW_MAX_ACTIONS:
            return tuple(actions), None
        prefix, outputs = split_flood(actions)
        if len(prefix) + 1 > FLOW_MAX_ACTIONS:
            raise FlowTooLarge(
                f"{len(actions)} actions of which {len(prefix)} before the trailing outputs; "
                f"the datapath takes at most {FLOW_MAX_ACTIONS - 1} there"
            )
        if len(outputs) > FLOOD_MAX_OUTPUTS:
            raise FlowTooLarge(
                f"{len(outputs)} outputs, a flood set holds at most {FLOOD_MAX_OUTPUTS}"
            )
        return prefix, outputs

    def install(self, key: FlowKey, mask: FlowKey, actions: Sequence[Action]) -> None:
        """Add or replace the megaflow (key & mask) with ``actions``.

        A replaced flow keeps its counters.  Raises :class:`MaskTableFull`
        when the mask is new and every slot is taken, :class:`FlowTooLarge`
        when the actions cannot be encoded, :class:`FloodSetsFull` when they
        need a new flood set and none is free.
        """
        self.install_packed(bytes(key.masked(mask)), bytes(mask), actions)

    def install_packed(self, key: bytes, mask: bytes, actions: Sequence[Action]) -> None:
        """`install` for the miss path: ``key`` and ``mask`` are ``struct flow_key``
        bytes (`FLOW_KEY_PACK`), the key already zero outside the mask (a key that is
        not would sit where no packet and no delete finds it: refused)."""
        if len(key) != _KEY_SIZE or len(mask) != _KEY_SIZE:
            raise ValueError(f"key/mask of {len(key)}/{len(mask)} bytes, not {_KEY_SIZE}")
        if int.from_bytes(key, "little") & ~int.from_bytes(mask, "little"):
            raise ValueError("the key has bits set outside its mask")
        inline, outputs = self._plan(actions)
        with self._lock:
            self.masks.reap()
            set_id = None
            if outputs is not None:
                set_id = self.floods.acquire(outputs)
                inline = (*inline, Flood(set_id))
            try:
                raw, old_set = self._write(key, mask, inline)
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

    def _write(
        self, key: bytes, mask: bytes, actions: Sequence[Action]
    ) -> tuple[bytes, int | None]:
        """Write the flow: (its lookup key, the flood set of the value it replaced)."""
        packed = pack_actions(actions)
        n = len(actions)
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
            counters = (0, 0, 0) if old is None else (old.packets, old.bytes, old.last_used)
            self.map.update_bytes(lk, _VALUE_HEAD(*counters, n, 0) + packed, bpf.BPF_ANY)
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
            self.masks.unref(idx)
            self.masks.reap()
            set_id = self._flood_of.pop(bytes(lk), None)
            if set_id is not None:
                self.floods.unref(set_id)
            return True

    def get(self, key: FlowKey, mask: FlowKey) -> FlowEntry | None:
        idx = self.masks.index_of(mask)
        if idx is None:
            return None
        lk = self._lookup_key(idx, key, mask)
        v = self.map.lookup(lk)
        return None if v is None else self._entry(lk, v)

    def _entry(self, lk: FlowLookupKey, v: FlowValue) -> FlowEntry:
        actions = decode_actions(v)
        set_id = _flood_id(v)
        if set_id is not None:
            outputs = self.floods.outputs(set_id)
            if outputs is not None:  # else: left as Flood(id), visibly unresolved
                actions = (*actions[:-1], *outputs)
        return FlowEntry(
            mask_index=int(lk.mask_index),
            mask=self.masks.mask_at(lk.mask_index),
            key=FlowKey.from_buffer_copy(bytes(lk.key)),
            actions=actions,
            packets=int(v.packets),
            bytes=int(v.bytes),
            last_used_ns=int(v.last_used),
            flood_set=set_id,
        )

    def entries(self) -> list[FlowEntry]:
        """Every flow; also releases idle mask slots whose grace has passed (the agent
        dumps the flows every few seconds, so no idle slot lingers much longer)."""
        with self._lock:
            self.masks.reap()
        return [self._entry(k, v) for k, v in self.map.items()]

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

    def _encoded(self, actions: Sequence[Action]) -> bytes | None:
        """The action bytes ``actions`` would be written as, without writing
        anything (None: they need a flood set that does not exist yet)."""
        inline, outputs = self._plan(actions)
        if outputs is not None:
            set_id = self.floods.id_of(outputs)
            if set_id is None:
                return None
            inline = (*inline, Flood(set_id))
        return _VALUE_HEAD(0, 0, 0, len(inline), 0)[_ACTIONS_OFFSET:] + pack_actions(inline)

    def reconcile(self, desired: Iterable[Flow]) -> ReconcileResult:
        """Make the kernel hold exactly ``desired``.

        Reads the whole map once (batched), installs what is missing or
        different (a flow whose encoded actions are unchanged is not
        rewritten, so its counters stay), then deletes every other flow from
        the key list collected before any delete.  Unused mask slots and
        flood sets are freed last.  If the mask table fills up, the prune
        runs first and the remaining installs are retried once.  A flow that
        cannot be encoded is reported in ``errors``, not raised.
        """
        result = ReconcileResult()
        want: dict[tuple[bytes, bytes], Flow] = {}
        for f in desired:
            want[f.ident()] = f
        with self._lock:
            by_slot = {i: bytes(m) for i, m in self.masks.active().items()}
            current: dict[tuple[bytes, bytes], bytes] = {}
            stale: list[FlowLookupKey] = []
            for k, v in self.map.items():
                mask = by_slot.get(int(k.mask_index))
                ident = (mask, bytes(k.key)) if mask is not None else None
                if ident is None or ident not in want:
                    stale.append(k)
                else:
                    current[ident] = bytes(v)[_ACTIONS_OFFSET:]
        pending: list[Flow] = []
        for ident, f in want.items():
            have = current.get(ident)
            try:
                if have is not None and self._encoded(f.actions) == have:
                    result.unchanged += 1
                    continue
                self.install(f.key, f.mask, f.actions)
            except (MaskTableFull, FloodSetsFull):
                pending.append(f)
                continue
            except (FlowTooLarge, TypeError, ValueError) as e:
                result.errors.append(f"{f.key!r}/{f.mask!r}: {e}")
                continue
            if have is None:
                result.added += 1
            else:
                result.updated += 1
        with self._lock:
            for k in stale:
                if self.map.delete(k):
                    result.removed += 1
            self._resync()
            self.masks.gc()
        for f in pending:
            try:
                self.install(f.key, f.mask, f.actions)
                result.added += 1
            except (MaskTableFull, FloodSetsFull) as e:
                result.errors.append(f"{f.key!r}/{f.mask!r}: {e}")
        return result


# --- the whole set -------------------------------------------------------------------


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
