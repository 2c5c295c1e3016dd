"""The depth limit of what an agent loads (`agent.reach`, issue 17): with every tenant
router's gateway on one shared external bridge, an agent with a VM in tenant 1 loads
tenant 1's bridge and router and the external bridge, holds the other tenants' routers
only as fronts (router, inbound filter, gateway port), and nothing of their networks;
without a limit it loads the whole cloud. A wanted device is loaded at the limit, and
every device at the least depth it has, whatever the order of the walk."""

from __future__ import annotations

import pytest

from support.shared_external import Tenant, cloud, lookups
from tessera.agent.reach import AGENT_MAX_DEPTH, Key, Reach, reach
from tessera.model import Bridge, Host, Port, Router, StoredObject, new_id


def _reach(
    me: str, objects: list[StoredObject], extra: tuple[Key, ...] = (), depth: int | None = 2
) -> Reach:
    held, members = lookups(objects)
    return reach(
        me,
        lambda kind, id: held.get((kind, id)),
        lambda name, key: members.get((name, key), set()),
        extra,
        max_depth=depth,
    )


def _objects(ext: Bridge, tenants: list[Tenant]) -> list[StoredObject]:
    return [ext, *(o for t in tenants for o in t.objects)]


def _front(t: Tenant) -> set[Key]:
    """What a front of tenant `t`'s router holds: the router, its inbound chain and
    rules, its gateway port (and the external bridge's port it is linked to)."""
    inbound = t.router.inbound_filter_id
    assert inbound is not None
    rules = {(o.kind, o.id) for o in t.objects if getattr(o, "chain_id", None) == inbound}
    return {
        (Router.kind, t.router.id), ("chains", inbound), *rules,
        (Port.kind, t.gateway.id), (Port.kind, t.ext_port.id),
    }  # fmt: skip


def test_an_agent_loads_its_tenant_and_the_external_bridge_not_the_other_tenants() -> None:
    me = new_id()
    ext, tenants = cloud(8, me)
    got = _reach(me, _objects(ext, tenants), depth=AGENT_MAX_DEPTH)
    mine = tenants[0]
    assert AGENT_MAX_DEPTH == 2
    loaded = {(Bridge.kind, mine.bridge.id), (Router.kind, mine.router.id), (Bridge.kind, ext.id)}
    assert got.devices == loaded
    assert got.complete == {id for _, id in loaded}
    assert mine.ids() <= got.objects  # all of tenant 1: VMs, chains, routes...
    assert got.fronts == {t.router.id for t in tenants[1:]}
    for other in tenants[1:]:
        # The other tenants' routers are fronts, and nothing of their networks is held:
        # no bridge, no VM port, no route, no interface, no outbound or SG chain.
        assert other.ids() & got.objects == _front(other)
    assert got.objects == mine.ids() | {(Bridge.kind, ext.id), (Host.kind, me)} | {
        k for t in tenants[1:] for k in _front(t)
    }  # and this host's Host (its VMs are bound to it; fronts have no bound port)


def test_without_a_limit_an_agent_loads_the_whole_cloud() -> None:
    """Why the limit: the closure crosses the external bridge into every tenant."""
    me = new_id()
    ext, tenants = cloud(8, me)
    objects = _objects(ext, tenants)
    got = _reach(me, objects, depth=None)
    hosts = {(Host.kind, o.host_id) for o in objects if isinstance(o, Port) and o.host_id}
    assert got.objects == {(o.kind, o.id) for o in objects} | hosts | {(Host.kind, me)}
    assert got.complete == {ext.id} | {t.bridge.id for t in tenants} | {
        t.router.id for t in tenants
    }
    assert not got.fronts


def test_what_an_agent_holds_grows_with_the_other_tenants_by_their_fronts_only() -> None:
    """6 objects per other tenant on the external network (its router, inbound chain
    and two rules, gateway port, the external bridge's port), whatever their size."""
    me = new_id()
    sizes = {}
    for tenants, vms in ((5, 2), (50, 2), (50, 20)):
        ext, made = cloud(tenants, me, vms)
        got = _reach(me, _objects(ext, made), depth=AGENT_MAX_DEPTH)
        sizes[(tenants, vms)] = len(got.objects)
    own = sizes[(5, 2)] - 4 * 6
    assert sizes[(50, 2)] == own + 49 * 6
    assert sizes[(50, 20)] == own + 18 + 49 * 6  # tenant 1's own 18 more VMs only


def test_a_wanted_router_is_loaded_at_the_limit_with_its_boundary_only() -> None:
    """What a simulation asked for (another tenant's router, met by a packet to its
    floating IP) is loaded whole; its networks stay behind the boundary (its bridge's
    port is held, the bridge is not), and the other routers stay fronts."""
    me = new_id()
    ext, tenants = cloud(4, me)
    t2 = tenants[1]
    got = _reach(me, _objects(ext, tenants), extra=((Router.kind, t2.router.id),))
    assert (Router.kind, t2.router.id) in got.devices
    assert t2.router.id in got.complete
    assert (Bridge.kind, t2.bridge.id) not in got.devices
    (uplink,) = (
        p for p in t2.objects if isinstance(p, Port) and p.peer_id and p.device_id == t2.bridge.id
    )
    assert (Port.kind, uplink.id) in got.objects  # the boundary: its bridge's port
    assert not {(Port.kind, p.id) for p in t2.vm_ports} & got.objects
    assert got.fronts == {tenants[2].router.id, tenants[3].router.id}
    # Asked for in turn (the packet reached the bridge), the bridge is loaded too.
    more = _reach(
        me,
        _objects(ext, tenants),
        extra=((Router.kind, t2.router.id), (Bridge.kind, t2.bridge.id)),
    )
    assert {t2.bridge.id, t2.router.id} <= more.complete
    assert {(Port.kind, p.id) for p in t2.vm_ports} <= more.objects


@pytest.mark.parametrize("attempt", range(5))
def test_every_device_is_loaded_at_its_least_depth(attempt: int) -> None:
    """a (0) -- r1 -- b -- r2 -- c, and a shortcut a -- r3 -- c: c is 2 links away, so
    it is loaded with the limit at 2 whatever the ids (the order the walk meets them);
    d behind r4 on c is not, and r4 is a front (it hangs off a bridge)."""
    me = new_id()
    a, b, c, d = (Bridge(name=n) for n in "abcd")
    r1, r2, r3, r4 = (Router(name=f"r{i}") for i in range(1, 5))
    objects: list[StoredObject] = [a, b, c, d, r1, r2, r3, r4]
    objects.append(Port(device_id=a.id, type="Bridge", host_id=me, interface_name="tap"))
    net = iter(range(1, 100))

    def link(bridge: Bridge, router: Router) -> None:
        n = next(net)
        bp, rp = new_id(), new_id()
        objects.append(Port(id=bp, device_id=bridge.id, type="Bridge", peer_id=rp))
        objects.append(
            Port(
                id=rp,
                device_id=router.id,
                type="Router",
                peer_id=bp,
                port_address=f"10.0.{n}.1",
                network_address=f"10.0.{n}.0",
                network_length=24,
            )
        )

    for bridge, router in ((a, r1), (b, r1), (b, r2), (c, r2), (a, r3), (c, r3), (c, r4), (d, r4)):
        link(bridge, router)
    got = _reach(me, objects)
    assert {id for _, id in got.devices} == {a.id, r1.id, r3.id, b.id, c.id}
    assert got.fronts == {r2.id, r4.id}  # r2: behind b and c, both at the limit
    assert (Bridge.kind, d.id) not in got.objects
