"""The cache's view: learned state is visible at once, and learning on one bridge does
not copy every other bridge's table (the next miss would pay for all of them)."""

from __future__ import annotations

import uuid

from agent_harness import Cloud


def test_a_learned_mac_shows_in_the_next_view_and_other_tables_are_not_copied(
    cloud: Cloud,
) -> None:
    h = cloud.host("h1", "198.18.0.1")
    br_a, br_b = cloud.bridge("a"), cloud.bridge("b")
    vm_a = cloud.vm(h, br_a, "tap1", "02:00:00:00:00:01", "10.0.0.1")
    vm_b = cloud.vm(h, br_b, "tap2", "02:00:00:00:00:02", "10.0.1.1")
    cloud.settle()
    cache = h.agent.cache
    cache.learn_mac(br_a.id, 0, vm_a.mac, vm_a.port_id)
    cache.learn_mac(br_b.id, 0, vm_b.mac, vm_b.port_id)
    before = cache.view()
    assert before.macs[br_a.id][(0, vm_a.mac)] == vm_a.port_id

    assert cache.learn_mac(br_a.id, 0, 0x020000000099, vm_a.port_id)  # a new MAC on a
    after = cache.view()
    assert after.generation > before.generation
    assert after.topology_generation == before.topology_generation
    assert after.objects is before.objects  # no topology change, no new object list
    assert after.macs[br_a.id][(0, 0x020000000099)] == vm_a.port_id
    assert (0, 0x020000000099) not in before.macs[br_a.id]  # views are immutable
    assert after.macs[br_b.id] is before.macs[br_b.id]  # b's table was not copied again

    assert not cache.learn_mac(br_a.id, 0, 0x020000000099, vm_a.port_id)  # known: no change
    assert cache.view() is after


def test_an_event_that_raced_its_watch_out_of_the_closure_changes_nothing(
    cloud: Cloud,
) -> None:
    """The reconcile drops a watch (the object left the closure) while the NSDB was
    already delivering an event for it: the event must not put the object back."""
    from tessera.agent.cache import _Watch
    from tessera.model import Bridge
    from tessera.nsdb.base import WatchEvent

    h = cloud.host("h1", "198.18.0.1")
    cloud.settle()
    cache = h.agent.cache
    stray = Bridge(id=str(uuid.uuid4()), name="stray")
    gone = _Watch()
    gone.active = False
    cache._on_object(WatchEvent(Bridge.kind, stray.id, "created", stray, 1), gone)
    assert (Bridge.kind, stray.id) not in cache.held()
    live = _Watch()
    cache._on_object(WatchEvent(Bridge.kind, stray.id, "created", stray, 1), live)
    assert (Bridge.kind, stray.id) in cache.held()
