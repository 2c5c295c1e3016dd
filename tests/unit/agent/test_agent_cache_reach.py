"""Demand-driven loading: after any sequence of NSDB changes, the watch-fed cache holds
exactly what a fresh load of its host's reachable part holds (no more, no less), with
the same devices complete; and its cost does not grow with the rest of the cloud."""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from support import shared_external
from support.cache_reach import check_script, steps
from support.wait import wait_until
from tessera.agent.cache import TopologyCache
from tessera.agent.reach import AGENT_MAX_DEPTH, reach
from tessera.model import Bridge, Host, Port, Route, Router, StoredObject, new_id
from tessera.nsdb.base import Create, Nsdb
from tessera.nsdb.memory import MemoryNsdb, MemoryStore


@pytest.fixture
def memory_nsdb() -> Iterator[Nsdb]:
    """One store for all the examples of a test (hypothesis runs them in one call)."""
    nsdb = MemoryNsdb(MemoryStore())
    yield nsdb
    nsdb.close()


@pytest.mark.parametrize("max_depth", [AGENT_MAX_DEPTH, 1, None])
@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps)
def test_the_cache_equals_a_fresh_load_after_every_change(
    memory_nsdb: Nsdb, max_depth: int | None, script: list[tuple[str, int, int]]
) -> None:
    # Every example adds to the same store: the earlier ones are the unrelated rest
    # of the cloud, which must never leak in. At the agent's depth limit, at a smaller
    # one (more boundaries in small random topologies) and without one (wait.py's).
    check_script(memory_nsdb, script, max_depth=max_depth)


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
    nsdb.commit([Create(Host(id=me, name="me"))])
    for _ in range(2):
        nsdb.commit([Create(o) for o in _tenant(me, 5)])
    template = _tenant(new_id(), 4)
    for _ in range(cloud_ports // 4):
        nsdb.commit([Create(o) for o in _copy(template)])  # other hosts' tenants
    return nsdb, me


class _Counting:
    """The NSDB with a count of the requests made to it: the deterministic part of
    what loading costs (CPU time is also measured, but it counts every thread of the
    process, and in a full test run other tests' leftover threads run meanwhile)."""

    def __init__(self, inner: Nsdb) -> None:
        self._inner = inner
        self.requests = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.requests += 1
            return attr(*args, **kwargs)

        return counted


Cost = tuple[int, float, int, int]


def _cost(nsdb: Nsdb, me: str, complete: int = 4, fronts: int = 0) -> Cost:
    """(bytes the loaded cache holds, CPU seconds to load it, objects held, NSDB
    requests made), once it shows `complete` devices and holds `fronts` routers as
    fronts."""
    # The store shares this process (it is ZooKeeper's part): keep the collector from
    # scanning it, as it would not scan ZooKeeper's heap.
    gc.collect()
    gc.freeze()
    tracemalloc.start()
    started = time.process_time()
    counting = _Counting(nsdb)
    cache = TopologyCache(counting, me, lambda update: None)  # type: ignore[arg-type]
    try:
        cache.start()
        wait_until(
            lambda: (
                cache.ports_ready()
                and cache.idle()
                and len(cache.state.complete) == complete
                and len(cache.view().fronts) == fronts
                and cache.wanted() <= cache.held().keys()
            ),
            10,
            interval=0.002,
        )
        elapsed = time.process_time() - started
        size = tracemalloc.get_traced_memory()[0]
        held = len(cache.held())
        requests = counting.requests
    finally:
        tracemalloc.stop()
        cache.close()
        gc.unfreeze()
    return size, elapsed, held, requests


def _same_cost(small: list[Cost], large: list[Cost]) -> None:
    """Memory and NSDB requests within 1.2x (the least of several loads); CPU only as a
    coarse guard (twice, plus 20 ms: before demand loading the large cloud cost 13 s)."""
    best = [tuple(min(r[i] for r in runs) for i in range(4)) for runs in (small, large)]
    (s_size, s_cpu, _, s_requests), (l_size, l_cpu, _, l_requests) = best
    assert l_size <= 1.2 * s_size, best
    assert l_requests <= 1.2 * s_requests, best
    assert l_cpu <= 2 * s_cpu + 0.02, best


def test_an_agent_costs_the_same_in_a_cloud_of_10000_ports_as_in_one_of_100() -> None:
    costs = []
    for ports in (100, 10_000):
        nsdb, me = _cloud(ports)
        try:
            costs.append([_cost(nsdb, me) for _ in range(7)])
        finally:
            nsdb.close()
    small, large = costs
    # The same objects: its two tenants' only, and its own Host.
    assert {r[2] for r in small} == {r[2] for r in large} == {23}
    _same_cost(small, large)


# --- the same with every tenant router's gateway on one shared external bridge ----------


def _shared_cloud(vms_per_tenant: int) -> tuple[MemoryNsdb, str]:
    """Two tenants of 5 VMs bound to our host and 25 tenants of `vms_per_tenant` VMs of
    other hosts, every tenant's router with its gateway on one external bridge (as
    Neutron's `router:external` network is translated)."""
    nsdb = MemoryNsdb(MemoryStore())
    me = new_id()
    nsdb.commit([Create(Host(id=me, name="me"))])
    ext = shared_external.external_bridge()
    nsdb.commit([Create(ext)])
    for k in (1, 2):
        nsdb.commit([Create(o) for o in shared_external.tenant(k, ext, 5, me).objects])
    for k in range(3, 28):
        made = shared_external.tenant(k, ext, vms_per_tenant)
        nsdb.commit([Create(o) for o in made.objects])
    return nsdb, me


def test_with_a_shared_external_bridge_an_agent_costs_the_same_in_10000_ports_as_in_100() -> None:
    """The external bridge links every tenant: without the depth limit the agent loaded
    every tenant's network behind it (10,414 objects and 13 s of CPU for the large
    cloud, measured before the limit). Now its own tenants, the external bridge and the
    other routers' fronts: 195 objects in both."""
    costs = []
    for vms in (4, 400):  # 100 and 10,000 ports of other tenants
        nsdb, me = _shared_cloud(vms)
        try:
            costs.append([_cost(nsdb, me, complete=5, fronts=25) for _ in range(7)])
        finally:
            nsdb.close()
    small, large = costs
    # Own: 2 x 19 objects + 3 more VM ports each; ext; its Host; 6 per front (router,
    # inbound chain and its 2 rules, gateway port, ext's port to it).
    assert {r[2] for r in small} == {r[2] for r in large} == {2 * 22 + 1 + 1 + 25 * 6}
    _same_cost(small, large)


def test_with_a_shared_external_bridge_other_tenants_cost_an_agent_their_fronts_only() -> None:
    """More tenants on the external bridge do cost something: the bridge has a port per
    router, and a broadcast on it reaches every router (`agent.reach`, fronts). 6
    objects per other tenant, whatever its size, against all 21 of a 4-VM tenant (and
    every VM's) without the limit. The closure as `reach` computes it, which the cache
    equals (the property test above): loading 15,000 objects takes the cache tens of
    seconds here."""
    me = new_id()
    held = {}
    for tenants in (25, 2500):  # 100 and 10,000 ports of other tenants
        ext, made = shared_external.cloud(tenants + 1, me, vms=4)
        objects = [ext, *(o for t in made for o in t.objects)]
        get, members = shared_external.lookups(objects)
        for depth in (AGENT_MAX_DEPTH, None):
            got = reach(
                me,
                lambda kind, id: get.get((kind, id)),  # noqa: B023 (used at once)
                lambda name, key: members.get((name, key), set()),  # noqa: B023
                max_depth=depth,
            )
            held[(tenants, depth)] = len(got.objects)
        # Unlimited: everything, and the Host of every tenant's VMs (one host each).
        assert held[(tenants, None)] == len(objects) + tenants + 1
    own = held[(25, AGENT_MAX_DEPTH)] - 25 * 6
    assert held[(2500, AGENT_MAX_DEPTH)] == own + 2500 * 6
    assert held[(2500, None)] == 1 + 2501 * (21 + 1)
