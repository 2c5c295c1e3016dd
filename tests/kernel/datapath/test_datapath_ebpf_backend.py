"""The eBPF backend behind the common interface, with real traffic between namespaces.

What is checked here is the translation layer (ports ↔ ifindexes, `Match` ↔ kernel key,
actions both ways), the miss/reinject round trip, restart adoption of pinned state,
VXLAN between an eBPF host and another eBPF host or a userspace host, and the agent's
reconciler (`sweep`) against the kernel maps. The C program
itself is tested in tests/kernel/ebpf; the key and mask translation without a kernel
in tests/unit/datapath/test_ebpf_encoding.py.
"""

from __future__ import annotations

import errno
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dp_netns import ping, tcp_transfer

from support.ebpf import toolchain_missing
from tessera.agent.flowtable import DesiredFlow, FlowTable
from tessera.agent.lifecycle import sweep
from tessera.agent.metrics import AgentMetrics
from tessera.datapath import links
from tessera.datapath.base import (
    Action,
    Datapath,
    DatapathError,
    DecTtl,
    Flow,
    Match,
    Output,
    OutputTunnel,
    SetEthDst,
    SetEthSrc,
)
from tessera.datapath.ebpf import bpf
from tessera.datapath.ebpf.loader import BPFFS, ensure_bpffs
from tessera.datapath.ebpf.maps import FlowMap
from tessera.datapath.ebpf_backend import EbpfDatapath, to_kernel
from tessera.datapath.userspace import UserspaceDatapath
from tessera.lab.sandbox import Sandbox, SandboxFactory, cable_vm
from tessera.packet import Ethernet
from tessera.packet.addr import ip_from_str, mac_from_str

pytestmark = pytest.mark.root

MAC1, MAC2 = "02:00:00:00:01:01", "02:00:00:00:01:02"


@pytest.fixture
def made(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[tuple[Sandbox | None, Datapath]]]:
    reason = toolchain_missing()
    if reason:
        pytest.skip(reason)
    out: list[tuple[Sandbox | None, Datapath]] = []
    yield out
    for ns, dp in out:
        if ns is not None:
            ns.call(dp.close)
        else:
            dp.close()
        if isinstance(dp, EbpfDatapath):
            dp.fastpath.purge()


@pytest.fixture(scope="module")
def obj_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bpf-cache")


def _ebpf(ns: Sandbox, obj_cache: Path, vxlan: str | None = None) -> EbpfDatapath:
    ensure_bpffs()
    dp = EbpfDatapath(
        BPFFS / f"tsd-{secrets.token_hex(4)}", cache_dir=obj_cache, vxlan_ifname=vxlan
    )
    try:
        ns.call(dp.start)
    except BaseException:
        dp.fastpath.purge()  # a failed start leaves no pins behind either
        raise
    return dp


def _l2(dp: Datapath, a: int, b: int) -> None:
    for src, dst, mac in ((a, b, MAC2), (b, a, MAC1)):
        dp.install(Flow(Match.of(in_port=src, eth_dst=mac_from_str(mac)), (Output(dst),)))
        dp.install(Flow(Match.of(in_port=src, eth_dst=0xFFFF_FFFF_FFFF), (Output(dst),)))


