"""Delete with referential integrity, driven by the models' `Ref` declarations, and the
atomicity of references under concurrent writers, on both NSDB backends."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from store_helpers import BeforeCommit, bridge_and_router, bridge_port, router_port

from tessera.model import (
    Bridge,
    Chain,
    DhcpSubnet,
    Host,
    IpAddrGroup,
    Port,
    PortGroup,
    Route,
    Router,
    Rule,
    TunnelZone,
    TunnelZoneHost,
    new_id,
)
from tessera.nsdb.errors import AlreadyExists, Conflict, IntegrityError, NotFound
from tessera.nsdb.store import TopologyStore


def _ids(objs: list[Any]) -> set[str]:
    return {o.id for o in objs}


def test_deleting_a_bridge_cascades_through_its_ports(store: TopologyStore) -> None:
    net = bridge_and_router(store)
    spare = bridge_port(store, net.bridge)
    other_bridge = store.create(Bridge())
    survivor = bridge_port(store, other_bridge)
    route = store.create(
        Route(
            router_id=net.router.id,
            dst_network_addr="10.0.0.0",
            dst_network_length=24,
            next_hop_port=net.rp.id,
        )
    )
    group = store.create(PortGroup())
    for p in (net.bp.id, spare.id, survivor.id):
        store.add_port_group_port(group.id, p)
    chain = store.create(Chain())
    only_bp = store.create(Rule(chain_id=chain.id, type="drop", in_ports=[net.bp.id]))
    mixed = store.create(
        Rule(
            chain_id=chain.id,
            type="drop",
            in_ports=[net.bp.id, survivor.id],
            out_ports=[spare.id, survivor.id],
        )
    )
    out_only = store.create(Rule(chain_id=chain.id, type="accept", out_ports=[spare.id]))
    unrelated = store.create(Rule(chain_id=chain.id, type="accept"))
    store.create(DhcpSubnet(bridge_id=net.bridge.id, subnet_prefix="10.0.0.0", subnet_length=24))

    store.delete(Bridge, net.bridge.id)

    assert _ids(store.list(Port)) == {net.rp.id, survivor.id}
    assert store.get(Port, net.rp.id).peer_id is None  # the router's port is unlinked
    assert store.get(Route, route.id) == route  # routes via the surviving router port stay
    assert store.get(PortGroup, group.id).port_ids == [survivor.id]
    # A rule whose port list empties is deleted (never widened to every port).
    assert [r.id for r in store.rules_of(chain.id)] == [mixed.id, unrelated.id]
    kept = store.get(Rule, mixed.id)
    assert kept.in_ports == [survivor.id] and kept.out_ports == [survivor.id]
    assert kept.position == 1
    for gone in (only_bp.id, out_only.id):
        with pytest.raises(NotFound):
            store.get(Rule, gone)
    assert store.list(DhcpSubnet) == []


def test_deleting_a_router_deletes_ports_routes_and_unlinks_peers(store: TopologyStore) -> None:
    net = bridge_and_router(store)
    store.create(
        Route(
            router_id=net.router.id,
            dst_network_addr="0.0.0.0",
            dst_network_length=0,
            next_hop_port=net.rp.id,
        )
    )
    store.create(
        Route(
            router_id=net.router.id,
            dst_network_addr="10.8.0.0",
            dst_network_length=16,
            type="Reject",
        )
    )
    store.delete(Router, net.router.id)
    assert store.list(Route) == [] and store.list(Router) == []
    assert store.list(Port) == [store.get(Port, net.bp.id)]
    assert store.get(Port, net.bp.id).peer_id is None


def test_deleting_a_port_deletes_routes_via_it(store: TopologyStore) -> None:
    router = store.create(Router())
    p1, p2 = router_port(store, router, "10.0.0.1"), router_port(store, router, "10.0.1.1")
    via1 = store.create(
        Route(
            router_id=router.id,
            dst_network_addr="10.5.0.0",
            dst_network_length=16,
            next_hop_port=p1.id,
        )
    )
    via2 = store.create(
        Route(
            router_id=router.id,
            dst_network_addr="10.6.0.0",
            dst_network_length=16,
            next_hop_port=p2.id,
        )
    )
    store.delete(Port, p1.id)
    assert store.routes_of(router.id) == [via2]
    with pytest.raises(NotFound):
        store.get(Route, via1.id)


def test_deleting_a_chain_clears_filters_and_deletes_rules_and_jumps(
    store: TopologyStore,
) -> None:
    target, caller = store.create(Chain(name="target")), store.create(Chain(name="caller"))
    own = store.create(Rule(chain_id=target.id, type="drop"))
    before = store.create(Rule(chain_id=caller.id, type="accept"))
    jump = store.create(Rule(chain_id=caller.id, type="jump", jump_chain_id=target.id))
    after = store.create(Rule(chain_id=caller.id, type="drop"))
    bridge = store.create(Bridge(inbound_filter_id=target.id, outbound_filter_id=caller.id))
    port = bridge_port(store, bridge, inbound_filter_id=target.id)

    store.delete(Chain, target.id)

    assert store.get(Bridge, bridge.id).inbound_filter_id is None
    assert store.get(Bridge, bridge.id).outbound_filter_id == caller.id
    assert store.get(Port, port.id).inbound_filter_id is None
    assert [(r.id, r.position) for r in store.rules_of(caller.id)] == [
        (before.id, 1),
        (after.id, 2),
    ]
    assert store.get(Chain, caller.id).rule_ids == [before.id, after.id]
    for gone in (own.id, jump.id):
        with pytest.raises(NotFound):
            store.get(Rule, gone)


def test_deleting_groups_deletes_the_rules_that_match_on_them(store: TopologyStore) -> None:
    chain = store.create(Chain())
    pg, ag = store.create(PortGroup()), store.create(IpAddrGroup())
    r_pg = store.create(Rule(chain_id=chain.id, type="drop", port_group=pg.id))
    r_ag = store.create(Rule(chain_id=chain.id, type="drop", ip_addr_group_dst=ag.id))
    plain = store.create(Rule(chain_id=chain.id, type="accept"))
    store.delete(PortGroup, pg.id)
    assert [r.id for r in store.rules_of(chain.id)] == [r_ag.id, plain.id]
    store.delete(IpAddrGroup, ag.id)
    assert [r.id for r in store.rules_of(chain.id)] == [plain.id]
    assert store.get(Chain, chain.id).rule_ids == [plain.id]
    with pytest.raises(NotFound):
        store.get(Rule, r_pg.id)


def test_deleting_a_rule_removes_it_from_its_chain(store: TopologyStore) -> None:
    chain = store.create(Chain())
    a, b, c = (store.create(Rule(chain_id=chain.id, type="accept")) for _ in range(3))
    store.delete(Rule, b.id)
    assert [(r.id, r.position) for r in store.rules_of(chain.id)] == [(a.id, 1), (c.id, 2)]


def test_deleting_a_dead_host_unbinds_its_ports_and_leaves_tunnel_zones(
    nsdb_factory: Any,
) -> None:
    agent = TopologyStore(nsdb_factory())
    api = TopologyStore(nsdb_factory())
    host_id, other_id = new_id(), new_id()
    agent.register_host(host_id, "h1", ["198.18.0.1"])
    api.register_host(other_id, "h2", ["198.18.0.2"])
    bridge = api.create(Bridge())
    port = bridge_port(api, bridge)
    api.bind(host_id, port.id, "tap0")
    zone = api.create(TunnelZone(name="z"))
    api.add_tunnel_zone_host(zone.id, TunnelZoneHost(host_id=host_id, ip_address="198.18.0.1"))
    api.add_tunnel_zone_host(zone.id, TunnelZoneHost(host_id=other_id, ip_address="198.18.0.2"))
    with pytest.raises(AlreadyExists, match="alive"):
        api.delete(Host, host_id)
    agent.nsdb.close()  # its liveness entry goes with the session
    api.delete(Host, host_id)
    unbound = api.get(Port, port.id)
    assert unbound.host_id is None and unbound.interface_name is None
    assert [h.host_id for h in api.tunnel_zone_hosts(zone.id)] == [other_id]
    assert _ids(api.list(Host)) == {other_id}


def test_deleting_unknown_objects_is_not_found(store: TopologyStore) -> None:
    for cls in (Bridge, Router, Port, Route, Chain, Rule, PortGroup, IpAddrGroup, TunnelZone, Host):
        with pytest.raises(NotFound):
            store.delete(cls, new_id())


def test_a_port_created_while_its_bridge_is_deleted_never_dangles(nsdb_factory: Any) -> None:
    """A create touches its parent: a delete of the parent that commits between the
    create's reads and its commit makes the create retry and fail, never orphan."""
    deleter = TopologyStore(nsdb_factory())
    bridge = deleter.create(Bridge())
    creator = TopologyStore(
        BeforeCommit(nsdb_factory(), lambda: deleter.delete(Bridge, bridge.id))  # type: ignore[arg-type]
    )
    with pytest.raises(NotFound, match="bridge"):
        creator.create(Port(device_id=bridge.id, type="Bridge"))
    assert deleter.list(Port) == []


