"""Demand-driven loading: after any sequence of NSDB changes, the watch-fed cache holds
exactly what a fresh load of its host's reachable part holds (no more, no less), with
the same devices complete; and its cost does not grow with the rest of the cloud."""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from support.cache_reach import check_script, steps
from support.wait import wait_until
from tessera.agent.cache import TopologyCache
from tessera.model import Bridge, Port, Route, Router, StoredObject, new_id
from tessera.nsdb.base import Create, Nsdb
from tessera.nsdb.memory import MemoryNsdb, MemoryStore


@pytest.fixture(scope="module")
def memory_nsdb() -> Iterator[Nsdb]:
    nsdb = MemoryNsdb(MemoryStore())
    yield nsdb
    nsdb.close()


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps)
def test_the_cache_equals_a_fresh_load_after_every_change(
    memory_nsdb: Nsdb, script: list[tuple[str, int, int]]
) -> None:
    # Every example adds to the same store: the earlier ones are the unrelated rest
    # of the cloud, which must never leak in.
    check_script(memory_nsdb, script)


# --- cost: what one agent pays does not grow with the cloud ------------------------------


def _tenant(host: str, ports: int) -> list[StoredObject]:
    """A bridge with `ports` ports bound to `host`, linked to a router with two routes:
    what a tenant network looks like."""
    br, rt = Bridge(name="b"), Router(name="r")
    uplink = Port(device_id=br.id, type="Bridge")
    rport = Port(
        device_id=rt.id, type="Router", port_address="10.0.0.1",
        network_address="10.0.0.0", network_length=24, peer_id=uplink.id,
    )  # fmt: skip
    objs: list[StoredObject] = [br, rt, uplink.model_copy(update={"peer_id": rport.id}), rport]
    for i in range(ports):
        objs.append(Port(device_id=br.id, type="Bridge", host_id=host, interface_name=f"t{i}"))
    for net, length in (("0.0.0.0", 0), ("10.0.0.0", 24)):
        objs.append(
            Route(
                router_id=rt.id, dst_network_addr=net, dst_network_length=length, type="BlackHole"
            )
        )
    return objs


def _copy(template: list[StoredObject]) -> list[StoredObject]:
    """The template tenant with new ids (for another host): cheap, unvalidated copies."""
    ids = {o.id: new_id() for o in template}
    ids[getattr(template[-3], "host_id", "")] = new_id()
    fields = ("id", "device_id", "peer_id", "router_id", "host_id")
    return [
        o.model_copy(update={f: ids[getattr(o, f)] for f in fields if getattr(o, f, None)})
        for o in template
    ]


def _cloud(cloud_ports: int) -> tuple[MemoryNsdb, str]:
    """A cloud of `cloud_ports` ports of other hosts, plus 10 ports bound to ours."""
    nsdb = MemoryNsdb(MemoryStore())
    me = new_id()
    for _ in range(2):
        nsdb.commit([Create(o) for o in _tenant(me, 5)])
    template = _tenant(new_id(), 4)
    for _ in range(cloud_ports // 4):
        nsdb.commit([Create(o) for o in _copy(template)])  # other hosts' tenants
    return nsdb, me


def _cost(nsdb: Nsdb, me: str) -> tuple[int, float, int]:
    """(bytes the loaded cache holds, CPU seconds to load it, objects held). CPU time,
    not wall time: this machine's other work must not decide the comparison."""
    # The store shares this process (it is ZooKeeper's part): keep the collector from
    # scanning it, as it would not scan ZooKeeper's heap.
    gc.collect()
    gc.freeze()
    tracemalloc.start()
    started = time.process_time()
    cache = TopologyCache(nsdb, me, lambda update: None)
    try:
        cache.start()
        wait_until(
            lambda: cache.ports_ready() and cache.idle() and len(cache.state.complete) == 4,
            10,
            interval=0.002,
        )
        elapsed = time.process_time() - started
        size = tracemalloc.get_traced_memory()[0]
        held = len(cache.held())
    finally:
        tracemalloc.stop()
        cache.close()
        gc.unfreeze()
    return size, elapsed, held


def test_an_agent_costs_the_same_in_a_cloud_of_10000_ports_as_in_one_of_100() -> None:
    costs = []
    for ports in (100, 10_000):
        nsdb, me = _cloud(ports)
        try:
            runs = [_cost(nsdb, me) for _ in range(7)]
        finally:
            nsdb.close()
        costs.append((min(r[0] for r in runs), min(r[1] for r in runs), runs[0][2]))
    small, large = costs
    assert small[2] == large[2] == 22  # the same objects: its two tenants' only
    assert large[0] <= 1.2 * small[0], (small, large)
    assert large[1] <= 1.2 * small[1] + 0.002, (small, large)
