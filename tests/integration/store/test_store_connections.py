"""Links, bindings and set members through the TopologyStore."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from store_helpers import bridge_port, router_port

from tessera.model import (
    Bridge,
    DhcpHost,
    DhcpSubnet,
    IpAddrGroup,
    Port,
    PortGroup,
    Router,
    TunnelZone,
    TunnelZoneHost,
    new_id,
)
from tessera.nsdb.errors import AlreadyExists, IntegrityError, NotFound
from tessera.nsdb.store import Binding, TopologyStore


def test_link_joins_both_ports_and_unlink_separates_them(store: TopologyStore) -> None:
    b1, b2, r1, r2 = (store.create(c()) for c in (Bridge, Bridge, Router, Router))
    bp1, bp2 = bridge_port(store, b1), bridge_port(store, b2)
    rp1, rp2, rp3 = (
        router_port(store, r, a) for r, a in ((r1, "10.0.0.1"), (r1, "10.0.1.1"), (r2, "10.0.2.1"))
    )
    for a, b in ((bp1, bp2), (rp1, rp3), (bp2, rp2)):  # bridge-bridge, router-router, b-r
        store.unlink(bp2.id)  # no-op unless bp2 is already linked
        linked = store.link(a.id, b.id)
        assert linked.peer_id == b.id and store.get(Port, b.id).peer_id == a.id
        assert store.link(a.id, b.id).peer_id == b.id  # linking again changes nothing
    store.unlink(rp2.id)
    assert store.get(Port, rp2.id).peer_id is None and store.get(Port, bp2.id).peer_id is None
    assert store.unlink(rp2.id).peer_id is None


def test_link_refusals(store: TopologyStore) -> None:
    bridge, router = store.create(Bridge()), store.create(Router())
    a, b, c = bridge_port(store, bridge), bridge_port(store, bridge), bridge_port(store, bridge)
    rp = router_port(store, router, "10.0.0.1")
    rp2 = router_port(store, router, "10.0.1.1")
    with pytest.raises(IntegrityError, match="itself"):
        store.link(a.id, a.id)
    with pytest.raises(IntegrityError, match="different devices"):
        store.link(a.id, b.id)
    with pytest.raises(IntegrityError, match="peer_id"):
        store.link(a.id, new_id())
    with pytest.raises(NotFound):
        store.link(new_id(), a.id)
    store.link(a.id, rp.id)
    with pytest.raises(AlreadyExists, match="already linked"):
        store.link(c.id, rp.id)
    host = store.register_host(new_id(), "h", [])
    store.bind(host.id, c.id, "tap0")
    with pytest.raises(AlreadyExists, match="bound"):
        store.link(c.id, rp2.id)
    with pytest.raises(AlreadyExists, match="linked"):
        store.bind(host.id, a.id, "tap1")
    assert store.get(Port, rp2.id).peer_id is None


def test_bind_unbind_and_interface_uniqueness(store: TopologyStore) -> None:
    bridge = store.create(Bridge())
    p1, p2 = bridge_port(store, bridge), bridge_port(store, bridge)
    h1 = store.register_host(new_id(), "h1", ["198.18.0.1"])
    h2 = store.register_host(new_id(), "h2", ["198.18.0.2"])
    assert store.bind(h1.id, p1.id, "tap0") == Binding(h1.id, p1.id, "tap0")
    assert store.bind(h1.id, p1.id, "tap0") == Binding(h1.id, p1.id, "tap0")  # idempotent
    with pytest.raises(AlreadyExists, match="tap0"):
        store.bind(h1.id, p2.id, "tap0")
    store.bind(h2.id, p2.id, "tap0")  # the same name on another host is another interface
    assert store.bindings(h1.id) == [Binding(h1.id, p1.id, "tap0")]
    store.bind(h2.id, p1.id, "tap1")  # re-binding moves the port
    assert store.bindings(h1.id) == []
    assert [b.port_id for b in store.bindings(h2.id)] == [p2.id, p1.id]
    with pytest.raises(NotFound, match="not bound"):
        store.unbind(h1.id, p1.id)
    store.unbind(h2.id, p1.id)
    port = store.get(Port, p1.id)
    assert port.host_id is None and port.interface_name is None
    for bad in ("", "a/b", "x" * 16, "has space", ".."):
        with pytest.raises(IntegrityError, match="interface name"):
            store.bind(h1.id, p1.id, bad)
    with pytest.raises(IntegrityError, match="port_id"):
        store.bind(h1.id, new_id(), "tap9")
    with pytest.raises(NotFound, match="host"):
        store.bind(new_id(), p1.id, "tap9")


def test_port_group_members(store: TopologyStore) -> None:
    group = store.create(PortGroup(name="g", stateful=True))
    bridge = store.create(Bridge())
    p1, p2 = bridge_port(store, bridge), bridge_port(store, bridge)
    store.add_port_group_port(group.id, p1.id)
    store.add_port_group_port(group.id, p2.id)
    assert store.port_group_ports(group.id) == [p1.id, p2.id]
    with pytest.raises(AlreadyExists):
        store.add_port_group_port(group.id, p1.id)
    with pytest.raises(IntegrityError, match="port_id"):
        store.add_port_group_port(group.id, new_id())
    store.remove_port_group_port(group.id, p1.id)
    with pytest.raises(NotFound):
        store.remove_port_group_port(group.id, p1.id)
    assert store.port_group_ports(group.id) == [p2.id]


def test_ip_addr_group_addresses(store: TopologyStore) -> None:
    group = store.create(IpAddrGroup(name="g"))
    assert store.add_ip_addr(group.id, "10.0.0.1") == "10.0.0.1"
    store.add_ip_addr(group.id, "10.0.0.2")
    with pytest.raises(AlreadyExists):
        store.add_ip_addr(group.id, "10.0.0.1")
    with pytest.raises(IntegrityError):
        store.add_ip_addr(group.id, "10.0.0.300")
    store.remove_ip_addr(group.id, "10.0.0.1")
    for absent in ("10.0.0.1", "nonsense"):
        with pytest.raises(NotFound):
            store.remove_ip_addr(group.id, absent)
    assert store.ip_addr_group_addrs(group.id) == ["10.0.0.2"]


def test_tunnel_zone_members(store: TopologyStore) -> None:
    zone = store.create(TunnelZone(name="z"))
    h1 = store.register_host(new_id(), "h1", [])
    h2 = store.register_host(new_id(), "h2", [])
    m1 = TunnelZoneHost(host_id=h1.id, ip_address="198.18.0.1")
    store.add_tunnel_zone_host(zone.id, m1)
    with pytest.raises(AlreadyExists, match="already in"):
        store.add_tunnel_zone_host(zone.id, m1)
    with pytest.raises(AlreadyExists, match="address"):
        store.add_tunnel_zone_host(zone.id, TunnelZoneHost(host_id=h2.id, ip_address="198.18.0.1"))
    with pytest.raises(IntegrityError, match="host_id"):
        store.add_tunnel_zone_host(
            zone.id, TunnelZoneHost(host_id=new_id(), ip_address="198.18.0.9")
        )
    store.add_tunnel_zone_host(zone.id, TunnelZoneHost(host_id=h2.id, ip_address="198.18.0.2"))
    store.remove_tunnel_zone_host(zone.id, h1.id)
    with pytest.raises(NotFound):
        store.remove_tunnel_zone_host(zone.id, h1.id)
    assert [h.host_id for h in store.tunnel_zone_hosts(zone.id)] == [h2.id]


def test_dhcp_hosts(store: TopologyStore) -> None:
    bridge = store.create(Bridge())
    store.create(DhcpSubnet(bridge_id=bridge.id, subnet_prefix="10.0.0.0", subnet_length=24))
    key = "10.0.0.0_24"
    a = DhcpHost(mac_addr="02:00:00:00:00:0A", ip_addr="10.0.0.10", name="a")
    store.add_dhcp_host(bridge.id, key, a)
    assert store.dhcp_host(bridge.id, key, "02-00-00-00-00-0a").ip_addr == "10.0.0.10"
    with pytest.raises(AlreadyExists):
        store.add_dhcp_host(bridge.id, key, a)
    with pytest.raises(AlreadyExists, match=r"10\.0\.0\.10"):
        store.add_dhcp_host(
            bridge.id, key, DhcpHost(mac_addr="02:00:00:00:00:0b", ip_addr="10.0.0.10")
        )
    with pytest.raises(ValueError, match="not in"):
        store.add_dhcp_host(
            bridge.id, key, DhcpHost(mac_addr="02:00:00:00:00:0c", ip_addr="10.1.0.1")
        )
    moved = store.replace_dhcp_host(
        bridge.id, key, a.mac_addr, DhcpHost(mac_addr=a.mac_addr, ip_addr="10.0.0.11")
    )
    assert store.dhcp_hosts(bridge.id, key) == [moved]
    store.remove_dhcp_host(bridge.id, key, a.mac_addr)
    with pytest.raises(NotFound):
        store.dhcp_host(bridge.id, key, a.mac_addr)
    with pytest.raises(NotFound):
        store.dhcp_hosts(bridge.id, "10.9.0.0_24")


def test_a_bind_reads_the_host_ports_together(store: TopologyStore) -> None:
    """The interface-name check reads the host's other ports in one `get_many`, not one
    `get` each (a bind on a host with 200 ports took 88 ms at 10,000 ports)."""
    host = store.register_host(new_id(), "h", ["198.18.0.1"])
    br = store.create(Bridge(name="b"))
    for i in range(12):
        port = store.create(Port(device_id=br.id, type="Bridge"))
        store.bind(host.id, port.id, f"tap{i}")
    new = store.create(Port(device_id=br.id, type="Bridge"))
    nsdb = store.nsdb
    batches: list[int] = []
    single: list[str] = []
    real_get, real_get_many = nsdb.get, nsdb.get_many
    inside = [False]

    def get(kind: str, id: str) -> Any:
        if kind == Port.kind and not inside[0]:
            single.append(id)
        return real_get(kind, id)

    def get_many(kind: str, ids: Any) -> Any:
        batches.append(len(ids))
        inside[0] = True  # a backend without its own reads each with `get`
        try:
            return real_get_many(kind, ids)
        finally:
            inside[0] = False

    with mock.patch.object(nsdb, "get", get), mock.patch.object(nsdb, "get_many", get_many):
        store.bind(host.id, new.id, "tap99")
        with pytest.raises(AlreadyExists, match="tap3"):
            store.bind(host.id, new.id, "tap3")
    assert single == [new.id, new.id]  # the port bound, once per transaction
    assert batches == [12, 12]  # its neighbours together (`new` was read already)