def test_a_rule_naming_a_port_being_deleted_never_keeps_it(nsdb_factory: Any) -> None:
    deleter = TopologyStore(nsdb_factory())
    port = bridge_port(deleter, deleter.create(Bridge()))
    chain = deleter.create(Chain())
    writer = TopologyStore(
        BeforeCommit(nsdb_factory(), lambda: deleter.delete(Port, port.id))  # type: ignore[arg-type]
    )
    with pytest.raises(IntegrityError, match="in_ports"):
        writer.create(Rule(chain_id=chain.id, type="drop", in_ports=[port.id]))
    assert deleter.list(Rule) == [] and deleter.get(Chain, chain.id).rule_ids == []


def test_a_delete_racing_a_new_reference_cascades_to_it(nsdb_factory: Any) -> None:
    """The other order: the reference commits between the delete's reads and its
    commit; the delete retries, sees the new referrer and applies its rule."""
    writer = TopologyStore(nsdb_factory())
    bridge = writer.create(Bridge())
    chain = writer.create(Chain())
    port = bridge_port(writer, bridge)
    late: list[Rule] = []
    deleter = TopologyStore(
        BeforeCommit(
            nsdb_factory(),
            lambda: late.append(
                writer.create(Rule(chain_id=chain.id, type="drop", in_ports=[port.id]))
            ),
        )  # type: ignore[arg-type]
    )
    deleter.delete(Port, port.id)
    assert late and writer.list(Rule) == [] and writer.get(Chain, chain.id).rule_ids == []


