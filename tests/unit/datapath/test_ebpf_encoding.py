"""How the eBPF datapath encodes what it puts into the kernel, checked without one.

Actions, keys, masks and the struct layouts the miss path packs by hand, the BTF layout
checker and the clear error of a missing compiler: pure Python, no root, no clang. What
the kernel then does with these bytes is tested in tests/kernel/ebpf and
tests/kernel/datapath.
"""

from __future__ import annotations

import copy
import ctypes
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.ebpf import DEVICES
from tessera.datapath.base import (
    Action,
    DecTtl,
    Drop,
    Match,
    Output,
    OutputTunnel,
    SetEthDst,
    SetEthSrc,
    ToUserspace,
)
from tessera.datapath.ebpf.actions import FlowTooLarge, decode, encode
from tessera.datapath.ebpf.layout import (
    FLOW_ACTION_PACK,
    FLOW_KEY_PACK,
    FLOW_VALUE_HEAD_PACK,
    KEY_FIELDS,
    LOOKUP_INDEX_PACK,
    ActionType,
    FlowKey,
    FlowLookupKey,
    FlowValue,
    Mac,
    layout_mismatches,
)
from tessera.datapath.ebpf.loader import SOURCE_DIR, ToolMissing, compile_object
from tessera.datapath.ebpf_backend import from_kernel, packed_key, to_kernel
from tessera.packet.addr import ip_from_str, mac_from_str
from tessera.packet.match import FIELD_NAMES

MAC2 = "02:00:00:00:01:02"


# --- actions and structs ----------------------------------------------------------------


def test_actions_encode_decode_round_trip() -> None:
    acts = (
        SetEthSrc(mac_from_str("02:00:00:00:00:01")),
        SetEthDst(0x020000000002),
        DecTtl(2),
        Output(7),
        OutputTunnel(0x2BCDEF, ip_from_str("198.18.0.2")),
        OutputTunnel(0x7FFFFF, ip_from_str("198.18.0.3"), commit=True),
        ToUserspace(),
        Drop(),
    )
    inline, flood = encode(acts, {7: (70, True)})
    assert flood is None and len(inline) == len(acts) * FLOW_ACTION_PACK.size
    assert decode(inline, {70: 7}) == acts
    assert decode(inline, {}) is None  # port 7's device is gone: unusable as is
    with pytest.raises(FlowTooLarge):
        encode([Drop()] * 13, {})
    with pytest.raises(ValueError, match="not attached"):
        encode([Output(8)], {7: (70, True)})


def test_a_wide_flood_encodes_its_trailing_outputs_apart() -> None:
    outputs: list[Action] = [Output(p) for p in range(1, 21)]
    acts: list[Action] = [DecTtl(), SetEthSrc(1), *outputs]
    inline, flood = encode(acts, DEVICES)
    assert inline == encode(acts[:2], DEVICES)[0]
    assert flood == b"".join(encode([o], DEVICES)[0] for o in outputs)
    assert encode(outputs, DEVICES) == (b"", flood)  # nothing before them
    with pytest.raises(FlowTooLarge, match="before the trailing outputs"):
        encode([*[SetEthSrc(1)] * 12, *outputs], DEVICES)
    with pytest.raises(FlowTooLarge, match="at most 64"):
        encode([Output(1)] * 65, DEVICES)


def test_struct_twins_lay_out_every_field_like_the_ctypes_mirrors() -> None:
    """The miss path packs keys and values with `struct`; a distinct value per field
    shows each one lands at its mirror's offset, with its width and byte order."""
    macs = (b"\x02\x11\x22\x33\x44\x55", b"\x06\x66\x77\x88\x99\xaa")
    ints = dict(in_port=0x01020304, vlan_id=0x0506, eth_type=0x0708, ip_src=0x090A0B0C,
                ip_dst=0x0D0E0F10, ip_proto=0x11, ip_tos=0x12, ip_ttl=0x13, ip_frag=0x14,
                tp_src=0x1516, tp_dst=0x1718, icmp_id=0x191A, ct_state=0x1B)  # fmt: skip
    key = FlowKey(eth_src=Mac.from_buffer_copy(macs[0]), eth_dst=Mac.from_buffer_copy(macs[1]))
    for name, value in ints.items():
        setattr(key, name, value)
    packed = FLOW_KEY_PACK.pack(ints["in_port"], *macs, *(ints[n] for n in KEY_FIELDS[3:]))
    assert packed == bytes(key)
    lk = FlowLookupKey(mask_index=0x1A1B1C1D, key=key)
    assert LOOKUP_INDEX_PACK.pack(0x1A1B1C1D) + packed == bytes(lk)

    acts = (SetEthSrc(int.from_bytes(macs[0], "big")), DecTtl(3), Output(1),
            OutputTunnel(0x313233, 0x41424344), Drop())  # fmt: skip
    inline, _ = encode(acts, {1: (0x21222324, True)})
    v = FlowValue(packets=0x6162636465666768, bytes=0x7172737475767778, last_used=0x0102,
                  n_actions=len(acts), flags=0)  # fmt: skip
    ctypes.memmove(ctypes.addressof(v.actions), inline, len(inline))
    head = FLOW_VALUE_HEAD_PACK.pack(0x6162636465666768, 0x7172737475767778, 0x0102, 5, 0)
    assert head + inline == bytes(v)[: len(head) + len(inline)]
    a = v.actions
    assert (a[0].type, bytes(a[0].mac)) == (ActionType.SET_ETH_SRC, macs[0])
    assert (a[1].type, a[1].ttl_dec) == (ActionType.DEC_TTL, 3)
    assert (a[2].type, a[2].ifindex, a[2].flags) == (ActionType.OUTPUT_LOCAL, 0x21222324, 1)
    assert (a[3].type, a[3].vni, a[3].remote_ip) == (ActionType.OUTPUT_TUNNEL, 0x313233, 0x41424344)
    assert a[4].type == ActionType.DROP


