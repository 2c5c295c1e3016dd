"""Typed maps, mask slots and flood sets, on real kernel maps.

The maps are created unpinned with the program's exact specs, so these
tests need root but no compiler.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator

import pytest

from support.ebpf import DEVICES, PORTS
from tessera.datapath.base import Action, DecTtl, Drop, Output, OutputTunnel, SetEthSrc
from tessera.datapath.ebpf import bpf
from tessera.datapath.ebpf.actions import SLOT_SIZE, encode, flood_slot
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
    FlowMap,
    FlowTooLarge,
    MaskTable,
    MaskTableFull,
)
from tessera.packet.addr import ip_from_str, mac_from_str

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
    acts: list[Action] = [SetEthSrc(mac_from_str("02:00:00:00:ee:01")), DecTtl(2), Output(9)]
    maps.flows.install(key(), L2, acts, DEVICES)
    entry = maps.flows.get(key(ip="10.9.9.9"), L2)  # ip_dst is wildcarded by L2
    assert entry is not None
    assert entry.actions(PORTS) == tuple(acts) and entry.mask == L2 and entry.mask_index == 0
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
    flows.install(key(1), L2, [Drop()], DEVICES)
    written = bytes(masks.map.lookup(ctypes.c_uint32(0)) or b"")
    flows.delete(key(1), L2)
    assert masks.idle() == {0} and masks.index_of(L2) == 0
    assert bytes(masks.map.lookup(ctypes.c_uint32(0)) or b"") == written  # not rewritten
    clock.now += masks.grace / 2
    flows.install(key(2), L2, [Drop()], DEVICES)  # the same mask again: same slot, busy again
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
        flows.install(FlowKey.make(in_port=1), m, [Drop()], DEVICES)
    flows.delete(FlowKey.make(in_port=1), all_masks[3])
    assert masks.idle() == {3}
    extra = FlowKey.mask_of(["in_port", "ip_tos", "tp_dst", "ip_ttl", "eth_src"])
    flows.install(FlowKey.make(in_port=1), extra, [Drop()], DEVICES)
    assert masks.index_of(extra) == 3 and masks.index_of(all_masks[3]) is None


def test_mask_slots_are_refcounted_and_reused(maps: FastPathMaps) -> None:
    flows, masks = maps.flows, maps.flows.masks
    masks.grace = 0  # released with the last flow (the grace has its own test)
    flows.install(key(1), L2, [Drop()], DEVICES)
    flows.install(key(2), L2, [Drop()], DEVICES)
    flows.install(key(1), L2, [Output(3)], DEVICES)  # replace: no second reference
    flows.install(key(1), L3, [Drop()], DEVICES)
    assert (masks.index_of(L2), masks.index_of(L3)) == (0, 1)
    assert (masks.refcount(0), masks.refcount(1)) == (2, 1)

    flows.delete(key(1), L2)
    assert masks.index_of(L2) == 0
    flows.delete(key(2), L2)
    assert masks.index_of(L2) is None  # freed with its last flow
    kernel = maps.flows.masks.map.lookup(ctypes.c_uint32(0))
    assert kernel is not None and (kernel.count, kernel.active) == (2, 0b10)

    l4 = FlowKey.mask_of(["in_port", "tp_dst"])
    flows.install(FlowKey.make(in_port=1, tp_dst=53), l4, [Drop()], DEVICES)
    assert masks.index_of(l4) == 0  # lowest free slot
    flows.delete(key(1), L3)
    kernel = maps.flows.masks.map.lookup(ctypes.c_uint32(0))
    assert kernel is not None and (kernel.count, kernel.active) == (1, 0b1)  # tail trimmed


def test_mask_table_full(maps: FastPathMaps) -> None:
    fields = ["eth_src", "eth_dst", "vlan_id", "eth_type", "ip_src", "ip_dst", "ip_proto",
              "ip_tos", "ip_ttl", "ip_frag", "tp_src", "tp_dst"]  # fmt: skip
    for i in range(FLOW_MAX_MASKS):
        chosen = ["in_port"] + [f for b, f in enumerate(fields) if i >> b & 1]
        maps.flows.install(FlowKey.make(in_port=1), FlowKey.mask_of(chosen), [Drop()], DEVICES)
    with pytest.raises(MaskTableFull):
        maps.flows.install(
            FlowKey.make(in_port=1),
            FlowKey.mask_of(["in_port", "ip_tos", "tp_dst", "ip_ttl", "eth_src"]),
            [Drop()],
            DEVICES,
        )
    # A failed install leaves no slot behind.
    assert len(maps.flows.masks.active()) == FLOW_MAX_MASKS


def test_replacing_a_flow_keeps_its_counters(maps: FastPathMaps) -> None:
    maps.flows.install(key(), L2, [Output(3)], DEVICES)
    lk = FlowMap._lookup_key(0, key(), L2)
    v = maps.flows.map.lookup(lk)
    assert v is not None
    v.packets, v.bytes, v.last_used = 5, 500, 123
    maps.flows.map.update(lk, v)
    maps.flows.install(key(), L2, [Output(4)], DEVICES)
    e = maps.flows.get(key(), L2)
    assert e is not None and (e.packets, e.bytes, e.last_used_ns) == (5, 500, 123)
    assert e.actions(PORTS) == (Output(4),)


def test_packed_installs_refuse_keys_they_would_lose(maps: FastPathMaps) -> None:
    """The miss path's byte form: a key with bits outside its mask would be stored where
    no packet and no delete finds it, a short one would make the kernel read past it."""
    out3, _ = encode([Output(3)], DEVICES)
    maps.flows.install_packed(bytes(key().masked(L2)), bytes(L2), out3)
    assert maps.flows.get(key(), L2) is not None
    with pytest.raises(ValueError, match="outside its mask"):
        maps.flows.install_packed(bytes(key()), bytes(L2), out3)
    with pytest.raises(ValueError, match="bytes"):
        maps.flows.install_packed(bytes(key().masked(L2))[:-1], bytes(L2), out3)
    with pytest.raises(ValueError, match="do not fit a flow"):
        maps.flows.install_packed(bytes(key(port=2).masked(L2)), bytes(L2), out3[:-1])
    with pytest.raises(ValueError, match="flow_action"):
        maps.flows.install(key(port=2), L2, [Output(3)], {3: (1 << 32, False)})
    with pytest.raises(ValueError, match="not attached"):
        maps.flows.install(key(port=2), L2, [Output(3)], {})
    assert len(maps.flows) == 1 and maps.flows.masks.refcount(0) == 1
    with pytest.raises(ValueError, match="takes"):
        maps.flows.map.update_bytes(b"\0" * 8, b"\0" * 8)
    with pytest.raises(TypeError):
        bpf.map_update_bytes(maps.fd("flows"), bytearray(40), bytes(320))  # type: ignore[arg-type]


def test_reopening_rebuilds_refcounts_from_the_kernel(maps: FastPathMaps) -> None:
    maps.flows.install(key(1), L2, [Drop()], DEVICES)
    maps.flows.install(key(2), L2, [Drop()], DEVICES)
    maps.flows.install(key(1), L3, [Drop()], DEVICES)
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


def test_reopening_deletes_flows_of_inactive_slots(maps: FastPathMaps) -> None:
    maps.flows.install(key(1), L2, [Drop()], DEVICES)
    # A crash between writing a flow and its mask leaves a flow in slot 5.
    maps.flows.map.update(FlowLookupKey(mask_index=5, key=key()), FlowValue())
    assert len(maps.flows) == 2
    again = FlowMap(
        BpfMap(os.dup(maps.fd("flows")), "flows", FlowLookupKey, FlowValue),
        MaskTable(BpfMap(os.dup(maps.fd("masks")), "masks", ctypes.c_uint32, MaskList)),
        FloodSetTable(
            BpfMap(os.dup(maps.fd("flood_sets")), "flood_sets", ctypes.c_uint32, FloodSet)
        ),
    )
    try:
        assert [e.mask_index for e in again.entries()] == [0]
        assert again.masks.refcount(0) == 1
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
        maps.flows.install(key(i + 1), L2, [Drop()], DEVICES)
    assert len(maps.flows) == 300
    assert maps.flows.clear() == 300
    assert len(maps.flows) == 0


def test_walk_falls_back_without_batch_lookups(
    maps: FastPathMaps, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(50):
        maps.flows.install(key(i + 1), L2, [Drop()], DEVICES)
    batched = sorted(bytes(k) for k in maps.flows.map.collect_keys())

    def no_batch(*_a: object, **_k: object) -> tuple[int, bool]:
        raise bpf.BpfError(errno.EINVAL, bpf.BPF_MAP_LOOKUP_BATCH)

    monkeypatch.setattr(bpf, "map_lookup_batch", no_batch)
    assert sorted(bytes(k) for k in maps.flows.map.collect_keys()) == batched
    assert maps.ports.items() == {}


def test_conntrack_entries_read_back_as_written_across_chunks(
    maps: FastPathMaps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packed read (`struct` over the batch chunks) gives each field back, over more
    than one 512-entry chunk, and the same with a kernel that has no batch lookups."""
    written = {
        (7 + i % 3, 6 if i % 2 else 17, 0x0A000000 + i, 0xC0A80001, 1024 + i, 80 + i % 5): (
            10**12 + i,
            i % 64,
        )
        for i in range(1300)
    }
    for conn, (last, flags) in written.items():
        maps.conntrack.commit(conn, last, flags)
    assert maps.conntrack.items() == written
    parts = list(maps.conntrack.items_parts())  # the agent's sweep: a part per step
    assert len(parts) >= 3 and {k: v for p in parts for k, v in p.items()} == written

    def no_batch(*_a: object, **_k: object) -> tuple[int, bool]:
        raise bpf.BpfError(errno.EINVAL, bpf.BPF_MAP_LOOKUP_BATCH)

    monkeypatch.setattr(bpf, "map_lookup_batch", no_batch)
    assert maps.conntrack.items() == written
    assert list(maps.conntrack.items_parts()) == [written]  # one part, read one by one
    assert maps.conntrack.clear() == len(written)
    assert maps.conntrack.items() == {}


