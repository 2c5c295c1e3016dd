"""One kernel map behind typed keys and values, and the shape tessera_dp.c gives each map.

Every operation is one ``bpf(2)`` call through :mod:`..bpf`; nothing here forks.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from tessera.datapath.ebpf import bpf
from tessera.datapath.ebpf.layout import (
    CT_MAX_ENTRIES,
    CT_NEW_MAX_ENTRIES,
    FLOOD_MAX_SETS,
    FLOW_MAX_ENTRIES,
    PORT_MAX_ENTRIES,
    STAT_MAX,
    VNI_MAX_ENTRIES,
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

__all__ = ["MAP_SPECS", "BpfMap", "MapSpec", "map_spec_mismatches", "spec_mismatch", "u32_key"]

_ENOTSUPP = 524  # kernel-internal "operation not supported" leaking to users
_DELETE_BATCH = 1024  # keys per BPF_MAP_DELETE_BATCH call

K = TypeVar("K", bound=ctypes.Structure | ctypes.c_uint32)
V = TypeVar("V", bound=ctypes.Structure | ctypes.Array[ctypes.c_uint64] | ctypes.c_uint32)


@dataclass(frozen=True, slots=True)
class MapSpec:
    """What tessera_dp.c declares for a map; checked before reusing a pin."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    # max_entries is only the default: the loader creates the map the size the agent
    # asks for (`EbpfFastPath(ct_entries=...)`), and a pin of any size serves.
    sized: bool = False


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
        MapSpec("port_zones", bpf.BPF_MAP_TYPE_ARRAY, 4, 4, PORT_MAX_ENTRIES),
        MapSpec(
            "conntrack",
            bpf.BPF_MAP_TYPE_LRU_HASH,
            ctypes.sizeof(CtKey),
            ctypes.sizeof(CtValue),
            CT_MAX_ENTRIES,
            sized=True,
        ),
        MapSpec(
            "conntrack_new",
            bpf.BPF_MAP_TYPE_LRU_HASH,
            ctypes.sizeof(CtKey),
            ctypes.sizeof(CtValue),
            CT_NEW_MAX_ENTRIES,
        ),
    )
}


def spec_mismatch(spec: MapSpec, info: bpf.MapInfo) -> str | None:
    """Why a pinned map cannot serve as ``spec`` (None when it can; a `sized` one of
    any size can)."""
    got = (info.type, info.key_size, info.value_size, info.max_entries, info.flags)
    size = info.max_entries if spec.sized else spec.max_entries
    want = (spec.type, spec.key_size, spec.value_size, size, spec.flags)
    if got == want:
        return None
    return (
        f"map {spec.name}: pinned (type, key, value, max_entries, flags)={got}, "
        f"program expects {want}"
    )


def map_spec_mismatches(btf: Mapping[str, Any]) -> list[str]:
    """Compare :data:`MAP_SPECS` with the map definitions in an object's BTF (``bpftool
    -j btf dump file X.o``): the limits copied from flow.h (FLOW_MAX_ENTRIES, STAT_MAX,
    ...) are checked where the program really uses them, before any map is created.

    Returns human-readable differences, empty when they agree.
    """
    types = btf.get("types", [])
    by_id = {t["id"]: t for t in types if "id" in t}
    defined: dict[str, MapSpec] = {}
    for sec in types:
        if sec.get("kind") != "DATASEC" or sec.get("name") != ".maps":
            continue
        for var in sec.get("vars", []):
            v = by_id.get(var["type_id"], {})
            struct = _resolve(by_id, v.get("type_id"))
            if struct is None or struct.get("kind") != "STRUCT":
                continue
            members = {m["name"]: m["type_id"] for m in struct.get("members", [])}

            def uint(name: str, members: dict[str, int] = members) -> int:
                # __uint(name, N) is `int (*name)[N]`; an absent one is 0
                if name not in members:
                    return 0
                arr = _resolve(by_id, by_id.get(members[name], {}).get("type_id"))
                return int(arr["nr_elems"]) if arr else 0

            def size(name: str, members: dict[str, int] = members) -> int:
                # __type(name, T) is `T *name`
                if name not in members:
                    return 0
                return _size(by_id, by_id.get(members[name], {}).get("type_id"))

            defined[v["name"]] = MapSpec(
                v["name"], uint("type"), size("key"), size("value"), uint("max_entries"),
                uint("map_flags"),
            )  # fmt: skip
    problems: list[str] = []
    for name in sorted(MAP_SPECS.keys() | defined.keys()):
        want, got = MAP_SPECS.get(name), defined.get(name)
        if want is None:
            problems.append(f"map {name}: defined in the object, not in MAP_SPECS")
        elif got is None:
            problems.append(f"map {name}: in MAP_SPECS, not defined in the object")
        elif got != replace(want, sized=False):
            problems.append(f"map {name}: the object defines {got}, MAP_SPECS says {want}")
    return problems