def test_key_builders() -> None:
    k = FlowKey.make(in_port=3, eth_dst="02:00:00:00:00:0b", ip_dst="10.0.1.77", tp_dst=53)
    m = FlowKey.mask_of({"in_port": ..., "ip_dst": 0xFFFFFF00})
    assert k.masked(m).fields()["ip_dst"] == "10.0.1.0"
    assert k.masked(m).tp_dst == 0 and k.masked(m).in_port == 3
    with pytest.raises(KeyError):
        FlowKey.make(nope=1)
    with pytest.raises(ValueError):
        FlowKey.make(vlan_id=1 << 16)


def types_of(btf: dict[str, Any]) -> list[dict[str, Any]]:
    return list(btf["types"])


def test_layout_checker_catches_a_moved_field() -> None:
    # A fake BTF where flow_key.ip_dst moved and flow_value grew.
    from tessera.datapath.ebpf.layout import ENUMS, STRUCTS

    types: list[dict[str, Any]] = []
    for name, py in STRUCTS.items():
        members = [{"name": f[0], "bits_offset": getattr(py, f[0]).offset * 8} for f in py._fields_]
        types.append(
            {"kind": "STRUCT", "name": name, "size": ctypes.sizeof(py), "members": members}
        )
    for name, (pyenum, prefix, c_only) in ENUMS.items():
        values = [{"name": prefix + m.name, "val": int(m)} for m in pyenum]
        values += [{"name": k, "val": v} for k, v in c_only.items()]
        types.append({"kind": "ENUM", "name": name, "values": values})
    good = {"types": types}
    assert layout_mismatches(good) == []
    bad = copy.deepcopy(good)
    for t in types_of(bad):
        if t["name"] == "flow_key":
            t["members"][6]["bits_offset"] += 32
        if t["name"] == "flow_value":
            t["size"] += 8
    problems = layout_mismatches(bad)
    assert len(problems) == 2 and "flow_key" in problems[0] + problems[1]


def test_missing_compiler_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing, match=r"clang not found.*apt-get install"):
        compile_object(SOURCE_DIR, tmp_path)


# --- the eBPF backend's keys and masks ------------------------------------------------


def test_key_and_mask_round_trip() -> None:
    m = Match.of(in_port=3, eth_dst=mac_from_str(MAC2), ip_dst="10.0.0.2", tp_dst=80)
    assert from_kernel(*to_kernel(m)) == m


_WIDTH = {"eth_src": 48, "eth_dst": 48, "ip_src": 32, "ip_dst": 32, "in_port": 12,
          "vlan_id": 12, "eth_type": 16, "tp_src": 16, "tp_dst": 16}  # fmt: skip


@st.composite
def _matches(draw: st.DrawFn) -> Match:
    names = draw(st.sets(st.sampled_from(FIELD_NAMES)))
    fields = {n: draw(st.integers(0, (1 << _WIDTH.get(n, 8)) - 1)) for n in names}
    return Match.of(**fields)


@given(_matches())
def test_the_fast_key_builder_equals_the_checked_layout(m: Match) -> None:
    """`packed_key` skips `FlowKey.make`'s parsing for speed; it must build the same bytes."""
    key, mask = packed_key(m)
    fields = {n: v for n, v in m.fields().items()}
    assert key == bytes(FlowKey.make(**fields))
    assert mask == bytes(FlowKey.mask_of(list(fields)))
    assert key == bytes(FlowKey.make(**fields).masked(FlowKey.from_buffer_copy(mask)))
    assert from_kernel(*to_kernel(m)) == m
