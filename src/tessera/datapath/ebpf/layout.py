"""ctypes mirrors of ``flow.h``, field by field.

``flow.h`` is the one definition; this module copies it for Python and
:func:`layout_mismatches` proves the copy right against the BTF of the
compiled object (Cilium's alignchecker): every struct's size and member
offsets, the length of every array member (so the FLOW_MAX_* / FLOOD_MAX_*
limits), and the enums (`ActionType`, `Stat`).  The loader refuses an object
that disagrees, so a header edit without the matching Python edit fails
loudly instead of corrupting flows.

Numeric fields are host byte order (see flow.h); MACs are 6 raw bytes.
"""

from __future__ import annotations

import ctypes
import enum
import ipaddress
import struct
from collections.abc import Iterable, Mapping
from typing import Any, Final

from tessera.datapath.conntrack import (
    CT_DEFAULT_ENTRIES,
    CT_F_FIN_ORIG,
    CT_F_FIN_REPLY,
    CT_F_UNREPLIED,
    CT_NEW_ENTRIES,
)

__all__ = [
    "ACT_F_CT_COMMIT",
    "ACT_F_PEER",
    "CT_F_FIN_ORIG",
    "CT_F_FIN_REPLY",
    "CT_F_UNREPLIED",
    "CT_MAX_ENTRIES",
    "CT_NEW_MAX_ENTRIES",
    "CT_REPLY",
    "CT_TAG_SHIFT",
    "CT_TRACKED",
    "CtKey",
    "CtValue",
    "FLOW_FRAG_FIRST",
    "FLOW_FRAG_LATER",
    "FLOW_FRAG_NONE",
    "FLOOD_MAX_OUTPUTS",
    "FLOOD_MAX_SETS",
    "FLOW_MAX_ACTIONS",
    "FLOW_MAX_ENTRIES",
    "FLOW_MAX_MASKS",
    "FLOW_ACTION_PACK",
    "FLOW_KEY_PACK",
    "FLOW_VALUE_HEAD_PACK",
    "ENUMS",
    "KEY_FIELDS",
    "LOOKUP_INDEX_PACK",
    "ActionType",
    "DpConfig",
    "FloodSet",
    "FlowAction",
    "FlowKey",
    "FlowLookupKey",
    "FlowValue",
    "MaskList",
    "PortInfo",
    "Stat",
    "VniPort",
    "STRUCTS",
    "layout_mismatches",
    "parse_mac",
    "format_mac",
]

FLOW_MAX_MASKS: Final = 16
FLOW_MAX_ACTIONS: Final = 12
FLOW_MAX_ENTRIES: Final = 65536
PORT_MAX_ENTRIES: Final = 4096
VNI_MAX_ENTRIES: Final = 4096
FLOOD_MAX_OUTPUTS: Final = 64
FLOOD_MAX_SETS: Final = 4096
CT_MAX_ENTRIES: Final = CT_DEFAULT_ENTRIES
CT_NEW_MAX_ENTRIES: Final = CT_NEW_ENTRIES

CT_TRACKED: Final = 0x01
CT_REPLY: Final = 0x02
CT_TAG_SHIFT: Final = 13

FLOW_FRAG_NONE: Final = 0
FLOW_FRAG_FIRST: Final = 1
FLOW_FRAG_LATER: Final = 2

ACT_F_PEER: Final = 0x01
ACT_F_CT_COMMIT: Final = 0x02  # OUTPUT_TUNNEL: the far end commits (OutputTunnel.commit)

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
Mac = ctypes.c_uint8 * 6


class ActionType(enum.IntEnum):
    NONE = 0
    SET_ETH_SRC = 1
    SET_ETH_DST = 2
    DEC_TTL = 3
    OUTPUT_LOCAL = 4
    OUTPUT_TUNNEL = 5
    DROP = 6
    TO_USERSPACE = 7
    FLOOD = 8  # ifindex holds the id of a flood_sets entry
    SET_IP_SRC = 9  # ip
    SET_IP_DST = 10
    SET_TP_SRC = 11  # port: TCP/UDP source port, ICMP echo identifier
    SET_TP_DST = 12
    CT_COMMIT = 13  # ifindex holds the conntrack zone