# --- flood sets ---------------------------------------------------------------------


def flood_set_of(flows: FlowMap, k: FlowKey) -> int:
    entry = flows.get(k, L2)
    assert entry is not None and entry.flood_set is not None
    return entry.flood_set


def outs(n: int, base: int = 100) -> list[Output | OutputTunnel]:
    """n outputs: local ports, and one tunnel per four so both kinds are exercised."""
    return [
        OutputTunnel(5000 + i, ip_from_str(f"198.18.0.{i + 1}")) if i % 4 == 3 else Output(base + i)
        for i in range(n)
    ]


def test_a_wide_flood_goes_into_a_flood_set_and_reads_back_unchanged(maps: FastPathMaps) -> None:
    flows = maps.flows
    acts = (SetEthSrc(mac_from_str("02:00:00:00:ee:01")), *outs(20))
    flows.install(key(1), L2, acts, DEVICES)
    entry = flows.get(key(1), L2)
    assert entry is not None and entry.actions(PORTS) == acts and entry.flood_set is not None
    # In the kernel: the rewrite inline, then one FLOOD naming a set with the 20 outputs.
    raw = flows.map.lookup(FlowLookupKey(mask_index=0, key=key(1).masked(L2)))
    assert raw is not None
    rewrite, _ = encode([SetEthSrc(mac_from_str("02:00:00:00:ee:01"))], DEVICES)
    assert raw.n_actions == 2
    assert bytes(raw.actions)[: 2 * SLOT_SIZE] == rewrite + flood_slot(entry.flood_set)
    assert len(flows.floods) == 1 and flows.floods.refcount(entry.flood_set) == 1
    # Twelve actions still go inline: no set for them.
    flows.install(key(2), L2, outs(FLOW_MAX_ACTIONS), DEVICES)
    e2 = flows.get(key(2), L2)
    assert e2 is not None and e2.flood_set is None and len(flows.floods) == 1


