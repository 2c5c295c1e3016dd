"""Checks that need other objects hold between racing writers, on both backends: the
write that commits second is redone from fresh reads and then refused (issue 13,
item 6)."""

from __future__ import annotations

from typing import Any

import pytest
from store_helpers import BeforeCommit, router_port

from tessera.model import Bridge, DhcpSubnet, Port, Router
from tessera.nsdb.errors import AlreadyExists
from tessera.nsdb.store import TopologyStore


def test_racing_ports_of_one_router_in_one_subnet_one_wins(nsdb_factory: Any) -> None:
    first = TopologyStore(nsdb_factory())
    router = first.create(Router())
    second = TopologyStore(
        BeforeCommit(nsdb_factory(), lambda: router_port(first, router, "10.0.0.1"))  # type: ignore[arg-type]
    )
    with pytest.raises(AlreadyExists, match=r"overlaps 10\.0\.0\.0/24"):
        router_port(second, router, "10.0.0.2")
    assert [p.port_address for p in first.list(Port)] == ["10.0.0.1"]


def test_racing_ports_of_one_router_with_one_mac_one_wins(nsdb_factory: Any) -> None:
    first = TopologyStore(nsdb_factory())
    router = first.create(Router())
    mac = "02:aa:00:00:00:09"

    def port(store: TopologyStore, addr: str) -> Port:
        return store.create(
            Port(device_id=router.id, type="Router", port_address=addr,
                 network_address=addr, network_length=24, port_mac=mac)
        )  # fmt: skip

    second = TopologyStore(BeforeCommit(nsdb_factory(), lambda: port(first, "10.0.0.1")))  # type: ignore[arg-type]
    with pytest.raises(AlreadyExists, match=f"port_mac {mac}"):
        port(second, "10.0.1.1")
    assert [p.port_address for p in first.list(Port)] == ["10.0.0.1"]


def test_racing_overlapping_dhcp_subnets_of_one_bridge_one_wins(nsdb_factory: Any) -> None:
    first = TopologyStore(nsdb_factory())
    bridge = first.create(Bridge())

    def subnet(store: TopologyStore, prefix: str, length: int) -> DhcpSubnet:
        return store.create(
            DhcpSubnet(bridge_id=bridge.id, subnet_prefix=prefix, subnet_length=length)
        )

    second = TopologyStore(
        BeforeCommit(nsdb_factory(), lambda: subnet(first, "10.0.0.0", 24))  # type: ignore[arg-type]
    )
    with pytest.raises(AlreadyExists, match=r"overlaps 10\.0\.0\.0/16"):
        subnet(second, "10.0.0.0", 16)
    assert [s.key for s in first.dhcp_subnets_of(bridge.id)] == ["10.0.0.0_24"]