class Stat(enum.IntEnum):
    """Indexes of the per-CPU ``stats`` map (enum dp_stat)."""

    HIT = 0
    MISS = 1
    DROP = 2
    UNKNOWN_PORT = 3
    MISS_FAILED = 4
    INJECT_HIT = 5
    INJECT_MISS = 6
    INJECT_BAD_TAG = 7
    TUNNEL_RX = 8
    TUNNEL_RX_UNKNOWN = 9
    ACTION_ERROR = 10
    FLOOD_MISSING = 11


STAT_MAX: Final = 16


def parse_mac(mac: str | bytes | bytearray) -> bytes:
    """``'aa:bb:cc:dd:ee:ff'`` or 6 bytes -> 6 bytes."""
    if isinstance(mac, bytes | bytearray):
        if len(mac) != 6:
            raise ValueError(f"MAC must be 6 bytes, got {len(mac)}")
        return bytes(mac)
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"bad MAC address {mac!r}")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes | Iterable[int]) -> str:
    return ":".join(f"{b:02x}" for b in bytes(mac))


def _ip_int(value: int | str | ipaddress.IPv4Address) -> int:
    if isinstance(value, int):
        return value
    return int(ipaddress.IPv4Address(value))


class _Struct(ctypes.Structure):
    """Value semantics for the mirrors: compare and hash by bytes."""

    def to_bytes(self) -> bytes:
        return bytes(self)  # type: ignore[call-overload]

    @classmethod
    def from_bytes(cls, raw: bytes) -> Any:
        return cls.from_buffer_copy(raw)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and bytes(self) == bytes(other)  # type: ignore[call-overload]

    def __hash__(self) -> int:
        return hash(bytes(self))  # type: ignore[call-overload]


class FlowKey(_Struct):
    """``struct flow_key``: the fields a simulation may read (its FlowMatch).

    The same type is used for masks: all-ones bits in the fields that
    matter.  Build with :meth:`make`, which takes the friendly forms
    (``'10.0.0.1'``, ``'aa:bb:..'``) as well as raw integers/bytes.
    """

    _fields_ = [
        ("in_port", u32),
        ("eth_src", Mac),
        ("eth_dst", Mac),
        ("vlan_id", u16),
        ("eth_type", u16),
        ("ip_src", u32),
        ("ip_dst", u32),
        ("ip_proto", u8),
        ("ip_tos", u8),
        ("ip_ttl", u8),
        ("ip_frag", u8),
        ("tp_src", u16),
        ("tp_dst", u16),
        ("icmp_id", u16),  # ICMP echo identifier, 0 for anything else
        ("ct_state", u8),  # CT_* bits the conntrack map gave the packet
        ("_pad0", u8),  # always 0 (a hole would make equal keys hash differently)
    ]

    @classmethod
    def make(cls, **fields: Any) -> FlowKey:
        """A key with the given fields set and every other field zero."""
        key = cls()
        for name, value in fields.items():
            key.set(name, value)
        return key

    @classmethod
    def mask_of(cls, fields: Iterable[str] | Mapping[str, Any]) -> FlowKey:
        """A mask: all-ones in the named fields, or explicit partial masks.

        ``mask_of(['in_port', 'eth_dst'])`` matches those fields exactly;
        ``mask_of({'in_port': ..., 'ip_dst': 0xFFFFFF00})`` gives a /24 (an
        Ellipsis value means exact).
        """
        mask = cls()
        items = fields.items() if isinstance(fields, Mapping) else ((f, ...) for f in fields)
        for name, value in items:
            mask.set(name, _FULL[name] if value is ... else value)
        return mask

    def set(self, name: str, value: Any) -> None:
        if name not in _FULL:
            raise KeyError(f"flow_key has no field {name!r}")
        if name in ("eth_src", "eth_dst"):
            setattr(self, name, Mac(*parse_mac(value)))
        elif name in ("ip_src", "ip_dst"):
            setattr(self, name, _ip_int(value))
        else:
            if not 0 <= int(value) <= _FULL[name]:
                raise ValueError(f"{name}={value} does not fit the field")
            setattr(self, name, int(value))

    def masked(self, mask: FlowKey) -> FlowKey:
        """self & mask, byte by byte (what the program computes)."""
        n = int.from_bytes(bytes(self), "little") & int.from_bytes(bytes(mask), "little")
        return FlowKey.from_buffer_copy(n.to_bytes(_KEY_SIZE, "little"))

    def fields(self) -> dict[str, Any]:
        """Readable view: MACs as strings, IPs as dotted quads."""
        out: dict[str, Any] = {}
        for name in KEY_FIELDS:
            value = getattr(self, name)
            if name in ("eth_src", "eth_dst"):
                out[name] = format_mac(value)
            elif name in ("ip_src", "ip_dst"):
                out[name] = str(ipaddress.IPv4Address(value))
            else:
                out[name] = value
        return out

    def __repr__(self) -> str:
        nonzero = {
            k: v for k, v in self.fields().items() if v not in (0, "00:00:00:00:00:00", "0.0.0.0")
        }
        return f"FlowKey({nonzero})"