def test_flood_sets_are_shared_by_content_and_freed_with_their_last_flow(
    maps: FastPathMaps,
) -> None:
    flows, floods = maps.flows, maps.flows.floods
    flows.install(key(1), L2, outs(16), DEVICES)
    flows.install(key(2), L2, [DecTtl(), *outs(16)], DEVICES)  # other rewrites, same outputs
    flows.install(key(3), L2, outs(17), DEVICES)
    ids = {i: flood_set_of(flows, key(i)) for i in (1, 2, 3)}
    assert ids[1] == ids[2] != ids[3]
    assert (floods.refcount(ids[1]), floods.refcount(ids[3])) == (2, 1)
    assert len(floods.map.collect_keys()) == 2

    flows.install(key(3), L2, [Drop()], DEVICES)  # replaced by an inline flow: its set goes
    assert ids[3] not in {int(k.value) for k in floods.map.collect_keys()}
    assert flows.delete(key(1), L2)
    assert floods.refcount(ids[1]) == 1 and len(floods) == 1
    flows.install(key(2), L2, outs(16), DEVICES)  # same set again: must not be freed in between
    assert flows.get(key(2), L2).flood_set == ids[1]  # type: ignore[union-attr]
    assert flows.delete(key(2), L2)
    assert len(floods) == 0 and floods.map.collect_keys() == []

    flows.install(key(1), L2, outs(30), DEVICES)
    assert flows.clear() == 2 and floods.map.collect_keys() == []  # key 3 (Drop) and key 1


