"""Layout check, compile cache, pinning/reuse across restarts, tc attach."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.ebpf import DEVICES
from tessera.datapath.base import (
    Output,
)
from tessera.datapath.conntrack import CT_DEFAULT_ENTRIES, CT_F_UNREPLIED
from tessera.datapath.ebpf import bpf
from tessera.datapath.ebpf.layout import (
    CtKey,
    CtValue,
    FlowKey,
    layout_mismatches,
)
from tessera.datapath.ebpf.loader import (
    PROGRAMS,
    SOURCE_DIR,
    EbpfFastPath,
    LoadError,
    compile_object,
    object_btf,
)
from tessera.datapath.ebpf.maps import MAP_SPECS, map_spec_mismatches
from tessera.datapath.ebpf.maps.bpfmap import BpfMap
from tessera.datapath.ebpf.maps.conntrack import ConntrackMap
from tessera.lab.sandbox import SandboxFactory

L2 = FlowKey.mask_of(["in_port", "eth_dst"])


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


@pytest.mark.root
def test_the_connection_table_takes_the_size_asked_for_and_keeps_its_connections(
    pin_dir: Path, obj_cache: Path
) -> None:
    """A new table has the default size, or the one asked for; a pinned one of another
    size is replaced by one of the new size holding its connections, the programs
    reloaded to use it; what the old programs commit before they are replaced is
    copied by `finish_ct_resize` (merged with what the new table saw meanwhile)."""
    key = FlowKey.make(in_port=1, eth_dst="02:00:00:00:00:0b")
    older = (7, 6, 1, 2, 1000, 80)
    with EbpfFastPath(pin_dir, cache_dir=obj_cache) as fp:
        assert fp.maps.conntrack.map.info().max_entries == CT_DEFAULT_ENTRIES
    _rm_all(pin_dir)
    with EbpfFastPath(pin_dir, cache_dir=obj_cache, ct_entries=4096) as fp:
        assert fp.maps.conntrack.map.info().max_entries == 4096
        fp.maps.flows.install(key, L2, [Output(5)], DEVICES)
        for sport in range(1000, 1100):
            fp.maps.conntrack.commit((7, 6, 1, 2, sport, 80), 10_000 + sport, 0x02)
        progs, maps = _prog_ids(fp), _map_ids(fp)
        old = bpf.obj_get(pin_dir / "maps" / "conntrack")  # what old programs write
    try:
        # Kept as it is without a size, or with its own.
        for size in (None, 4096):
            with EbpfFastPath(pin_dir, cache_dir=obj_cache, ct_entries=size) as fp:
                assert not fp.ct_resized and _map_ids(fp) == maps and _prog_ids(fp) == progs
        fp = EbpfFastPath(pin_dir, cache_dir=obj_cache, ct_entries=8192).load()
        try:
            assert fp.ct_resized
            table = fp.maps.conntrack
            assert table.map.info().max_entries == 8192
            assert not (pin_dir / "maps" / "conntrack_resized").exists()
            assert _map_ids(fp)["conntrack"] != maps["conntrack"]
            assert {n: i for n, i in _map_ids(fp).items() if n != "conntrack"} == {
                n: i for n, i in maps.items() if n != "conntrack"
            }
            assert all(_prog_ids(fp)[p] != progs[p] for p in PROGRAMS)  # use the new one
            assert len(table.items()) == 100 and table.get(older) == (11_000, 0x02)
            assert fp.maps.flows.get(key, L2) is not None
            # Meanwhile: the old programs commit a new connection and see a FIN on an
            # old one; the new ones see a reply.
            old_table = ConntrackMap(BpfMap(os.dup(old), "conntrack", CtKey, CtValue))
            old_table.commit((7, 6, 1, 2, 2000, 80), 20_000, 0x02 | CT_F_UNREPLIED)
            old_table.commit(older, 30_000, 0x02 | 0x01)
            old_table.map.close()
            table.commit((7, 6, 1, 2, 1001, 80), 40_000, 0x12)
            assert fp.finish_ct_resize() == 101
            assert not fp.ct_resized and fp.finish_ct_resize() == 0
            assert table.get((7, 6, 1, 2, 2000, 80)) == (20_000, 0x02 | CT_F_UNREPLIED)
            assert table.get(older) == (30_000, 0x03)
            assert table.get((7, 6, 1, 2, 1001, 80)) == (40_000, 0x12)
        finally:
            fp.close()
    finally:
        os.close(old)
    with pytest.raises(ValueError, match="use 1024"):
        EbpfFastPath(pin_dir, cache_dir=obj_cache, ct_entries=10)


def _rm_all(pin_dir: Path) -> None:
    EbpfFastPath(pin_dir).purge()
