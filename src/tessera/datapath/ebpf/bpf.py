"""The raw ``bpf(2)`` system call through ctypes.

Why not bpftool per operation: ``bpftool map update`` forks a process and
costs about 1 ms; the syscall costs a few microseconds.  The agent installs a
flow per first packet, so every map operation on the packet path goes
through this module.  Only the commands tessera needs are wrapped; each one
raises :class:`BpfError` (an ``OSError``) whose message names the command, the
object and the errno symbol.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

__all__ = [
    "CBuffer",
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_NOEXIST",
    "BpfError",
    "MapInfo",
    "ProgInfo",
    "TestRunResult",
    "map_create",
    "map_delete",
    "map_get_next_key",
    "map_lookup_batch",
    "map_info",
    "map_lookup",
    "map_update",
    "map_update_bytes",
    "obj_get",
    "obj_pin",
    "prog_info",
    "prog_test_run",
]

#: Anything ctypes can hand to the kernel by address (a key or value buffer).
CBuffer: TypeAlias = "ctypes.Structure | ctypes.Array[Any] | ctypes.c_uint32 | ctypes.c_uint64"

_SYSCALL_NR: Final = {"x86_64": 321, "aarch64": 280, "arm64": 280}

# enum bpf_cmd (include/uapi/linux/bpf.h)
BPF_MAP_CREATE: Final = 0
BPF_MAP_LOOKUP_ELEM: Final = 1
BPF_MAP_UPDATE_ELEM: Final = 2
BPF_MAP_DELETE_ELEM: Final = 3
BPF_MAP_GET_NEXT_KEY: Final = 4
BPF_OBJ_PIN: Final = 6
BPF_OBJ_GET: Final = 7
BPF_PROG_TEST_RUN: Final = 10
BPF_OBJ_GET_INFO_BY_FD: Final = 15
BPF_MAP_LOOKUP_BATCH: Final = 24
BPF_MAP_DELETE_BATCH: Final = 27

_CMD_NAMES: Final = {
    BPF_MAP_CREATE: "BPF_MAP_CREATE",
    BPF_MAP_LOOKUP_ELEM: "BPF_MAP_LOOKUP_ELEM",
    BPF_MAP_UPDATE_ELEM: "BPF_MAP_UPDATE_ELEM",
    BPF_MAP_DELETE_ELEM: "BPF_MAP_DELETE_ELEM",
    BPF_MAP_GET_NEXT_KEY: "BPF_MAP_GET_NEXT_KEY",
    BPF_OBJ_PIN: "BPF_OBJ_PIN",
    BPF_OBJ_GET: "BPF_OBJ_GET",
    BPF_PROG_TEST_RUN: "BPF_PROG_TEST_RUN",
    BPF_OBJ_GET_INFO_BY_FD: "BPF_OBJ_GET_INFO_BY_FD",
    BPF_MAP_LOOKUP_BATCH: "BPF_MAP_LOOKUP_BATCH",
    BPF_MAP_DELETE_BATCH: "BPF_MAP_DELETE_BATCH",
}

# update flags
BPF_ANY: Final = 0
BPF_NOEXIST: Final = 1
BPF_EXIST: Final = 2

# map types used by tessera (enum bpf_map_type)
BPF_MAP_TYPE_HASH: Final = 1
BPF_MAP_TYPE_ARRAY: Final = 2
BPF_MAP_TYPE_PERCPU_ARRAY: Final = 6
BPF_MAP_TYPE_LRU_HASH: Final = 9
BPF_F_NO_PREALLOC: Final = 1

BPF_PROG_TYPE_SCHED_CLS: Final = 3
BPF_OBJ_NAME_LEN: Final = 16


class BpfError(OSError):
    """A failed bpf(2) call; ``errno`` is set, ``cmd`` names the command."""

    def __init__(self, err: int, cmd: int, what: str = "") -> None:
        self.cmd = _CMD_NAMES.get(cmd, str(cmd))
        name = errno.errorcode.get(err, str(err))
        where = f" on {what}" if what else ""
        super().__init__(err, f"bpf({self.cmd}){where}: {name} ({os.strerror(err)})")


def _syscall_nr() -> int:
    machine = platform.machine()
    try:
        return _SYSCALL_NR[machine]
    except KeyError:
        raise OSError(errno.ENOSYS, f"bpf(2) syscall number unknown for {machine}") from None


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_NR: Final = _syscall_nr()


def _bpf(cmd: int, attr: ctypes.Structure, what: str = "") -> int:
    ret: int = _syscall(_NR, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        raise BpfError(ctypes.get_errno(), cmd, what)
    return ret


def _addr(buf: CBuffer) -> int:
    return ctypes.addressof(buf)


# --- attribute structs (prefixes of union bpf_attr) ---------------------------


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


class _MapElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # or next_key
        ("flags", ctypes.c_uint64),
    ]


class _MapWriteAttr(ctypes.Structure):
    """`_MapElemAttr` for a write from immutable bytes: the pointers are the bytes
    objects' own buffers (kept alive by the struct), nothing is copied into ctypes."""

    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_char_p),
        ("value", ctypes.c_char_p),
        ("flags", ctypes.c_uint64),
    ]


