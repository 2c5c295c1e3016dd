"""Layout check, compile cache, pinning/reuse across restarts, tc attach."""

from __future__ import annotations

import copy
import ctypes
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tessera.datapath.base import (
    Action,
    DecTtl,
    Drop,
    Output,
    OutputTunnel,
    SetEthDst,
    SetEthSrc,
    ToUserspace,
)
from tessera.datapath.ebpf import bpf
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
from tessera.datapath.ebpf.loader import (
    PROGRAMS,
    SOURCE_DIR,
    EbpfFastPath,
    LoadError,
    ToolMissing,
    compile_object,
    object_btf,
)
from tessera.datapath.ebpf.maps import MAP_SPECS, map_spec_mismatches
from tessera.lab.sandbox import SandboxFactory
from tessera.packet.addr import ip_from_str, mac_from_str

from .conftest import DEVICES

L2 = FlowKey.mask_of(["in_port", "eth_dst"])


# --- no root needed ---------------------------------------------------------------------


def test_actions_encode_decode_round_trip() -> None:
    acts = (
        SetEthSrc(mac_from_str("02:00:00:00:00:01")),
        SetEthDst(0x020000000002),
        DecTtl(2),
        Output(7),
        OutputTunnel(0xABCDEF, ip_from_str("198.18.0.2")),
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
                tp_src=0x1516, tp_dst=0x1718)  # fmt: skip
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


# --- root + toolchain ---------------------------------------------------------------------


@pytest.mark.root
def test_c_layout_matches_python(obj_cache: Path) -> None:
    obj = compile_object(SOURCE_DIR, obj_cache)
    assert layout_mismatches(object_btf(obj)) == []
    assert map_spec_mismatches(object_btf(obj)) == []
    assert compile_object(SOURCE_DIR, obj_cache) == obj  # cached by source hash


