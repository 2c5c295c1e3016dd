"""Creating, reading and updating topology objects through the TopologyStore."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from store_helpers import bridge_port, router_port

from tessera.model import (
    Bridge,
    Chain,
    DhcpSubnet,
    Host,
    Port,
    PortGroup,
    Route,
    Router,
    Rule,
    new_id,
)
from tessera.model.devices import router_port_mac
from tessera.nsdb.errors import AlreadyExists, IntegrityError, NotFound
from tessera.nsdb.store import TUNNEL_KEY_COUNTER, TopologyStore, dhcp_subnet_id


def test_create_assigns_ids_unless_given_and_refuses_duplicates(store: TopologyStore) -> None:
    a = store.create(Bridge(name="a"))
    given = new_id()
    b = store.create(Bridge(id=given, name="b"))
    assert b.id == given and a.id != given
    with pytest.raises(AlreadyExists):
        store.create(Bridge(id=given, name="again"))
    assert store.get(Bridge, given).name == "b"
    assert {x.name for x in store.list(Bridge)} == {"a", "b"}


def test_get_unknown_is_not_found(store: TopologyStore) -> None:
    with pytest.raises(NotFound, match="bridge"):
        store.get(Bridge, new_id())


def test_ports_get_unique_tunnel_keys_and_server_owned_fields_are_reset(
    store: TopologyStore,
) -> None:
    bridge = store.create(Bridge())
    host = store.register_host(new_id(), "h", [])
    sneaky = Port(
        device_id=bridge.id,
        type="Bridge",
        tunnel_key=77,
        host_id=host.id,
        interface_name="eth9",
    )
    ports = [store.create(sneaky.model_copy(update={"id": new_id()})) for _ in range(5)]
    keys = [p.tunnel_key for p in ports]
    assert len(set(keys)) == 5 and 77 not in keys and all(k > 0 for k in keys)
    assert all(p.host_id is None and p.interface_name is None for p in ports)
    assert store.nsdb.next_id(TUNNEL_KEY_COUNTER) > max(keys)


def test_router_port_mac_is_generated_unique_and_locally_administered(store: TopologyStore) -> None:
    router = store.create(Router())
    p1 = router_port(store, router, "10.0.0.1")
    p2 = router_port(store, router, "10.0.1.1")
    assert p1.port_mac == router_port_mac(p1.tunnel_key) and p1.port_mac != p2.port_mac
    assert p1.port_mac is not None and int(p1.port_mac.split(":")[0], 16) & 0x02
    given = store.create(
        Port(
            device_id=router.id,
            type="Router",
            port_address="10.0.2.1",
            network_address="10.0.2.0",
            network_length=24,
            port_mac="02:AA:BB:CC:DD:EE",
        )
    )
    assert given.port_mac == "02:aa:bb:cc:dd:ee"


def test_port_device_must_exist_and_match_its_type(store: TopologyStore) -> None:
    bridge = store.create(Bridge())
    with pytest.raises(NotFound, match="router"):
        router_port(store, Router(id=bridge.id), "10.0.0.1")
    with pytest.raises(NotFound, match="bridge"):
        store.create(Port(device_id=new_id(), type="Bridge"))
    assert store.list(Port) == []


def test_one_port_per_vlan_on_a_bridge(store: TopologyStore) -> None:
    bridge = store.create(Bridge())
    other = store.create(Bridge())
    bridge_port(store, bridge, vlan_id=10)
    with pytest.raises(AlreadyExists, match="VLAN 10"):
        bridge_port(store, bridge, vlan_id=10)
    bridge_port(store, bridge, vlan_id=11)
    bridge_port(store, other, vlan_id=10)
    bridge_port(store, bridge)
    bridge_port(store, bridge)


def test_references_in_the_body_must_exist(store: TopologyStore) -> None:
    missing = new_id()
    with pytest.raises(IntegrityError, match="inbound_filter_id"):
        store.create(Bridge(inbound_filter_id=missing))
    chain = store.create(Chain())
    with pytest.raises(IntegrityError, match="in_ports"):
        store.create(Rule(chain_id=chain.id, type="drop", in_ports=[missing]))
    with pytest.raises(IntegrityError, match="jump_chain_id"):
        store.create(Rule(chain_id=chain.id, type="jump", jump_chain_id=missing))
    with pytest.raises(NotFound, match="chain"):
        store.create(Rule(chain_id=missing, type="drop"))
    assert store.list(Rule) == [] and store.get(Chain, chain.id).rule_ids == []


def test_route_next_hop_must_be_a_port_of_its_router(store: TopologyStore) -> None:
    r1, r2 = store.create(Router()), store.create(Router())
    p1, p2 = router_port(store, r1, "10.0.0.1"), router_port(store, r2, "10.0.1.1")
    route = store.create(
        Route(
            router_id=r1.id, dst_network_addr="0.0.0.0", dst_network_length=0, next_hop_port=p1.id
        )
    )
    assert store.routes_of(r1.id) == [route] and store.routes_of(r2.id) == []
    with pytest.raises(IntegrityError, match="not of router"):
        store.create(
            Route(
                router_id=r1.id,
                dst_network_addr="10.9.0.0",
                dst_network_length=16,
                next_hop_port=p2.id,
            )
        )
    with pytest.raises(IntegrityError, match="next_hop_port"):
        store.create(
            Route(
                router_id=r1.id,
                dst_network_addr="10.9.0.0",
                dst_network_length=16,
                next_hop_port=new_id(),
            )
        )
    with pytest.raises(IntegrityError, match="not of router"):
        store.update(Route, route.id, {**route.model_dump(), "next_hop_port": p2.id})
    blackhole = store.create(
        Route(router_id=r2.id, dst_network_addr="10.8.0.0", dst_network_length=16, type="BlackHole")
    )
    assert blackhole.next_hop_port is None


def _rule_ids(store: TopologyStore, chain: Chain) -> list[str]:
    return [r.id for r in store.rules_of(chain.id)]


def test_rule_positions_insert_append_and_refuse_gaps(store: TopologyStore) -> None:
    chain = store.create(Chain())
    a = store.create(Rule(chain_id=chain.id, type="accept"))
    b = store.create(Rule(chain_id=chain.id, type="drop"))
    c = store.create(Rule(chain_id=chain.id, type="drop", position=1))
    d = store.create(Rule(chain_id=chain.id, type="drop", position=3))
    e = store.create(Rule(chain_id=chain.id, type="drop", position=5))  # len+1 appends
    assert (a.position, b.position, c.position, d.position, e.position) == (1, 2, 1, 3, 5)
    assert _rule_ids(store, chain) == [c.id, a.id, d.id, b.id, e.id]
    assert [r.position for r in store.rules_of(chain.id)] == [1, 2, 3, 4, 5]
    assert store.get(Rule, b.id).position == 4
    with pytest.raises(IntegrityError, match="largest valid position is 6"):
        store.create(Rule(chain_id=chain.id, type="drop", position=7))
    assert len(store.rules_of(chain.id)) == 5


def test_rule_update_moves_it_and_keeps_its_chain(store: TopologyStore) -> None:
    chain, other = store.create(Chain()), store.create(Chain())
    a, b, c = (store.create(Rule(chain_id=chain.id, type="accept")) for _ in range(3))
    moved = store.update(Rule, c.id, {**c.model_dump(), "position": 1, "chain_id": other.id})
    assert moved.position == 1 and moved.chain_id == chain.id
    assert _rule_ids(store, chain) == [c.id, a.id, b.id]
    same = store.update(Rule, a.id, {"type": "drop", "nw_proto": 6})
    assert same.position == 2 and same.type == "drop" and same.nw_proto == 6
    with pytest.raises(IntegrityError, match="position 4"):
        store.update(Rule, a.id, {"type": "drop", "position": 4})


def test_update_has_put_semantics_and_ignores_read_only_fields(store: TopologyStore) -> None:
    chain = store.create(Chain())
    bridge = store.create(Bridge(name="b", tenant_id="t", inbound_filter_id=chain.id))
    updated = store.update(Bridge, bridge.id, {"name": "c", "id": new_id()})
    assert updated.id == bridge.id and updated.name == "c"
    assert updated.tenant_id is None and updated.inbound_filter_id is None  # not sent: default
    group = store.create(PortGroup(name="g"))
    port = bridge_port(store, bridge)
    store.add_port_group_port(group.id, port.id)
    renamed = store.update(PortGroup, group.id, {"name": "h", "port_ids": []})
    assert renamed.port_ids == [port.id]


def test_port_update_changes_filters_and_state_only(store: TopologyStore) -> None:
    chain = store.create(Chain())
    router = store.create(Router())
    port = router_port(store, router, "10.0.0.1")
    sent = {
        **port.model_dump(),
        "inbound_filter_id": chain.id,
        "admin_state_up": False,
        "tunnel_key": 999,
        "port_mac": port.port_mac.upper() if port.port_mac else None,
    }
    updated = store.update(Port, port.id, sent)
    assert updated.inbound_filter_id == chain.id and not updated.admin_state_up
    assert updated.tunnel_key == port.tunnel_key
    with pytest.raises(IntegrityError, match=r"port_address .* cannot be changed"):
        store.update(Port, port.id, {**sent, "port_address": "10.0.0.2"})
    assert store.update(Port, port.id, {}).inbound_filter_id is None  # PUT: not sent = default


def test_invalid_objects_are_refused_by_the_model(store: TopologyStore) -> None:
    router = store.create(Router())
    port = router_port(store, router, "10.0.0.1")
    with pytest.raises(ValidationError):
        store.update(
            Route,
            store.create(
                Route(
                    router_id=router.id,
                    dst_network_addr="0.0.0.0",
                    dst_network_length=0,
                    next_hop_port=port.id,
                )
            ).id,
            {"dst_network_addr": "x", "dst_network_length": 0},
        )


def test_dhcp_subnet_is_unique_per_bridge_and_prefix(store: TopologyStore) -> None:
    b1, b2 = store.create(Bridge()), store.create(Bridge())
    subnet = store.create(DhcpSubnet(bridge_id=b1.id, subnet_prefix="10.0.0.0", subnet_length=24))
    assert subnet.id == dhcp_subnet_id(b1.id, "10.0.0.0", 24)
    with pytest.raises(AlreadyExists, match=r"10\.0\.0\.0_24"):
        store.create(DhcpSubnet(bridge_id=b1.id, subnet_prefix="10.0.0.0", subnet_length=24))
    store.create(DhcpSubnet(bridge_id=b2.id, subnet_prefix="10.0.0.0", subnet_length=24))
    store.create(DhcpSubnet(bridge_id=b1.id, subnet_prefix="10.0.1.0", subnet_length=25))
    with pytest.raises(AlreadyExists, match=r"10\.0\.0\.0_24, which overlaps 10\.0\.0\.0/25"):
        store.create(DhcpSubnet(bridge_id=b1.id, subnet_prefix="10.0.0.0", subnet_length=25))
    with pytest.raises(IntegrityError, match="derived"):
        store.create(
            DhcpSubnet(id=new_id(), bridge_id=b1.id, subnet_prefix="10.1.0.0", subnet_length=24)
        )
    assert [s.key for s in store.dhcp_subnets_of(b1.id)] == ["10.0.0.0_24", "10.0.1.0_25"]
    assert store.dhcp_subnet(b1.id, "10.0.0.0_24") == subnet
    for bad in ("10.0.0.0_33", "10.0.0.0", "x_24", "10.0.0.0_24_1", "10.0.1.0_24"):
        with pytest.raises(NotFound):
            store.dhcp_subnet(b1.id, bad)
    changed = store.update_dhcp_subnet(
        b1.id,
        "10.0.0.0_24",
        {"subnet_prefix": "10.0.0.0", "subnet_length": 24, "default_gateway": "10.0.0.1"},
    )
    assert changed.default_gateway == "10.0.0.1"
    with pytest.raises(IntegrityError, match=r"subnet_length .* cannot be changed"):
        store.update_dhcp_subnet(b1.id, "10.0.0.0_24", {"subnet_length": 16})


def test_hosts_are_not_created_through_create(store: TopologyStore) -> None:
    with pytest.raises(IntegrityError, match="registered"):
        store.create(Host(name="h"))