_MAP_WRITE_ATTR_SIZE: Final = ctypes.sizeof(_MapWriteAttr)
if ctypes.sizeof(_MapElemAttr) != _MAP_WRITE_ATTR_SIZE:  # pointers wider than u64?
    raise ImportError("bpf_attr for map writes does not fit this platform's pointers")


class _BatchAttr(ctypes.Structure):
    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _ObjAttr(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class _TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class _BpfMapInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


class _BpfProgInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
    ]


# --- maps --------------------------------------------------------------------


def map_create(
    map_type: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    flags: int = 0,
    name: str = "",
) -> int:
    """Create an (unpinned) map and return its fd.  Used by tests and tools."""
    attr = _MapCreateAttr(
        map_type=map_type,
        key_size=key_size,
        value_size=value_size,
        max_entries=max_entries,
        map_flags=flags,
        map_name=name.encode()[: BPF_OBJ_NAME_LEN - 1],
    )
    return _bpf(BPF_MAP_CREATE, attr, f"map {name!r}")


def map_lookup(fd: int, key: CBuffer, value: CBuffer, what: str = "") -> bool:
    """Copy the value of ``key`` into ``value``; False if the key is absent."""
    attr = _MapElemAttr(map_fd=fd, key=_addr(key), value=_addr(value))
    ret = _syscall(_NR, BPF_MAP_LOOKUP_ELEM, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            return False
        raise BpfError(err, BPF_MAP_LOOKUP_ELEM, what)
    return True


def map_update(fd: int, key: CBuffer, value: CBuffer, flags: int = BPF_ANY, what: str = "") -> None:
    """Create or replace ``key`` (``flags``: BPF_ANY, BPF_NOEXIST, BPF_EXIST)."""
    attr = _MapElemAttr(map_fd=fd, key=_addr(key), value=_addr(value), flags=flags)
    _bpf(BPF_MAP_UPDATE_ELEM, attr, what)


def map_update_bytes(
    fd: int, key: bytes, value: bytes, flags: int = BPF_ANY, what: str = ""
) -> None:
    """`map_update` from bytes, for the miss path. The kernel reads the map's key and
    value sizes from these buffers: the caller passes exactly that many bytes
    (`maps.BpfMap.update_bytes` checks)."""
    if type(key) is not bytes or type(value) is not bytes:  # c_char_p takes ints as addresses
        raise TypeError("map_update_bytes takes bytes")
    attr = _MapWriteAttr(fd, 0, key, value, flags)
    if _syscall(_NR, BPF_MAP_UPDATE_ELEM, ctypes.byref(attr), _MAP_WRITE_ATTR_SIZE) < 0:
        raise BpfError(ctypes.get_errno(), BPF_MAP_UPDATE_ELEM, what)


def map_delete(fd: int, key: CBuffer, what: str = "") -> bool:
    """Delete ``key``; False if it was absent."""
    attr = _MapElemAttr(map_fd=fd, key=_addr(key))
    ret = _syscall(_NR, BPF_MAP_DELETE_ELEM, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            return False
        raise BpfError(err, BPF_MAP_DELETE_ELEM, what)
    return True


def map_get_next_key(fd: int, key: CBuffer | None, next_key: CBuffer, what: str = "") -> bool:
    """Store the key after ``key`` (the first key if None); False at the end."""
    attr = _MapElemAttr(map_fd=fd, key=0 if key is None else _addr(key), value=_addr(next_key))
    ret = _syscall(_NR, BPF_MAP_GET_NEXT_KEY, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            return False
        raise BpfError(err, BPF_MAP_GET_NEXT_KEY, what)
    return True


def map_lookup_batch(
    fd: int,
    in_batch: CBuffer | None,
    out_batch: CBuffer,
    keys: CBuffer,
    values: CBuffer,
    count: int,
    what: str = "",
) -> tuple[int, bool]:
    """Copy up to ``count`` entries after the ``in_batch`` token (None: from
    the start) into ``keys``/``values``; the next token goes to ``out_batch``
    (may be the same buffer).  Returns (entries copied, walk finished).

    One syscall per chunk instead of two per entry: what makes the agent's sweep (a dump
    of tens of thousands of flows) cheap.  ENOSPC means a hash bucket holds
    more than ``count`` entries: retry with a bigger chunk.
    """
    attr = _BatchAttr(
        in_batch=0 if in_batch is None else _addr(in_batch),
        out_batch=_addr(out_batch),
        keys=_addr(keys),
        values=_addr(values),
        count=count,
        map_fd=fd,
    )
    ret = _syscall(_NR, BPF_MAP_LOOKUP_BATCH, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            return int(attr.count), True
        raise BpfError(err, BPF_MAP_LOOKUP_BATCH, what)
    return int(attr.count), False


def map_delete_batch(fd: int, keys: bytes, count: int, what: str = "") -> tuple[int, int]:
    """Delete the ``count`` keys laid out one after another in ``keys``, in one
    syscall; the kernel stops at the first it cannot delete. Returns (keys deleted
    before the stop, its errno, 0 if none): ENOENT for a key that was absent, the
    caller goes on after it.

    A rule change that invalidates thousands of flows deletes them on the thread that
    answers misses: one syscall for a batch instead of one per flow."""
    buf = ctypes.create_string_buffer(keys, len(keys))
    attr = _BatchAttr(keys=_addr(buf), count=count, map_fd=fd)
    ret = _syscall(_NR, BPF_MAP_DELETE_BATCH, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        return int(attr.count), ctypes.get_errno()
    return int(attr.count), 0


# --- objects -----------------------------------------------------------------


def obj_get(path: str | os.PathLike[str]) -> int:
    """Open a pinned map or program; the caller owns (and closes) the fd."""
    raw = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjAttr(pathname=_addr(raw))
    return _bpf(BPF_OBJ_GET, attr, os.fspath(path))


def obj_pin(fd: int, path: str | os.PathLike[str]) -> None:
    """Pin the object behind ``fd`` at ``path`` (on a bpf filesystem)."""
    raw = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjAttr(pathname=_addr(raw), bpf_fd=fd)
    _bpf(BPF_OBJ_PIN, attr, os.fspath(path))


@dataclass(frozen=True, slots=True)
class MapInfo:
    """What the kernel says a map is (to check a pinned map before reuse)."""

    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


@dataclass(frozen=True, slots=True)
class ProgInfo:
    id: int
    type: int
    name: str
    tag: str
    map_ids: tuple[int, ...]


def map_info(fd: int) -> MapInfo:
    info = _BpfMapInfo()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=_addr(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr, f"map fd {fd}")
    return MapInfo(
        id=info.id,
        type=info.type,
        key_size=info.key_size,
        value_size=info.value_size,
        max_entries=info.max_entries,
        flags=info.map_flags,
        name=info.name.decode(errors="replace"),
    )


def prog_info(fd: int) -> ProgInfo:
    info = _BpfProgInfo()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=_addr(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr, f"prog fd {fd}")
    n = info.nr_map_ids
    ids = (ctypes.c_uint32 * max(n, 1))()
    if n:
        # Second call with a buffer for exactly the map ids.
        info2 = _BpfProgInfo(nr_map_ids=n, map_ids=_addr(ids))
        attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info2), info=_addr(info2))
        _bpf(BPF_OBJ_GET_INFO_BY_FD, attr, f"prog fd {fd}")
    return ProgInfo(
        id=info.id,
        type=info.type,
        name=info.name.decode(errors="replace"),
        tag=bytes(info.tag).hex(),
        map_ids=tuple(ids[:n]),
    )


# --- tests -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TestRunResult:
    retval: int
    data: bytes
    duration_ns: int


def prog_test_run(
    prog_fd: int,
    data: bytes,
    *,
    ctx: bytes | None = None,
    repeat: int = 1,
    out_size: int | None = None,
) -> TestRunResult:
    """Run a program on one packet in the kernel (BPF_PROG_TEST_RUN).

    For tc programs ``ctx`` may be a ``struct __sk_buff`` prefix (mark,
    priority, ifindex, cb... are accepted by the kernel).  The packet seen by
    the program comes from the calling thread's network namespace.
    """
    data_in = ctypes.create_string_buffer(data, len(data))
    size_out = out_size if out_size is not None else len(data) + 256
    data_out = ctypes.create_string_buffer(size_out)
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(data),
        data_size_out=size_out,
        data_in=_addr(data_in),
        data_out=_addr(data_out),
        repeat=repeat,
    )
    ctx_buf = None
    if ctx is not None:
        ctx_buf = ctypes.create_string_buffer(ctx, len(ctx))
        attr.ctx_in = _addr(ctx_buf)
        attr.ctx_size_in = len(ctx)
    _bpf(BPF_PROG_TEST_RUN, attr, f"prog fd {prog_fd}")
    return TestRunResult(
        retval=attr.retval,
        data=data_out.raw[: attr.data_size_out],
        duration_ns=attr.duration,
    )