def test_an_update_lost_to_a_concurrent_writer_is_redone_from_fresh_reads(
    nsdb_factory: Any,
) -> None:
    other = TopologyStore(nsdb_factory())
    group = other.create(PortGroup(name="g"))
    bridge = other.create(Bridge())
    p1, p2 = bridge_port(other, bridge), bridge_port(other, bridge)
    racer = TopologyStore(
        BeforeCommit(nsdb_factory(), lambda: other.add_port_group_port(group.id, p1.id))  # type: ignore[arg-type]
    )
    racer.add_port_group_port(group.id, p2.id)
    assert sorted(other.port_group_ports(group.id)) == sorted([p1.id, p2.id])


def test_sustained_conflicts_give_up_with_conflict(nsdb_factory: Any) -> None:
    other = TopologyStore(nsdb_factory())
    bridge = other.create(Bridge(name="a"))

    class AlwaysRacing:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def commit(self, ops: Any) -> Any:
            other.update(Bridge, bridge.id, {"name": "other"})
            return self.inner.commit(ops)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    loser = TopologyStore(AlwaysRacing(nsdb_factory()), attempts=3)  # type: ignore[arg-type]
    with pytest.raises(Conflict, match="concurrent"):
        loser.update(Bridge, bridge.id, {"name": "mine"})
    assert other.get(Bridge, bridge.id).name == "other"


def test_concurrent_rule_inserts_all_land_in_the_chain(nsdb_factory: Any) -> None:
    stores = [TopologyStore(nsdb_factory()) for _ in range(3)]
    chain = stores[0].create(Chain())
    made: list[str] = []
    lock = threading.Lock()

    def insert(store: TopologyStore) -> None:
        for _ in range(5):
            rule = store.create(Rule(chain_id=chain.id, type="accept", position=1))
            with lock:
                made.append(rule.id)

    threads = [threading.Thread(target=insert, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r.id for r in stores[0].rules_of(chain.id)) == sorted(made)
    assert len(made) == 15