def test_misses_reinject_flows_counters_and_tcp(
    netns: SandboxFactory, made: list[tuple[Sandbox | None, Datapath]], obj_cache: Path
) -> None:
    host, vm1, vm2 = netns("host"), netns("vm1"), netns("vm2")
    cable_vm(host, "tap1", vm1, MAC1, "10.9.0.1/24")
    cable_vm(host, "tap2", vm2, MAC2, "10.9.0.2/24")
    dp = _ebpf(host, obj_cache)
    made.append((host, dp))
    host.call(lambda: dp.add_port(1, "tap1", 11))
    host.call(lambda: dp.add_port(2, "tap2", 12))
    assert {n: (b.ifname, b.tunnel_key) for n, b in dp.ports().items()} == {
        1: ("tap1", 11), 2: ("tap2", 12),
    }  # fmt: skip
    vm1.ip("neigh", "add", "10.9.0.2", "lladdr", MAC2, "dev", "eth0")
    vm2.ip("neigh", "add", "10.9.0.1", "lladdr", MAC1, "dev", "eth0")

    proc = vm1.popen("ping", "-c", "1", "-W", "3", "10.9.0.2")
    misses = []
    deadline = time.monotonic() + 3
    while not misses and time.monotonic() < deadline:
        misses = [m for m in dp.recv_misses(0.2) if m.port == 1]
    assert misses, "the first packet must reach the agent as a miss from port 1"
    # Act as the agent: install, then reinject the missed packet.
    _l2(dp, 1, 2)
    for m in misses:
        dp.reinject(m)
    assert proc.wait(timeout=10) == 0, "the reinjected ping must be answered"

    assert ping(vm1, "10.9.0.2")
    assert tcp_transfer(vm2, "10.9.0.2", vm1, 3_000_000) == "ok"
    match = Match.of(in_port=1, eth_dst=mac_from_str(MAC2))
    stats = dp.stats(match)
    assert stats is not None and stats.packets > 10 and stats.last_used is not None
    assert abs(time.monotonic() - stats.last_used) < 5
    assert dp.dump()[match].flow.actions == (Output(2),)
    assert dp.delete(match) and dp.stats(match) is None


def test_rewrites_and_ttl_in_the_kernel(
    netns: SandboxFactory, made: list[tuple[Sandbox | None, Datapath]], obj_cache: Path
) -> None:
    host, vm1, vm2 = netns("host"), netns("vm1"), netns("vm2")
    cable_vm(host, "tap1", vm1, MAC1, "10.9.1.2/24")
    cable_vm(host, "tap2", vm2, MAC2, "10.9.2.2/24")
    vm1.ip("route", "add", "default", "via", "10.9.1.1")
    vm2.ip("route", "add", "default", "via", "10.9.2.1")
    gw1, gw2 = "02:7e:00:00:00:01", "02:7e:00:00:00:02"
    vm1.ip("neigh", "add", "10.9.1.1", "lladdr", gw1, "dev", "eth0")
    vm2.ip("neigh", "add", "10.9.2.1", "lladdr", gw2, "dev", "eth0")
    dp = _ebpf(host, obj_cache)
    made.append((host, dp))
    host.call(lambda: dp.add_port(1, "tap1"))
    host.call(lambda: dp.add_port(2, "tap2"))
    # A router in two flows: MACs rewritten, TTL decremented by the kernel.
    for src, dst, router_mac, vm_mac in ((1, 2, gw2, MAC2), (2, 1, gw1, MAC1)):
        actions = (
            SetEthSrc(mac_from_str(router_mac)), SetEthDst(mac_from_str(vm_mac)), DecTtl(1),
            Output(dst),
        )  # fmt: skip
        dp.install(Flow(Match.of(in_port=src, eth_type=0x0800), actions))
    out = vm1.run("ping", "-c", "2", "-i", "0.2", "-W", "2", "10.9.2.2", check=False)
    assert out.returncode == 0, out.stdout
    assert "ttl=63" in out.stdout
    assert tcp_transfer(vm2, "10.9.2.2", vm1, 1_000_000) == "ok"


def test_a_restart_adopts_ports_and_flows_and_never_stops_forwarding(
    netns: SandboxFactory, made: list[tuple[Sandbox | None, Datapath]], obj_cache: Path
) -> None:
    host, vm1, vm2 = netns("host"), netns("vm1"), netns("vm2")
    cable_vm(host, "tap1", vm1, MAC1, "10.9.0.1/24")
    cable_vm(host, "tap2", vm2, MAC2, "10.9.0.2/24")
    dp = _ebpf(host, obj_cache)
    host.call(lambda: dp.add_port(1, "tap1", 11))
    host.call(lambda: dp.add_port(2, "tap2", 12))
    _l2(dp, 1, 2)
    before = dp.dump()
    pin_dir = dp.fastpath.pin_dir
    host.call(dp.close)  # the agent is gone ...
    assert ping(vm1, "10.9.0.2")  # ... the kernel still forwards
    again = EbpfDatapath(pin_dir, cache_dir=obj_cache, vxlan_ifname=None)
    made.append((host, again))
    host.call(again.start)
    assert {n: (b.ifname, b.tunnel_key) for n, b in again.ports().items()} == {
        1: ("tap1", 11), 2: ("tap2", 12),
    }  # fmt: skip
    assert {m: i.flow for m, i in again.dump().items()} == {m: i.flow for m, i in before.items()}
    assert ping(vm1, "10.9.0.2")


