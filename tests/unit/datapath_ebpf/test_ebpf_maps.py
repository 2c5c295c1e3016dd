"""Typed maps, mask slots and the reconciler, on real kernel maps.

The maps are created unpinned with the program's exact specs, so these
tests need root but no compiler.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Iterator

import pytest

from tessera.datapath.ebpf import bpf
from tessera.datapath.ebpf.actions import (
    Action,
    DecTtl,
    Drop,
    Flood,
    OutputLocal,
    OutputTunnel,
    SetEthSrc,
    decode_actions,
)
from tessera.datapath.ebpf.layout import (
    FLOOD_MAX_OUTPUTS,
    FLOW_MAX_ACTIONS,
    FLOW_MAX_MASKS,
    FloodSet,
    FlowKey,
    FlowLookupKey,
    FlowValue,
    MaskList,
    PortInfo,
    Stat,
)
from tessera.datapath.ebpf.maps import (
    BpfMap,
    FastPathMaps,
    FloodSetTable,
    Flow,
    FlowMap,
    FlowTooLarge,
    MaskTable,
    MaskTableFull,
)

pytestmark = pytest.mark.root

L2 = FlowKey.mask_of(["in_port", "eth_dst"])
L3 = FlowKey.mask_of(["in_port", "eth_dst", "ip_dst"])


@pytest.fixture
def maps() -> Iterator[FastPathMaps]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    m = FastPathMaps.create()
    try:
        yield m
    finally:
        m.close()


def key(port: int = 1, dst: str = "02:00:00:00:00:0b", ip: str = "10.0.0.2") -> FlowKey:
    return FlowKey.make(in_port=port, eth_dst=dst, ip_dst=ip, eth_type=0x800)


def test_install_get_delete_round_trip(maps: FastPathMaps) -> None:
    acts: list[Action] = [SetEthSrc("02:00:00:00:ee:01"), DecTtl(2), OutputLocal(9, peer=True)]
    maps.flows.install(key(), L2, acts)
    entry = maps.flows.get(key(ip="10.9.9.9"), L2)  # ip_dst is wildcarded by L2
    assert entry is not None
    assert entry.actions == tuple(acts) and entry.mask == L2 and entry.mask_index == 0
    assert entry.key == key().masked(L2)
    assert maps.flows.delete(key(), L2) is True
    assert maps.flows.delete(key(), L2) is False
    maps.flows.masks.gc()
    assert maps.flows.masks.active() == {}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_mask_slot_outlives_its_last_flow_for_the_grace_period(maps: FastPathMaps) -> None:
    """An invalidation that deletes a mask's last flow, then the next miss that brings
    the mask back, must not write the mask table twice."""
    flows, masks = maps.flows, maps.flows.masks
    clock = masks.clock = Clock()
    flows.install(key(1), L2, [Drop()])
    written = bytes(masks.map.lookup(ctypes.c_uint32(0)) or b"")
    flows.delete(key(1), L2)
    assert masks.idle() == {0} and masks.index_of(L2) == 0
    assert bytes(masks.map.lookup(ctypes.c_uint32(0)) or b"") == written  # not rewritten
    clock.now += masks.grace / 2
    flows.install(key(2), L2, [Drop()])  # the same mask again: same slot, busy again
    assert masks.idle() == set() and masks.refcount(0) == 1
    flows.delete(key(2), L2)
    clock.now += masks.grace
    flows.entries()  # the agent's periodic dump releases what waited long enough
    assert masks.active() == {} and masks.idle() == set()
    kernel = masks.map.lookup(ctypes.c_uint32(0))
    assert kernel is not None and (kernel.count, kernel.active) == (0, 0)


def test_a_new_mask_takes_an_idle_slot_when_none_is_free(maps: FastPathMaps) -> None:
    flows, masks = maps.flows, maps.flows.masks
    masks.clock = Clock()
    fields = ["eth_src", "eth_dst", "vlan_id", "eth_type", "ip_src", "ip_dst", "ip_proto",
              "ip_tos", "ip_ttl", "ip_frag", "tp_src", "tp_dst"]  # fmt: skip
    all_masks = [
        FlowKey.mask_of(["in_port"] + [f for b, f in enumerate(fields) if i >> b & 1])
        for i in range(FLOW_MAX_MASKS)
    ]
    for m in all_masks:
        flows.install(FlowKey.make(in_port=1), m, [Drop()])
    flows.delete(FlowKey.make(in_port=1), all_masks[3])
    assert masks.idle() == {3}
    extra = FlowKey.mask_of(["in_port", "ip_tos", "tp_dst", "ip_ttl", "eth_src"])
    flows.install(FlowKey.make(in_port=1), extra, [Drop()])
    assert masks.index_of(extra) == 3 and masks.index_of(all_masks[3]) is None


def test_mask_slots_are_refcounted_and_reused(maps: FastPathMaps) -> None:
    flows, masks = maps.flows, maps.flows.masks
    masks.grace = 0  # released with the last flow (the grace has its own test)
    flows.install(key(1), L2, [Drop()])
    flows.install(key(2), L2, [Drop()])
    flows.install(key(1), L2, [OutputLocal(3)])  # replace: no second reference
    flows.install(key(1), L3, [Drop()])
    assert (masks.index_of(L2), masks.index_of(L3)) == (0, 1)
    assert (masks.refcount(0), masks.refcount(1)) == (2, 1)

    flows.delete(key(1), L2)
    assert masks.index_of(L2) == 0
    flows.delete(key(2), L2)
    assert masks.index_of(L2) is None  # freed with its last flow
    kernel = maps.flows.masks.map.lookup(ctypes.c_uint32(0))
    assert kernel is not None and (kernel.count, kernel.active) == (2, 0b10)

    l4 = FlowKey.mask_of(["in_port", "tp_dst"])
    flows.install(FlowKey.make(in_port=1, tp_dst=53), l4, [Drop()])
    assert masks.index_of(l4) == 0  # lowest free slot
    flows.delete(key(1), L3)
    kernel = maps.flows.masks.map.lookup(ctypes.c_uint32(0))
    assert kernel is not None and (kernel.count, kernel.active) == (1, 0b1)  # tail trimmed


def test_mask_table_full(maps: FastPathMaps) -> None:
    fields = ["eth_src", "eth_dst", "vlan_id", "eth_type", "ip_src", "ip_dst", "ip_proto",
              "ip_tos", "ip_ttl", "ip_frag", "tp_src", "tp_dst"]  # fmt: skip
    for i in range(FLOW_MAX_MASKS):
        chosen = ["in_port"] + [f for b, f in enumerate(fields) if i >> b & 1]
        maps.flows.install(FlowKey.make(in_port=1), FlowKey.mask_of(chosen), [Drop()])
    with pytest.raises(MaskTableFull):
        maps.flows.install(
            FlowKey.make(in_port=1),
            FlowKey.mask_of(["in_port", "ip_tos", "tp_dst", "ip_ttl", "eth_src"]),
            [Drop()],
        )
    # A failed install leaves no slot behind.
    assert len(maps.flows.masks.active()) == FLOW_MAX_MASKS


def test_replacing_a_flow_keeps_its_counters(maps: FastPathMaps) -> None:
    maps.flows.install(key(), L2, [OutputLocal(3)])
    lk = FlowMap._lookup_key(0, key(), L2)
    v = maps.flows.map.lookup(lk)
    assert v is not None
    v.packets, v.bytes, v.last_used = 5, 500, 123
    maps.flows.map.update(lk, v)
    maps.flows.install(key(), L2, [OutputLocal(4)])
    e = maps.flows.get(key(), L2)
    assert e is not None and (e.packets, e.bytes, e.last_used_ns) == (5, 500, 123)
    assert e.actions == (OutputLocal(4),)


def test_packed_installs_refuse_keys_they_would_lose(maps: FastPathMaps) -> None:
    """The miss path's byte form: a key with bits outside its mask would be stored where
    no packet and no delete finds it, a short one would make the kernel read past it."""
    maps.flows.install_packed(bytes(key().masked(L2)), bytes(L2), [OutputLocal(3)])
    assert maps.flows.get(key(), L2) is not None
    with pytest.raises(ValueError, match="outside its mask"):
        maps.flows.install_packed(bytes(key()), bytes(L2), [OutputLocal(3)])
    with pytest.raises(ValueError, match="bytes"):
        maps.flows.install_packed(bytes(key().masked(L2))[:-1], bytes(L2), [OutputLocal(3)])
    with pytest.raises(ValueError, match="flow_action"):
        maps.flows.install_packed(bytes(key(port=2).masked(L2)), bytes(L2), [OutputLocal(1 << 32)])
    assert len(maps.flows) == 1 and maps.flows.masks.refcount(0) == 1
    with pytest.raises(ValueError, match="takes"):
        maps.flows.map.update_bytes(b"\0" * 8, b"\0" * 8)
    with pytest.raises(TypeError):
        bpf.map_update_bytes(maps.fd("flows"), bytearray(40), bytes(320))  # type: ignore[arg-type]


def test_reconcile_installs_updates_and_prunes(maps: FastPathMaps) -> None:
    flows = maps.flows
    flows.install(key(1), L2, [OutputLocal(1)])  # stays as is
    flows.install(key(2), L2, [OutputLocal(2)])  # changes
    flows.install(key(3), L3, [OutputLocal(3)])  # goes away, with its mask
    desired = [
        Flow(key(1), L2, (OutputLocal(1),)),
        Flow(key(2), L2, (OutputLocal(22),)),
        Flow(key(4), L2, (OutputTunnel(7, "198.18.0.9"),)),
    ]
    result = flows.reconcile(desired)
    assert (result.added, result.updated, result.unchanged, result.removed) == (1, 1, 1, 1)
    got = {(e.key.in_port, e.actions) for e in flows.entries()}
    assert got == {
        (1, (OutputLocal(1),)),
        (2, (OutputLocal(22),)),
        (4, (OutputTunnel(7, "198.18.0.9"),)),
    }
    assert flows.masks.active() == {0: L2}
    # Reconciling the same desired state again changes nothing.
    again = flows.reconcile(desired)
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 3)


def test_reconcile_prunes_orphans_of_inactive_slots(maps: FastPathMaps) -> None:
    # A crash between writing a flow and its mask leaves a flow in slot 5.
    maps.flows.map.update(FlowLookupKey(mask_index=5, key=key()), FlowValue())
    assert maps.flows.reconcile([]).removed == 1
    assert len(maps.flows) == 0


def test_reopening_rebuilds_refcounts_from_the_kernel(maps: FastPathMaps) -> None:
    maps.flows.install(key(1), L2, [Drop()])
    maps.flows.install(key(2), L2, [Drop()])
    maps.flows.install(key(1), L3, [Drop()])
    # Like an agent restart: fresh Python objects over the same kernel maps.
    again = FlowMap(
        BpfMap(
            os.dup(maps.fd("flows")), "flows", maps.flows.map.key_type, maps.flows.map.value_type
        ),
        MaskTable(
            BpfMap(
                os.dup(maps.fd("masks")),
                "masks",
                maps.flows.masks.map.key_type,
                maps.flows.masks.map.value_type,
            )
        ),
        FloodSetTable(
            BpfMap(os.dup(maps.fd("flood_sets")), "flood_sets", ctypes.c_uint32, FloodSet)
        ),
    )
    try:
        assert again.masks.active() == {0: L2, 1: L3}
        assert (again.masks.refcount(0), again.masks.refcount(1)) == (2, 1)
        assert again.delete(key(1), L3) and again.masks.idle() == {1}
        again.masks.gc()
        assert again.masks.index_of(L3) is None
    finally:
        again.map.close()
        again.masks.map.close()
        again.floods.map.close()


def test_small_maps(maps: FastPathMaps) -> None:
    maps.ports.set(12, 3)
    assert maps.ports.get(12) == 3 and maps.ports.items() == {12: 3}
    with pytest.raises(ValueError):
        maps.ports.set(13, 4096)  # does not fit the miss tag
    maps.vni_ports.set(70001, 12, peer=True)
    assert maps.vni_ports.get(70001) == (12, True)
    cfg = maps.config.set(miss_ifindex=4)
    cfg = maps.config.set(vxlan_ifindex=5)
    assert (cfg.miss_ifindex, cfg.vxlan_ifindex) == (4, 5)
    assert set(maps.stats.read()) == set(Stat) and not any(maps.stats.read().values())


def test_errors_name_the_command_and_errno(maps: FastPathMaps) -> None:
    with pytest.raises(bpf.BpfError, match=r"BPF_OBJ_GET.*ENOENT"):
        bpf.obj_get("/sys/fs/bpf/tst-does-not-exist")
    maps.ports.set(1, 1)
    with pytest.raises(bpf.BpfError, match=r"BPF_MAP_UPDATE_ELEM\) on ports: EEXIST") as exc:
        maps.ports.map.update(ctypes.c_uint32(1), PortInfo(port_no=2), bpf.BPF_NOEXIST)
    assert exc.value.errno == errno.EEXIST


def test_walk_collects_keys_before_deleting(maps: FastPathMaps) -> None:
    for i in range(300):
        maps.flows.install(key(i + 1), L2, [Drop()])
    assert len(maps.flows) == 300
    assert maps.flows.clear() == 300
    assert len(maps.flows) == 0


def test_walk_falls_back_without_batch_lookups(
    maps: FastPathMaps, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(50):
        maps.flows.install(key(i + 1), L2, [Drop()])
    batched = sorted(bytes(k) for k in maps.flows.map.collect_keys())

    def no_batch(*_a: object, **_k: object) -> tuple[int, bool]:
        raise bpf.BpfError(errno.EINVAL, bpf.BPF_MAP_LOOKUP_BATCH)

    monkeypatch.setattr(bpf, "map_lookup_batch", no_batch)
    assert sorted(bytes(k) for k in maps.flows.map.collect_keys()) == batched
    assert maps.ports.items() == {}


def test_reconcile_cost_grows_linearly(maps: FastPathMaps) -> None:
    """Relative check (faucet#2809 style): 10x the flows may cost at most
    25x the time, so an accidental O(n^2) shows up here first."""

    def run(n: int) -> float:
        maps.flows.clear()
        desired = [
            Flow(key(1, ip=f"10.{i >> 8 & 255}.{i & 255}.1"), L3, (Drop(),)) for i in range(n)
        ]
        maps.flows.reconcile(desired)
        start = time.perf_counter()
        maps.flows.reconcile(desired)  # all unchanged: one walk + compare
        return time.perf_counter() - start

    small = min(run(200) for _ in range(3))
    large = min(run(2000) for _ in range(2))
    assert large < 25 * small, (small, large)


# --- flood sets ---------------------------------------------------------------------


def outs(n: int, base: int = 100) -> list[OutputLocal | OutputTunnel]:
    """n outputs: local ports, and one tunnel per four so both kinds are exercised."""
    return [
        OutputTunnel(5000 + i, f"198.18.0.{i + 1}") if i % 4 == 3 else OutputLocal(base + i)
        for i in range(n)
    ]


def test_a_wide_flood_goes_into_a_flood_set_and_reads_back_unchanged(maps: FastPathMaps) -> None:
    flows = maps.flows
    acts = (SetEthSrc("02:00:00:00:ee:01"), *outs(20))
    flows.install(key(1), L2, acts)
    entry = flows.get(key(1), L2)
    assert entry is not None and entry.actions == acts and entry.flood_set is not None
    # In the kernel: the rewrite inline, then one FLOOD naming a set with the 20 outputs.
    raw = flows.map.lookup(FlowLookupKey(mask_index=0, key=key(1).masked(L2)))
    assert raw is not None
    assert decode_actions(raw) == (SetEthSrc("02:00:00:00:ee:01"), Flood(entry.flood_set))
    assert len(flows.floods) == 1 and flows.floods.refcount(entry.flood_set) == 1
    # Twelve actions still go inline: no set for them.
    flows.install(key(2), L2, outs(FLOW_MAX_ACTIONS))
    e2 = flows.get(key(2), L2)
    assert e2 is not None and e2.flood_set is None and len(flows.floods) == 1


def test_flood_sets_are_shared_by_content_and_freed_with_their_last_flow(
    maps: FastPathMaps,
) -> None:
    flows, floods = maps.flows, maps.flows.floods
    flows.install(key(1), L2, outs(16))
    flows.install(key(2), L2, [DecTtl(), *outs(16)])  # other rewrites, same outputs
    flows.install(key(3), L2, outs(17))
    ids = {i: flows.get(key(i), L2).flood_set for i in (1, 2, 3)}  # type: ignore[union-attr]
    assert ids[1] == ids[2] != ids[3]
    assert (floods.refcount(ids[1]), floods.refcount(ids[3])) == (2, 1)
    assert len(floods.map.collect_keys()) == 2

    flows.install(key(3), L2, [Drop()])  # replaced by an inline flow: its set goes
    assert ids[3] not in {int(k.value) for k in floods.map.collect_keys()}
    assert flows.delete(key(1), L2)
    assert floods.refcount(ids[1]) == 1 and len(floods) == 1
    flows.install(key(2), L2, outs(16))  # same set again: must not be freed in between
    assert flows.get(key(2), L2).flood_set == ids[1]  # type: ignore[union-attr]
    assert flows.delete(key(2), L2)
    assert len(floods) == 0 and floods.map.collect_keys() == []

    flows.install(key(1), L2, outs(30))
    assert flows.clear() == 2 and floods.map.collect_keys() == []  # key 3 (Drop) and key 1


def test_a_flood_set_id_is_not_reused_at_once(maps: FastPathMaps) -> None:
    flows = maps.flows
    flows.install(key(1), L2, outs(13))
    first = flows.get(key(1), L2).flood_set  # type: ignore[union-attr]
    flows.delete(key(1), L2)
    flows.install(key(1), L2, outs(14))
    assert flows.get(key(1), L2).flood_set != first  # type: ignore[union-attr]


def test_what_does_not_fit_raises_flow_too_large_and_leaks_nothing(maps: FastPathMaps) -> None:
    flows = maps.flows
    with pytest.raises(FlowTooLarge, match="at most 64"):
        flows.install(key(1), L2, outs(FLOOD_MAX_OUTPUTS + 1))
    # Outputs interleaved with rewrites: only the trailing run can go into a set.
    interleaved: list[Action] = []
    for o in outs(7):
        interleaved += [SetEthSrc("02:00:00:00:ee:01"), o]
    with pytest.raises(FlowTooLarge):
        flows.install(key(1), L2, interleaved)
    with pytest.raises(TypeError):
        flows.install(key(1), L2, [Flood(3)])
    assert len(flows) == 0 and len(flows.floods) == 0 and flows.floods.map.collect_keys() == []
    flows.install(key(1), L2, outs(FLOOD_MAX_OUTPUTS))  # the limit itself fits
    assert flows.get(key(1), L2).actions == tuple(outs(FLOOD_MAX_OUTPUTS))  # type: ignore[union-attr]


def test_reconcile_keeps_shares_and_prunes_flood_sets(maps: FastPathMaps) -> None:
    flows = maps.flows
    flows.install(key(1), L2, outs(20))
    flows.install(key(2), L2, outs(21))
    desired = [
        Flow(key(1), L2, tuple(outs(20))),  # unchanged: not rewritten
        Flow(key(3), L2, tuple(outs(20))),  # new, shares key 1's set
        Flow(key(4), L2, tuple(outs(FLOOD_MAX_OUTPUTS + 1))),  # cannot be installed
    ]
    kept = flows.get(key(1), L2).flood_set  # type: ignore[union-attr]
    result = flows.reconcile(desired)
    assert (result.unchanged, result.added, result.removed) == (1, 1, 1)
    assert len(result.errors) == 1 and "at most 64" in result.errors[0]
    assert flows.get(key(3), L2).flood_set == kept  # type: ignore[union-attr]
    assert {int(k.value) for k in flows.floods.map.collect_keys()} == {kept}
    assert flows.floods.refcount(kept) == 2
    again = flows.reconcile(desired[:2])
    assert (again.unchanged, again.added, again.removed) == (2, 0, 0)
    assert flows.reconcile([]).removed == 2 and flows.floods.map.collect_keys() == []


def test_reopening_recounts_flood_sets_and_drops_unnamed_ones(maps: FastPathMaps) -> None:
    maps.flows.install(key(1), L2, outs(20))
    maps.flows.install(key(2), L2, outs(20))
    maps.flows.install(key(3), L2, [SetEthSrc("02:00:00:00:ee:01"), *outs(25)])
    set_id = maps.flows.get(key(1), L2).flood_set  # type: ignore[union-attr]
    # A set no flow names (a crash between writing the set and the flow).
    orphan = FloodSet()
    orphan.n_outputs = 1
    orphan.outputs[0].type = 4
    orphan.outputs[0].ifindex = 9
    maps.flows.floods.map.update(ctypes.c_uint32(4000), orphan)
    before = {e.key.in_port: e.actions for e in maps.flows.entries()}
    # Like an agent restart: fresh Python objects over the same kernel maps.
    again = FlowMap(
        BpfMap(os.dup(maps.fd("flows")), "flows", FlowLookupKey, FlowValue),
        MaskTable(BpfMap(os.dup(maps.fd("masks")), "masks", ctypes.c_uint32, MaskList)),
        FloodSetTable(
            BpfMap(os.dup(maps.fd("flood_sets")), "flood_sets", ctypes.c_uint32, FloodSet)
        ),
    )
    try:
        assert {e.key.in_port: e.actions for e in again.entries()} == before
        assert again.floods.refcount(set_id) == 2 and len(again.floods) == 2
        assert 4000 not in {int(k.value) for k in again.floods.map.collect_keys()}
        again.install(key(4), L2, outs(20))  # dedups against the adopted set
        assert again.get(key(4), L2).flood_set == set_id  # type: ignore[union-attr]
        for port in (1, 2, 4):
            assert again.delete(key(port), L2)
        assert set_id not in {int(k.value) for k in again.floods.map.collect_keys()}
    finally:
        again.map.close()
        again.masks.map.close()
        again.floods.map.close()