def _resolve(by_id: Mapping[int, Mapping[str, Any]], type_id: int | None) -> Any:
    """The type behind typedefs and qualifiers (None if unknown)."""
    t = by_id.get(type_id) if type_id is not None else None
    while t is not None and t.get("kind") in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT"):
        t = by_id.get(t["type_id"])
    return t


def _size(by_id: Mapping[int, Mapping[str, Any]], type_id: int | None) -> int:
    t = _resolve(by_id, type_id)
    if t is None:
        return 0
    if t.get("kind") == "ARRAY":
        return int(t["nr_elems"]) * _size(by_id, t["type_id"])
    return int(t.get("size", 0))


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

    def delete_many_bytes(self, keys: Sequence[bytes]) -> list[bool]:
        """Delete every key (each the kernel's layout of a key), in BPF_MAP_DELETE_BATCH
        calls; which ones were there. A key that was absent stops a batch, which goes
        on after it; a kernel without batch deletes gets one call per key."""
        size = ctypes.sizeof(self.key_type)
        if any(len(k) != size for k in keys):
            raise ValueError(f"{self.name}: keys must be {size} bytes")
        done = [False] * len(keys)
        i = 0
        while i < len(keys):
            chunk = keys[i : i + _DELETE_BATCH]
            raw = b"".join(chunk)
            n, err = bpf.map_delete_batch(self.fd, raw, len(chunk), self.name)
            for j in range(i, i + n):
                done[j] = True
            i += n
            if err == 0:
                continue
            if err == errno.ENOENT:
                i += 1  # absent: not deleted, the batch goes on after it
            elif err in (errno.EINVAL, errno.EOPNOTSUPP, _ENOTSUPP) and n == 0:
                for j in range(i, len(keys)):  # no batch deletes here
                    done[j] = bpf.map_delete(self.fd, self.key_type.from_buffer_copy(keys[j]),
                                             self.name)  # fmt: skip
                return done
            else:
                raise bpf.BpfError(err, bpf.BPF_MAP_DELETE_BATCH, self.name)
        return done

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
        out: list[tuple[K, V]] = []
        for keys, values, n in self._chunks():
            out.extend(zip(self._elements(keys, n), self._elements(values, n), strict=True))
        return out

    def items_bytes(self) -> tuple[bytes, bytes]:
        """Every entry as two packed buffers (keys, values: the kernel's layout, one
        after another), for callers that cut them with `struct`: the agent's sweep
        reads 65,536 connections three times faster this way than through a ctypes object
        per field."""
        chunks = list(self.parts_bytes())
        return b"".join(k for k, _ in chunks), b"".join(v for _, v in chunks)

    def parts_bytes(self) -> Iterator[tuple[bytes, bytes]]:
        """`items_bytes` a part at a time (one BPF_MAP_LOOKUP_BATCH each, 512 entries
        or one bucket): a caller that does other work between two parts (the agent's
        sweep, between misses) never holds it back for a whole table. Entries written
        or deleted between two parts may or may not be seen, as with any walk of a
        live hash map."""
        key_size, value_size = ctypes.sizeof(self.key_type), ctypes.sizeof(self.value_type)
        walk = self._iter_chunks()
        try:
            first = next(walk, None)
        except bpf.BpfError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, _ENOTSUPP):
                raise
            pairs = self.items()  # no batch operations on this kernel: one part
            yield (
                b"".join(bytes(k) for k, _ in pairs),  # type: ignore[call-overload]
                b"".join(bytes(v) for _, v in pairs),  # type: ignore[call-overload]
            )
            return
        if first is None:
            return
        for keys, values, n in itertools.chain((first,), walk):
            yield bytes(keys)[: n * key_size], bytes(values)[: n * value_size]

    def _chunks(self) -> list[tuple[ctypes.Array[Any], ctypes.Array[Any], int]]:
        """The map in BPF_MAP_LOOKUP_BATCH chunks: (keys, values, entries filled)."""
        return list(self._iter_chunks())

    def _iter_chunks(self) -> Iterator[tuple[ctypes.Array[Any], ctypes.Array[Any], int]]:
        chunk = 512
        token = ctypes.create_string_buffer(max(ctypes.sizeof(self.key_type), 8))
        in_token: ctypes.Array[ctypes.c_char] | None = None
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
            yield keys, values, n
            if done:
                break
            in_token = token

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


def u32_key(v: int) -> ctypes.c_uint32:
    """The key of an array map or of a map keyed by a 32-bit id."""
    return ctypes.c_uint32(v)