_FULL: Final[dict[str, Any]] = {
    "in_port": 0xFFFFFFFF,
    "eth_src": b"\xff" * 6,
    "eth_dst": b"\xff" * 6,
    "vlan_id": 0xFFFF,
    "eth_type": 0xFFFF,
    "ip_src": 0xFFFFFFFF,
    "ip_dst": 0xFFFFFFFF,
    "ip_proto": 0xFF,
    "ip_tos": 0xFF,
    "ip_ttl": 0xFF,
    "ip_frag": 0xFF,
    "tp_src": 0xFFFF,
    "tp_dst": 0xFFFF,
    "icmp_id": 0xFFFF,
    "ct_state": 0xFF,
}

_KEY_SIZE: Final = ctypes.sizeof(FlowKey)

#: Field names of ``struct flow_key`` in layout order, padding left out.
KEY_FIELDS: Final = tuple(f[0] for f in FlowKey._fields_ if not f[0].startswith("_"))


class FlowLookupKey(_Struct):
    _fields_ = [("mask_index", u32), ("key", FlowKey)]


class MaskList(_Struct):
    _fields_ = [("count", u32), ("active", u32), ("masks", FlowKey * FLOW_MAX_MASKS)]


class FlowAction(_Struct):
    _fields_ = [
        ("type", u8),
        ("flags", u8),
        ("ttl_dec", u8),
        ("_pad0", u8),
        ("ifindex", u32),
        ("vni", u32),
        ("ip", u32),  # OUTPUT_TUNNEL: underlay remote; SET_IP_*: the new address
        ("mac", Mac),
        ("port", u16),  # SET_TP_*
    ]

    @property
    def remote_ip(self) -> int:
        """`ip` under its OUTPUT_TUNNEL name (the underlay remote)."""
        return int(self.ip)


class FlowValue(_Struct):
    _fields_ = [
        ("packets", u64),
        ("bytes", u64),
        ("last_used", u64),
        ("n_actions", u32),
        ("tcp_flags", u32),  # OR of the TCP flags of the packets that hit it
        ("actions", FlowAction * FLOW_MAX_ACTIONS),
    ]


class FloodSet(_Struct):
    _fields_ = [
        ("n_outputs", u32),
        ("flags", u32),
        ("outputs", FlowAction * FLOOD_MAX_OUTPUTS),
    ]


class PortInfo(_Struct):
    _fields_ = [("port_no", u32), ("flags", u32)]


class VniPort(_Struct):
    _fields_ = [("ifindex", u32), ("flags", u32)]


class CtKey(_Struct):
    _fields_ = [
        ("zone", u32),
        ("src", u32),
        ("dst", u32),
        ("sport", u16),
        ("dport", u16),
        ("proto", u8),
        ("_pad", u8 * 3),
    ]


class CtValue(_Struct):
    _fields_ = [("last_used", u64), ("tcp_flags", u32), ("_pad", u32)]


class DpConfig(_Struct):
    _fields_ = [
        ("miss_ifindex", u32),
        ("vxlan_ifindex", u32),
        ("flags", u32),
        ("_pad", u32),
    ]


# struct-module twins of the structs the miss path writes for every new flow: one pack
# costs a fraction of filling a ctypes Structure field by field, and on an idle CPU the
# difference is tens of microseconds per install (docs/performance.md). Native byte
# order and no implicit padding, like the mirrors; sizes are checked here, every field
# offset by tests/unit/datapath_ebpf/test_ebpf_loader.py.
FLOW_KEY_PACK: Final = struct.Struct("=I6s6sHHIIBBBBHHHBx")  # struct flow_key
LOOKUP_INDEX_PACK: Final = struct.Struct("=I")  # flow_lookup_key before its key
FLOW_VALUE_HEAD_PACK: Final = struct.Struct("=QQQII")  # flow_value before its actions
FLOW_ACTION_PACK: Final = struct.Struct("=BBBxIII6sH")  # struct flow_action