def _vxlan_host(ns: Sandbox) -> None:
    ns.call(lambda: links.ensure_vxlan("vxlan0", "ul0"))


def test_vxlan_between_ebpf_hosts_and_with_a_userspace_host(
    netns: SandboxFactory, made: list[tuple[Sandbox | None, Datapath]], obj_cache: Path
) -> None:
    h1, h2, h3 = netns("h1"), netns("h2"), netns("h3")
    vm1, vm2, vm3 = netns("vm1"), netns("vm2"), netns("vm3")
    h1.ip("link", "add", "br-ul", "type", "bridge")  # one underlay segment for 3 hosts
    h1.ip("link", "set", "br-ul", "up")
    for i, h in enumerate((h1, h2, h3), start=1):
        if h is h1:
            h1.ip("link", "add", "ul0", "mtu", "1600", "type", "veth", "peer", "name", "ulp1")
            h1.ip("link", "set", "ulp1", "master", "br-ul", "mtu", "1600", "up")
        else:
            h1.ip("link", "add", f"ulp{i}", "mtu", "1600", "type", "veth", "peer", "name", "ul0",
                  "netns", h.name)  # fmt: skip
            h1.ip("link", "set", f"ulp{i}", "master", "br-ul", "up")
        h.ip("addr", "add", f"198.18.0.{i}/24", "dev", "ul0")
        h.ip("link", "set", "ul0", "mtu", "1600", "up")
    macs = {1: "02:00:00:00:03:01", 2: "02:00:00:00:03:02", 3: "02:00:00:00:03:03"}
    for i, (h, vm) in enumerate(((h1, vm1), (h2, vm2), (h3, vm3)), start=1):
        cable_vm(h, "tap1", vm, macs[i], f"10.9.0.{i}/24")
        for j in (1, 2, 3):
            if j != i:
                vm.ip("neigh", "add", f"10.9.0.{j}", "lladdr", macs[j], "dev", "eth0")
    _vxlan_host(h1)
    _vxlan_host(h2)
    dp1, dp2 = _ebpf(h1, obj_cache, "vxlan0"), _ebpf(h2, obj_cache, "vxlan0")
    dp3 = UserspaceDatapath("198.18.0.3")
    h3.call(dp3.start)
    made += [(h1, dp1), (h2, dp2), (h3, dp3)]
    for h, dp, vni in ((h1, dp1, 101), (h2, dp2, 102), (h3, dp3, 103)):
        h.call(lambda dp=dp, vni=vni: dp.add_port(1, "tap1", vni))
    vnis = {1: 101, 2: 102, 3: 103}
    for i, dp in ((1, dp1), (2, dp2), (3, dp3)):
        for j in (1, 2, 3):
            if j != i:
                remote = OutputTunnel(vnis[j], ip_from_str(f"198.18.0.{j}"))
                dp.install(Flow(Match.of(in_port=1, eth_dst=mac_from_str(macs[j])), (remote,)))
    assert ping(vm1, "10.9.0.2"), "eBPF to eBPF"
    assert ping(vm1, "10.9.0.3"), "eBPF to userspace"
    assert ping(vm3, "10.9.0.2"), "userspace to eBPF"
    assert tcp_transfer(vm2, "10.9.0.2", vm1, 2_000_000) == "ok"
    assert tcp_transfer(vm3, "10.9.0.3", vm2, 1_000_000) == "ok"

    # A generated packet sent from userspace into the tunnel arrives as well.
    got = vm2.popen(
        "timeout",
        "3",
        "tcpdump",
        "-c",
        "1",
        "-nn",
        "-i",
        "eth0",
        "ether",
        "src",
        "02:aa:00:00:00:01",
    )
    time.sleep(0.5)
    frame = Ethernet(mac_from_str(macs[2]), mac_from_str("02:aa:00:00:00:01"), 0x88B5, b"x" * 46)
    dp1.execute(frame.build(), [OutputTunnel(102, ip_from_str("198.18.0.2"))])
    assert got.wait(timeout=10) == 0


