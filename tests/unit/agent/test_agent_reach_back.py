"""`reach_back` finds exactly the hosts whose closure (`reach`, unlimited depth) holds an
object: on random topologies, after every change, for every object, and for the
topology as it was before the change (an overlay of the changed objects' old values)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from hypothesis import given, settings

from support.cache_reach import KINDS, World, read_store, steps
from tessera.agent.reach import Key, reach
from tessera.agent.reach_back import ReverseReach
from tessera.model import (
    Bridge,
    Chain,
    Conditions,
    LoadBalancer,
    Mirror,
    Pool,
    PoolMember,
    Port,
    PortGroup,
    Route,
    Router,
    Rule,
    StoredObject,
    Vip,
    new_id,
)
from tessera.nsdb import indexes
from tessera.nsdb.base import Nsdb
from tessera.nsdb.memory import MemoryNsdb, MemoryStore

Objects = dict[Key, StoredObject]


@contextlib.contextmanager
def _memory_nsdb() -> Iterator[Nsdb]:
    nsdb = MemoryNsdb(MemoryStore())  # one per example: each checks its own objects
    try:
        yield nsdb
    finally:
        nsdb.close()


def _closures(objects: Objects, hosts: list[str]) -> dict[str, set[Key]]:
    """The oracle: `reach` forwards for each host (those given and every host a port
    is bound to: the store holds the earlier examples too), unlimited as the API's."""
    hosts = sorted(
        {*hosts, *(str(o.host_id) for o in objects.values() if isinstance(o, Port) and o.host_id)}
    )
    members = indexes.expected(objects.values())
    return {
        h: reach(
            h,
            lambda k, i: objects.get((k, i)),
            lambda n, k: members.get((n, k), set()),
            max_depth=None,
        ).objects
        for h in hosts
    }


def _index(objects: Objects) -> ReverseReach:
    rr = ReverseReach()
    for obj in objects.values():
        rr.put(obj)
    return rr


def _check(rr: ReverseReach, oracle: dict[str, set[Key]], overlay: Objects | None = None) -> None:
    keys = set(rr.objects) | {k for held in oracle.values() for k in held}
    if overlay:
        keys |= set(overlay)
    for key in sorted(keys):
        expected = {h for h, held in oracle.items() if key in held}
        assert rr.hosts([key], overlay) == expected, key


@settings(max_examples=60, deadline=None)
@given(script=steps)
def test_walking_back_finds_the_hosts_reach_finds(script: list[tuple[str, int, int]]) -> None:
    with _memory_nsdb() as nsdb:
        _walk_script(nsdb, script)


def _walk_script(memory_nsdb: Nsdb, script: list[tuple[str, int, int]]) -> None:
    hosts = [new_id(), new_id()]
    world = World(memory_nsdb, hosts)
    world.seed()
    rr = ReverseReach()  # kept up to date object by object, as the API's copy is
    before: Objects = {}
    for op, a, b in script:
        if op == "want":
            continue  # what an agent asked for is covered by the unlimited walk
        world.apply(op, a, b)
        after: Objects = read_store(memory_nsdb)[0]
        for key in before.keys() - after.keys():
            rr.remove(key)
        for key, obj in after.items():
            if before.get(key) != obj:
                rr.put(obj)
        _check(rr, _closures(after, hosts))
        # As it was: the changed objects at their old values, over the new index.
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        overlay = {k: before.get(k) for k in changed}
        _check(rr, _closures(before, hosts), overlay)  # type: ignore[arg-type]
        before = after
    # Built at once or change by change: the same index.
    assert _index(before).hosts(before) == rr.hosts(before)
    assert {k.kind for k in KINDS} >= {k for k, _ in before}


def test_mirrors_load_balancers_and_stateful_groups_walk_back_as_reach_walks() -> None:
    """The kinds the random scripts do not make: a mirror's target port and a stateful
    group's members are named, not walked from; a pool member is found through its
    pool, load balancer and router."""
    h1, h2, h3 = new_id(), new_id(), new_id()
    objs: list[StoredObject] = []
    bridge, router = Bridge(name="b"), Router(name="r")
    vm1 = Port(device_id=bridge.id, type="Bridge", host_id=h1, interface_name="vm1")
    tap = Port(device_id=new_id(), type="Bridge", host_id=h2, interface_name="tap")
    far = Port(device_id=new_id(), type="Bridge", host_id=h3, interface_name="far")
    mirror = Mirror(to_port_id=tap.id, conditions=[Conditions()])
    group = PortGroup(name="g", stateful=True, port_ids=[far.id])
    rule = Rule(chain_id=new_id(), type="accept")
    chain = Chain(name="c", rule_ids=[rule.id])
    bridge = bridge.model_copy(
        update={"inbound_mirror_ids": [mirror.id], "inbound_filter_id": chain.id}
    )
    rport = Port(device_id=router.id, type="Router", port_address="10.0.0.1",
                 network_address="10.0.0.0", network_length=24)  # fmt: skip
    bport = Port(device_id=bridge.id, type="Bridge", peer_id=rport.id)
    rport = rport.model_copy(update={"peer_id": bport.id})
    lb = LoadBalancer(router_id=router.id)
    pool = Pool(load_balancer_id=lb.id)
    member = PoolMember(pool_id=pool.id, address="10.0.0.9", protocol_port=80)
    vip = Vip(load_balancer_id=lb.id, pool_id=pool.id, address="203.0.113.9", protocol_port=80)
    route = Route(router_id=router.id, dst_network_addr="0.0.0.0", dst_network_length=0,
                  next_hop_port=rport.id)  # fmt: skip
    rule2 = Rule(chain_id=chain.id, type="accept", port_group=group.id)
    chain = chain.model_copy(update={"rule_ids": [rule.id, rule2.id]})
    objs = [bridge, router, vm1, tap, far, mirror, group, rule, rule2, chain, rport, bport,
            lb, pool, member, vip, route]  # fmt: skip
    objects = {(o.kind, o.id): o for o in objs}
    rr = _index(objects)
    _check(rr, _closures(objects, [h1, h2, h3]))
    assert rr.hosts([(PoolMember.kind, member.id)]) == {h1}
    assert rr.hosts([(Port.kind, tap.id)]) == {h1, h2}  # h1 names it (mirror), h2 binds it
    assert rr.hosts([(Port.kind, far.id)]) == {h1, h3}  # h1: a stateful group's member
    assert rr.hosts([(Bridge.kind, far.device_id)]) == {h3}  # named by far only