for _pack, _size in (
    (FLOW_KEY_PACK, ctypes.sizeof(FlowKey)),
    (LOOKUP_INDEX_PACK, FlowLookupKey.key.offset),
    (FLOW_VALUE_HEAD_PACK, FlowValue.actions.offset),
    (FLOW_ACTION_PACK, ctypes.sizeof(FlowAction)),
):
    if _pack.size != _size:  # a mirror changed without its twin
        raise ImportError(f"struct {_pack.format!r} is {_pack.size} bytes, its mirror {_size}")


#: C struct name -> Python mirror; every one is checked against BTF.
STRUCTS: Final[dict[str, type[ctypes.Structure]]] = {
    "flow_key": FlowKey,
    "flow_lookup_key": FlowLookupKey,
    "mask_list": MaskList,
    "flow_action": FlowAction,
    "flow_value": FlowValue,
    "flood_set": FloodSet,
    "port_info": PortInfo,
    "vni_port": VniPort,
    "dp_config": DpConfig,
    "ct_key": CtKey,
    "ct_value": CtValue,
}


#: C enum name -> (Python mirror, prefix of the C enumerators, C-only enumerators with
#: their values); every one is checked against BTF.
ENUMS: Final[dict[str, tuple[type[enum.IntEnum], str, dict[str, int]]]] = {
    "flow_action_type": (ActionType, "ACT_", {}),
    "dp_stat": (Stat, "STAT_", {"STAT_MAX": STAT_MAX}),
}


def layout_mismatches(btf: Mapping[str, Any]) -> list[str]:
    """Compare :data:`STRUCTS` and :data:`ENUMS` with ``bpftool -j btf dump file X.o``.

    Returns human-readable differences (empty when the layouts agree): struct
    size, member names in order, member byte offsets, array lengths, and every
    enumerator's name and value.
    """
    types = btf.get("types", [])
    by_id = {t["id"]: t for t in types if "id" in t}
    by_name = {t["name"]: t for t in types if t.get("kind") == "STRUCT" and t.get("name")}
    problems: list[str] = []
    for cname, pytype in STRUCTS.items():
        t = by_name.get(cname)
        if t is None:
            problems.append(f"struct {cname}: not in the object's BTF")
            continue
        if t["size"] != ctypes.sizeof(pytype):
            problems.append(
                f"struct {cname}: size {t['size']} in C, {ctypes.sizeof(pytype)} in Python"
            )
        c_members = [(m["name"], m["bits_offset"] // 8) for m in t["members"]]
        py_members = [(name, getattr(pytype, name).offset) for name, *_ in pytype._fields_]
        if c_members != py_members:
            problems.append(f"struct {cname}: members C {c_members} != Python {py_members}")
        py_types = dict((f[0], f[1]) for f in pytype._fields_)
        for m in t["members"]:
            c_len = _array_length(by_id, m.get("type_id"))
            py_type = py_types.get(m["name"])
            if c_len is None or py_type is None:
                continue
            py_len = getattr(py_type, "_length_", None)
            if c_len != py_len:
                problems.append(
                    f"struct {cname}.{m['name']}: {c_len} elements in C, {py_len} in Python"
                )
    enums = {t["name"]: t for t in types if t.get("kind") in ("ENUM", "ENUM64") and t.get("name")}
    for cname, (pyenum, prefix, c_only) in ENUMS.items():
        t = enums.get(cname)
        if t is None:
            problems.append(f"enum {cname}: not in the object's BTF")
            continue
        c_values = {v["name"]: v["val"] for v in t.get("values", [])}
        py_values = {prefix + m.name: int(m.value) for m in pyenum} | c_only
        if c_values != py_values:
            problems.append(f"enum {cname}: C {c_values} != Python {py_values}")
    return problems


def _array_length(by_id: Mapping[int, Mapping[str, Any]], type_id: int | None) -> int | None:
    """The element count of an array type (through typedefs and qualifiers)."""
    t = by_id.get(type_id) if type_id is not None else None
    while t is not None and t.get("kind") in ("TYPEDEF", "CONST", "VOLATILE"):
        t = by_id.get(t["type_id"])
    if t is None or t.get("kind") != "ARRAY":
        return None
    return int(t["nr_elems"])