def _flood_host(
    netns: SandboxFactory, obj_cache: Path, n_local: int
) -> tuple[Sandbox, EbpfDatapath]:
    host = netns("host")
    dp = _ebpf(host, obj_cache)
    for i in range(1, n_local + 1):
        host.ip("link", "add", f"p{i}", "type", "veth", "peer", "name", f"q{i}")
        host.ip("link", "set", f"p{i}", "up")
        host.call(lambda i=i: dp.add_port(i, f"p{i}"))
    return host, dp


def _flood_actions(n_local: int, n_remote: int) -> tuple[Action, ...]:
    """A bridge flood: a rewrite, every local port, then one tunnel per remote host."""
    remote = [OutputTunnel(9000 + j, ip_from_str(f"198.18.1.{j + 1}")) for j in range(n_remote)]
    return (SetEthSrc(mac_from_str(MAC1)), *(Output(i) for i in range(2, n_local + 1)), *remote)


def test_a_flood_wider_than_the_action_list_installs_and_dumps_unchanged(
    netns: SandboxFactory, made: list[tuple[Sandbox | None, Datapath]], obj_cache: Path
) -> None:
    host, dp = _flood_host(netns, obj_cache, 8)
    made.append((host, dp))
    match = Match.of(in_port=1, eth_dst=0xFFFF_FFFF_FFFF)
    actions = _flood_actions(8, 13)
    assert len(actions) == 21  # 7 local + 13 tunnels + the rewrite
    dp.install(Flow(match, actions))
    assert dp.dump()[match].flow.actions == actions
    # Another source port with the same outputs shares the kernel's flood set.
    other = Match.of(in_port=8, eth_dst=0xFFFF_FFFF_FFFF)
    dp.install(Flow(other, actions))
    assert len(dp.fastpath.maps.flows.floods) == 1

    # A restarted agent reads the same abstract actions back from the kernel.
    pin_dir = dp.fastpath.pin_dir
    host.call(dp.close)
    made.remove((host, dp))
    again = EbpfDatapath(pin_dir, cache_dir=obj_cache, vxlan_ifname=None)
    made.append((host, again))
    host.call(again.start)
    dumped = again.dump()
    assert dumped[match].flow.actions == actions and dumped[other].flow.actions == actions
    assert again.delete(match) and len(again.fastpath.maps.flows.floods) == 1
    assert again.delete(other) and len(again.fastpath.maps.flows.floods) == 0


def test_what_the_kernel_cannot_hold_raises_datapath_error(
    netns: SandboxFactory, made: list[tuple[Sandbox | None, Datapath]], obj_cache: Path
) -> None:
    host, dp = _flood_host(netns, obj_cache, 2)
    made.append((host, dp))
    match = Match.of(in_port=1, eth_dst=0xFFFF_FFFF_FFFF)
    with pytest.raises(DatapathError, match="at most 64"):
        dp.install(Flow(match, _flood_actions(2, 70)))  # more outputs than a flood set holds
    rewrites = tuple(SetEthSrc(mac_from_str(MAC1)) for _ in range(13))
    with pytest.raises(DatapathError):
        dp.install(Flow(match, (*rewrites, Output(2))))  # too many actions before the outputs
    assert dp.dump() == {} and len(dp.fastpath.maps.flows.floods) == 0


# --- the agent's reconciler (`agent.lifecycle.sweep`) against the kernel maps ----------


def _set_counters(dp: EbpfDatapath, match: Match, packets: int) -> None:
    flows = dp.fastpath.maps.flows
    key, mask = to_kernel(match)
    index = flows.masks.index_of(mask)
    assert index is not None
    lookup = FlowMap._lookup_key(index, key, mask)
    value = flows.map.lookup(lookup)
    assert value is not None
    value.packets, value.bytes, value.last_used = packets, packets * 100, time.monotonic_ns()
    flows.map.update(lookup, value)