def _btf_type(btf: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    return next(t for t in btf["types"] if t.get("kind") == kind and t.get("name") == name)


@pytest.mark.root
def test_the_btf_check_catches_every_copied_enum_and_limit(obj_cache: Path) -> None:
    """ActionType, Stat and the FLOW_MAX_*/FLOOD_MAX_* limits are copied by hand from
    flow.h: a C edit without its Python twin must stop the load, whichever it is."""
    real = object_btf(compile_object(SOURCE_DIR, obj_cache))
    by_id = {t["id"]: t for t in real["types"]}

    def edited(edit: Callable[[dict[str, Any]], None]) -> list[str]:
        btf = copy.deepcopy(real)
        edit(btf)
        return layout_mismatches(btf) + map_spec_mismatches(btf)

    def renumber(enum: str, name: str) -> Callable[[dict[str, Any]], None]:
        def edit(btf: dict[str, Any]) -> None:
            for v in _btf_type(btf, "ENUM", enum)["values"]:
                if v["name"] == name:
                    v["val"] += 20

        return edit

    def resize(struct: str, member: str) -> Callable[[dict[str, Any]], None]:
        def edit(btf: dict[str, Any]) -> None:
            m = next(m for m in _btf_type(btf, "STRUCT", struct)["members"] if m["name"] == member)
            next(t for t in btf["types"] if t["id"] == m["type_id"])["nr_elems"] += 1

        return edit

    def max_entries(var: str) -> Callable[[dict[str, Any]], None]:
        def edit(btf: dict[str, Any]) -> None:
            struct = by_id[_btf_type(btf, "VAR", var)["type_id"]]
            m = next(m for m in struct["members"] if m["name"] == "max_entries")
            array_id = by_id[m["type_id"]]["type_id"]
            next(t for t in btf["types"] if t["id"] == array_id)["nr_elems"] *= 2

        return edit

    cases = {
        "ACT_FLOOD": renumber("flow_action_type", "ACT_FLOOD"),
        "STAT_FLOOD_MISSING": renumber("dp_stat", "STAT_FLOOD_MISSING"),
        "STAT_MAX": renumber("dp_stat", "STAT_MAX"),
        "FLOW_MAX_ACTIONS": resize("flow_value", "actions"),
        "FLOW_MAX_MASKS": resize("mask_list", "masks"),
        "FLOOD_MAX_OUTPUTS": resize("flood_set", "outputs"),
        "FLOW_MAX_ENTRIES": max_entries("flows"),
        "FLOOD_MAX_SETS": max_entries("flood_sets"),
        "PORT_MAX_ENTRIES": max_entries("ports"),
        "VNI_MAX_ENTRIES": max_entries("vni_ports"),
    }
    for what, edit in cases.items():
        assert edited(edit), f"a changed {what} went unnoticed"


@pytest.mark.root
def test_load_pins_maps_and_programs(pin_dir: Path, obj_cache: Path) -> None:
    with EbpfFastPath(pin_dir, cache_dir=obj_cache) as fp:
        assert sorted(p.name for p in (pin_dir / "maps").iterdir()) == sorted(MAP_SPECS)
        assert fp.prog_dir is not None
        assert sorted(p.name for p in fp.prog_dir.iterdir()) == sorted(PROGRAMS)
        for prog in PROGRAMS:
            fd = fp.prog_fd(prog)
            try:
                info = bpf.prog_info(fd)
            finally:
                os.close(fd)
            assert info.type == bpf.BPF_PROG_TYPE_SCHED_CLS and info.name == prog


def _prog_ids(fp: EbpfFastPath) -> dict[str, int]:
    ids = {}
    for prog in PROGRAMS:
        fd = fp.prog_fd(prog)
        try:
            ids[prog] = bpf.prog_info(fd).id
        finally:
            os.close(fd)
    return ids


def _map_ids(fp: EbpfFastPath) -> dict[str, int]:
    return {n: bpf.map_info(fp.maps.fd(n)).id for n in MAP_SPECS}


@pytest.mark.root
def test_restart_reuses_everything_and_keeps_flows(pin_dir: Path, obj_cache: Path) -> None:
    key = FlowKey.make(in_port=1, eth_dst="02:00:00:00:00:0b")
    with EbpfFastPath(pin_dir, cache_dir=obj_cache) as fp:
        fp.maps.flows.install(key, L2, [Output(5)], DEVICES)
        progs, maps = _prog_ids(fp), _map_ids(fp)
    with EbpfFastPath(pin_dir, cache_dir=obj_cache) as fp:  # same build: nothing loaded
        assert _prog_ids(fp) == progs and _map_ids(fp) == maps
        assert fp.maps.flows.get(key, L2) is not None
        assert fp.maps.flows.masks.refcount(0) == 1


@pytest.mark.root
def test_new_build_reuses_the_pinned_maps(pin_dir: Path, obj_cache: Path) -> None:
    key = FlowKey.make(in_port=1, eth_dst="02:00:00:00:00:0b")
    with EbpfFastPath(pin_dir, cache_dir=obj_cache) as fp:
        fp.maps.flows.install(key, L2, [Output(5)], DEVICES)
        progs, maps, old_dir = _prog_ids(fp), _map_ids(fp), fp.prog_dir
    with EbpfFastPath(pin_dir, cache_dir=obj_cache, cflags=["-DTESSERA_TEST_REBUILD=1"]) as fp:
        assert fp.prog_dir != old_dir and old_dir is not None and not old_dir.exists()
        new_progs = _prog_ids(fp)
        assert all(new_progs[p] != progs[p] for p in PROGRAMS)
        assert _map_ids(fp) == maps  # same kernel maps: flows survived the reload
        assert fp.maps.flows.get(key, L2) is not None


@pytest.mark.root
def test_an_incompatible_pinned_map_is_refused_not_recreated(
    pin_dir: Path, obj_cache: Path
) -> None:
    (pin_dir / "maps").mkdir(parents=True)
    spec = MAP_SPECS["flows"]
    fd = bpf.map_create(spec.type, spec.key_size, spec.value_size - 8, 16, spec.flags, "flows")
    try:
        bpf.obj_pin(fd, pin_dir / "maps" / "flows")
    finally:
        os.close(fd)
    with pytest.raises(LoadError, match=r"map flows: pinned .* refusing to recreate"):
        EbpfFastPath(pin_dir, cache_dir=obj_cache).load()
    fd = bpf.obj_get(pin_dir / "maps" / "flows")
    try:
        assert bpf.map_info(fd).max_entries == 16  # untouched
    finally:
        os.close(fd)


@pytest.mark.root
def test_attach_and_detach_are_idempotent(
    module_fastpath: EbpfFastPath, netns_factory: SandboxFactory
) -> None:
    ns = netns_factory("att")
    ns.ip("link", "add", "p0", "type", "veth", "peer", "name", "p1")
    fp = EbpfFastPath(module_fastpath.pin_dir, ns.path, cache_dir=module_fastpath.cache_dir).load()
    try:
        assert fp.attached("p0") is None
        fp.attach("p0")
        fp.attach("p0")
        first = fp.attached("p0")
        assert first is not None and first.prog_name == "port_ingress"
        fp.attach("p0", "inject")  # replaces, does not stack
        after = fp.attached("p0")
        assert after is not None and after.prog_name == "inject"
        out = ns.run("tc", "filter", "show", "dev", "p0", "ingress").stdout
        assert out.count("direct-action") == 1
        assert fp.detach("p0", remove_qdisc=True) is True
        assert fp.detach("p0") is False
        assert fp.detach("nonexistent0") is False
        with pytest.raises(LoadError, match="no device"):
            fp.bind_port("nonexistent0", 3)
    finally:
        fp.close()


@pytest.mark.root
def test_a_pin_dir_from_before_flood_sets_gets_the_new_map_and_keeps_its_flows(
    pin_dir: Path, obj_cache: Path
) -> None:
    key = FlowKey.make(in_port=1, eth_dst="02:00:00:00:00:0b")
    with EbpfFastPath(pin_dir, cache_dir=obj_cache) as fp:
        fp.maps.flows.install(key, L2, [Output(5)], DEVICES)
        maps = _map_ids(fp)
    (pin_dir / "maps" / "flood_sets").unlink()  # what an older build left behind
    with EbpfFastPath(pin_dir, cache_dir=obj_cache) as fp:
        assert (pin_dir / "maps" / "flood_sets").exists()
        now = _map_ids(fp)
        assert now["flood_sets"] != maps["flood_sets"]
        assert {n: i for n, i in now.items() if n != "flood_sets"} == {
            n: i for n, i in maps.items() if n != "flood_sets"
        }
        assert fp.maps.flows.get(key, L2) is not None
        fp.maps.flows.install(key, L2, [Output(i) for i in range(1, 21)], DEVICES)
        entry = fp.maps.flows.get(key, L2)
        assert entry is not None and entry.flood_set is not None
