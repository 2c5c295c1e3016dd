"""Host registration, liveness and the learned state tables."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tessera.model import Bridge, Host, Router, new_id
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