def test_the_agents_sweep_makes_the_kernel_hold_exactly_the_desired_flows(
    netns: SandboxFactory, made: list[tuple[Sandbox | None, Datapath]], obj_cache: Path
) -> None:
    host, dp = _flood_host(netns, obj_cache, 8)
    made.append((host, dp))
    floods = dp.fastpath.maps.flows.floods
    wide, wider = _flood_actions(8, 13), _flood_actions(8, 14)
    same, changed, stale, new, too_big, new_flood = (
        Match.of(in_port=p, eth_dst=0xFFFF_FFFF_FFFF) for p in (1, 2, 3, 4, 5, 6)
    )
    dp.install(Flow(same, wide))
    dp.install(Flow(changed, (Output(3),)))
    dp.install(Flow(stale, wider))  # its flood set goes with it
    _set_counters(dp, same, 7)
    assert len(floods) == 2
    now = time.monotonic()
    table = FlowTable()
    for flow in (
        Flow(same, wide),  # unchanged: not rewritten, so its counters stay
        Flow(changed, (Output(4),)),
        Flow(new, (DecTtl(), Output(2))),
        Flow(new_flood, wide),  # shares the flood set of `same`
        Flow(too_big, _flood_actions(2, 70)),  # more outputs than a set holds
    ):
        table.add(DesiredFlow(flow, frozenset(), created=now))

    result = sweep(dp, table, now, AgentMetrics())
    assert (result.repaired, result.removed, result.expired) == (3, 1, 0)
    dumped = dp.dump()
    assert {m: i.flow.actions for m, i in dumped.items()} == {
        same: wide, changed: (Output(4),), new: (DecTtl(), Output(2)), new_flood: wide,
    }  # fmt: skip
    assert dumped[same].stats.packets == 7
    entry = dp.fastpath.maps.flows.get(*to_kernel(same))
    assert entry is not None and entry.flood_set is not None
    assert len(floods) == 1 and floods.refcount(entry.flood_set) == 2

    again = sweep(dp, table, now, AgentMetrics())  # only the flow that cannot fit, again
    assert (again.repaired, again.removed) == (0, 0)
    assert dp.dump().keys() == dumped.keys()
    assert sweep(dp, FlowTable(), now, AgentMetrics()).removed == 4
    assert dp.dump() == {} and len(floods) == 0 and floods.map.collect_keys() == []


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "one-by-one"])
def test_many_flows_go_at_once_with_their_masks_and_flood_sets(
    netns: SandboxFactory,
    made: list[tuple[Sandbox | None, Datapath]],
    obj_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    batch: bool,
) -> None:
    """`delete_many` (an invalidation of thousands of flows): batch calls that go on
    past an absent flow, releasing masks and flood sets as `delete` does; a kernel
    without batch deletes gets one call per flow."""
    host, dp = _flood_host(netns, obj_cache, 8)
    made.append((host, dp))
    if not batch:
        monkeypatch.setattr(bpf, "map_delete_batch", lambda *_a, **_k: (0, errno.EINVAL))
    floods = dp.fastpath.maps.flows.floods
    masks = dp.fastpath.maps.flows.masks
    plain = [Match.of(in_port=1, eth_dst=0x020000000000 + i) for i in range(2500)]
    wide = Match.of(in_port=2, ip_dst=ip_from_str("10.0.0.9"))
    for m in plain:
        dp.install(Flow(m, (Output(2),)))
    dp.install(Flow(wide, _flood_actions(8, 13)))
    kept = Match.of(in_port=3)
    dp.install(Flow(kept, (Output(1),)))
    absent = Match.of(in_port=1, eth_dst=0x02000000FFFF)
    assert len(floods) == 1
    gone = [*plain[:1200], absent, *plain[1200:], wide, absent]
    assert dp.delete_many(gone) == len(plain) + 1
    assert set(dp.dump()) == {kept}
    assert len(floods) == 0 and floods.map.collect_keys() == []
    idx = masks.index_of(to_kernel(wide)[1])  # its mask: no flow holds it (reaped later)
    assert idx is None or masks.refcount(idx) == 0
    assert dp.delete_many([]) == 0 and dp.delete_many([absent]) == 0


