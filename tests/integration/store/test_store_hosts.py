"""Host registration, liveness and the learned state tables."""

from __future__ import annotations

import time
from typing import Any

import pytest
from store_helpers import bridge_port

from tessera.model import Bridge, Host, Port, Router, new_id
from tessera.nsdb import tables
from tessera.nsdb.errors import NotFound
from tessera.nsdb.store import TopologyStore


def test_register_host_creates_then_updates_and_marks_alive(nsdb_factory: Any) -> None:
    agent, api = TopologyStore(nsdb_factory()), TopologyStore(nsdb_factory())
    host_id = new_id()
    host = agent.register_host(host_id.upper(), "h1", ["198.18.0.1"])
    assert host == Host(id=host_id, name="h1", alive=True, addresses=["198.18.0.1"])
    assert api.live_hosts() == {host_id}
    again = agent.register_host(host_id, "h1-renamed", ["198.18.0.9"])
    assert again.name == "h1-renamed" and api.get(Host, host_id) == again
    entry = tables.decode_liveness(api.nsdb.state_get(tables.HOST_LIVENESS)[host_id])
    assert entry.name == "h1-renamed" and entry.since <= time.time()
    agent.unregister_host(host_id)
    assert api.live_hosts() == set() and not api.get(Host, host_id).alive


def test_liveness_entry_vanishes_with_the_agent_session(nsdb_factory: Any) -> None:
    agent, api = TopologyStore(nsdb_factory()), TopologyStore(nsdb_factory())
    host_id = new_id()
    agent.register_host(host_id, "h", [])
    agent.nsdb.close()
    assert api.live_hosts() == set()
    assert api.set_host_alive(host_id, False) and not api.set_host_alive(host_id, False)
    assert not api.set_host_alive(new_id(), True)  # unknown host: nothing to write


def test_mac_and_arp_tables_round_trip(store: TopologyStore) -> None:
    bridge, router = store.create(Bridge()), store.create(Router())
    port = new_id()
    store.learn_mac(
        bridge.id, tables.MacEntry(vlan_id=0, mac_addr="02:00:00:00:00:02", port_id=port)
    )
    store.learn_mac(
        bridge.id, tables.MacEntry(vlan_id=0, mac_addr="02:00:00:00:00:01", port_id=port)
    )
    store.learn_mac(
        bridge.id, tables.MacEntry(vlan_id=7, mac_addr="02:00:00:00:00:01", port_id=port)
    )
    assert [(e.vlan_id, e.mac_addr) for e in store.mac_table(bridge.id)] == [
        (0, "02:00:00:00:00:01"),
        (0, "02:00:00:00:00:02"),
        (7, "02:00:00:00:00:01"),
    ]
    store.forget_mac(bridge.id, 0, "02:00:00:00:00:02")
    assert len(store.mac_table(bridge.id)) == 2
    store.nsdb.state_set(tables.mac_table(bridge.id), "garbage", "x")
    assert len(store.mac_table(bridge.id)) == 2  # malformed entries are skipped

    expiry = time.time() + 30
    for ip in ("10.0.0.10", "10.0.0.9"):
        store.put_arp(
            router.id, tables.ArpEntry(ip_addr=ip, mac_addr="02:00:00:00:00:03", expiry=expiry)
        )
    assert [e.ip_addr for e in store.arp_table(router.id)] == ["10.0.0.9", "10.0.0.10"]
    assert store.arp_table(router.id)[0].expiry == pytest.approx(expiry)
    store.forget_arp(router.id, "10.0.0.9")
    assert [e.ip_addr for e in store.arp_table(router.id)] == ["10.0.0.10"]
    with pytest.raises(NotFound):
        store.mac_table(new_id())
    with pytest.raises(NotFound):
        store.arp_table(bridge.id)


def test_unbinding_or_deleting_a_port_forgets_the_macs_learned_on_it(nsdb_factory: Any) -> None:
    """The agent that learned the entries owns them (its session); the API's store
    removes them anyway, so that the MAC is flooded and learned where it lives now."""
    agent, api = TopologyStore(nsdb_factory()), TopologyStore(nsdb_factory())
    host_id = new_id()
    agent.register_host(host_id, "h1", [])
    bridge, other = api.create(Bridge()), api.create(Bridge())
    p1, p2, p3 = (bridge_port(api, bridge) for _ in range(3))
    q = bridge_port(api, other)
    api.bind(host_id, p1.id, "vm1")
    api.bind(host_id, p2.id, "vm2")

    def learn(bridge_id: str, mac: str, port_id: str, vlan: int = 0) -> None:
        entry = tables.MacEntry(vlan_id=vlan, mac_addr=mac, port_id=port_id)
        agent.learn_mac(bridge_id, entry)

    learn(bridge.id, "02:00:00:00:00:01", p1.id)
    learn(bridge.id, "02:00:00:00:00:01", p1.id, vlan=5)
    learn(bridge.id, "02:00:00:00:00:02", p2.id)
    learn(bridge.id, "02:00:00:00:00:03", p3.id)
    learn(other.id, "02:00:00:00:00:01", q.id)

    def macs(bridge_id: str) -> list[tuple[int, str, str]]:
        return [(e.vlan_id, e.mac_addr, str(e.port_id)) for e in api.mac_table(bridge_id)]

    api.unbind(host_id, p1.id)
    assert macs(bridge.id) == [(0, "02:00:00:00:00:02", p2.id), (0, "02:00:00:00:00:03", p3.id)]
    api.delete(Port, p2.id)
    assert macs(bridge.id) == [(0, "02:00:00:00:00:03", p3.id)]
    assert macs(other.id) == [(0, "02:00:00:00:00:01", q.id)]  # another bridge: untouched
    api.bind(host_id, p3.id, "vm3")  # a port that moves keeps its MACs
    assert macs(bridge.id) == [(0, "02:00:00:00:00:03", p3.id)]
    api.delete(Bridge, bridge.id)
    assert api.nsdb.state_get(tables.mac_table(bridge.id)) == {}
    assert macs(other.id) == [(0, "02:00:00:00:00:01", q.id)]