def test_a_flood_set_id_is_not_reused_at_once(maps: FastPathMaps) -> None:
    flows = maps.flows
    flows.install(key(1), L2, outs(13), DEVICES)
    first = flood_set_of(flows, key(1))
    flows.delete(key(1), L2)
    flows.install(key(1), L2, outs(14), DEVICES)
    assert flows.get(key(1), L2).flood_set != first  # type: ignore[union-attr]


def test_what_does_not_fit_raises_flow_too_large_and_leaks_nothing(maps: FastPathMaps) -> None:
    flows = maps.flows
    with pytest.raises(FlowTooLarge, match="at most 64"):
        flows.install(key(1), L2, outs(FLOOD_MAX_OUTPUTS + 1), DEVICES)
    # Outputs interleaved with rewrites: only the trailing run can go into a set.
    interleaved: list[Action] = []
    for o in outs(7):
        interleaved += [SetEthSrc(mac_from_str("02:00:00:00:ee:01")), o]
    with pytest.raises(FlowTooLarge):
        flows.install(key(1), L2, interleaved, DEVICES)
    with pytest.raises(TypeError):
        flows.floods.acquire(flood_slot(3))  # a set holds outputs only
    assert len(flows) == 0 and len(flows.floods) == 0 and flows.floods.map.collect_keys() == []
    flows.install(key(1), L2, outs(FLOOD_MAX_OUTPUTS), DEVICES)  # the limit itself fits
    assert flows.get(key(1), L2).actions(PORTS) == tuple(outs(FLOOD_MAX_OUTPUTS))  # type: ignore[union-attr]


def test_reopening_recounts_flood_sets_and_drops_unnamed_ones(maps: FastPathMaps) -> None:
    maps.flows.install(key(1), L2, outs(20), DEVICES)
    maps.flows.install(key(2), L2, outs(20), DEVICES)
    maps.flows.install(
        key(3), L2, [SetEthSrc(mac_from_str("02:00:00:00:ee:01")), *outs(25)], DEVICES
    )
    set_id = flood_set_of(maps.flows, key(1))
    # A set no flow names (a crash between writing the set and the flow).
    orphan = FloodSet()
    orphan.n_outputs = 1
    orphan.outputs[0].type = 4
    orphan.outputs[0].ifindex = 9
    maps.flows.floods.map.update(ctypes.c_uint32(4000), orphan)
    before = {e.key.in_port: e.slots for e in maps.flows.entries()}
    # Like an agent restart: fresh Python objects over the same kernel maps.
    again = FlowMap(
        BpfMap(os.dup(maps.fd("flows")), "flows", FlowLookupKey, FlowValue),
        MaskTable(BpfMap(os.dup(maps.fd("masks")), "masks", ctypes.c_uint32, MaskList)),
        FloodSetTable(
            BpfMap(os.dup(maps.fd("flood_sets")), "flood_sets", ctypes.c_uint32, FloodSet)
        ),
    )
    try:
        assert {e.key.in_port: e.slots for e in again.entries()} == before
        assert again.floods.refcount(set_id) == 2 and len(again.floods) == 2
        assert 4000 not in {int(k.value) for k in again.floods.map.collect_keys()}
        again.install(key(4), L2, outs(20), DEVICES)  # dedups against the adopted set
        assert again.get(key(4), L2).flood_set == set_id  # type: ignore[union-attr]
        for port in (1, 2, 4):
            assert again.delete(key(port), L2)
        assert set_id not in {int(k.value) for k in again.floods.map.collect_keys()}
    finally:
        again.map.close()
        again.masks.map.close()
        again.floods.map.close()