def test_a_dump_reads_counters_again_and_decodes_only_what_changed(
    netns: SandboxFactory, made: list[tuple[Sandbox | None, Datapath]], obj_cache: Path
) -> None:
    """`dump` reuses the flows it decoded last time (the sweep's dump every 2 s): fresh
    counters every time, and never a stale decoding when actions, masks or the ports'
    devices changed."""
    host, dp = _flood_host(netns, obj_cache, 3)
    made.append((host, dp))
    a = Match.of(in_port=1, eth_dst=mac_from_str(MAC2))
    b = Match.of(in_port=1, ip_dst=ip_from_str("10.0.0.9"))
    dp.install(Flow(a, (Output(2),)))
    dp.install(Flow(b, (Output(2),)))
    first = dp.dump()
    assert first[a].stats.packets == 0 and first[a].flow.actions == (Output(2),)
    _set_counters(dp, a, 5)
    second = dp.dump()
    assert second[a].stats.packets == 5 and second[a].stats.last_used is not None
    assert second[a].flow is first[a].flow  # unchanged: not decoded again
    dp.install(Flow(a, (Output(3),)))  # same key and mask, other actions
    assert dp.dump()[a].flow.actions == (Output(3),)
    dp.delete(b)
    wider = Match.of(in_port=1)  # another mask: a key the same bytes could not confuse
    dp.install(Flow(wider, (Output(2),)))
    assert {m: i.flow.actions for m, i in dp.dump().items()} == {
        a: (Output(3),), wider: (Output(2),),
    }  # fmt: skip
    # The same device under another port number: the same action bytes, read anew.
    host.call(lambda: dp.remove_port(2))
    host.call(lambda: dp.add_port(7, "p2"))
    dp.install(Flow(wider, (Output(7),)))
    assert dp.dump()[wider].flow.actions == (Output(7),)


def test_a_dump_in_steps_reads_a_map_batch_per_step_and_ends_with_the_whole_dump(
    netns: SandboxFactory, made: list[tuple[Sandbox | None, Datapath]], obj_cache: Path
) -> None:
    """The agent reads a part per loop iteration (misses between): more than one
    batch of flows takes more than one step, and the last step is `dump()` itself; a
    flow installed during the steps may be in it or not, never an error."""
    host, dp = _flood_host(netns, obj_cache, 2)
    made.append((host, dp))
    n = 1300  # three batches of 512 at least
    for i in range(n):
        dp.install(Flow(Match.of(in_port=1, eth_dst=0x020000000000 + i), (Output(2),)))
    steps = dp.dump_in_steps()
    assert next(steps) is None  # one part read, more to come
    dp.install(Flow(Match.of(in_port=1, eth_dst=0x02000000FFFF), (Output(2),)))
    parts = list(steps)
    assert len(parts) >= 2 and all(p is None for p in parts[:-1])
    last = parts[-1]
    assert last is not None and n <= len(last) <= n + 1
    assert last.keys() <= dp.dump().keys() and len(dp.dump()) == n + 1


def test_the_cost_of_a_sweep_grows_linearly(
    netns: SandboxFactory, made: list[tuple[Sandbox | None, Datapath]], obj_cache: Path
) -> None:
    """Relative check (faucet#2809 style): 10x the flows may cost at most 25x the time,
    so an accidental O(n^2) in the dump or the comparison shows up here first."""
    host, dp = _flood_host(netns, obj_cache, 2)
    made.append((host, dp))

    def run(n: int) -> float:
        dp.fastpath.maps.flows.clear()
        table = FlowTable()
        now = time.monotonic()
        for i in range(n):
            flow = Flow(Match.of(in_port=1, ip_dst=0x0A000000 + i), (Output(2),))
            dp.install(flow)
            table.add(DesiredFlow(flow, frozenset(), created=now))
        start = time.perf_counter()
        result = sweep(dp, table, now, AgentMetrics())  # all unchanged: one dump + compare
        elapsed = time.perf_counter() - start
        assert (result.repaired, result.removed) == (0, 0)
        return elapsed

    small = min(run(200) for _ in range(3))
    large = min(run(2000) for _ in range(2))
    assert large < 25 * small, (small, large)
