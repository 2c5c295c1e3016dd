"""Names become single ZooKeeper path components, reversibly, whatever they contain."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.model import (
    Bridge,
    Chain,
    Conditions,
    DhcpHost,
    DhcpSubnet,
    Host,
    IpAddrGroup,
    Mirror,
    NatTarget,
    Port,
    PortGroup,
    PortRange,
    Route,
    Router,
    Rule,
    StoredObject,
    TunnelZone,
    TunnelZoneHost,
    new_id,
)
from tessera.nsdb.codec import (
    MAX_COMMIT_BYTES,
    MAX_OBJECT_BYTES,
    OP_OVERHEAD_BYTES,
    check_commit_size,
    decode_object,
    describe,
    encode_object,
    escape_component,
    kind_of,
    unescape_component,
)
from tessera.nsdb.errors import ObjectTooLarge

_ZK_FORBIDDEN = {chr(c) for c in range(0x00, 0x20)} | {chr(c) for c in range(0x7F, 0xA0)}


@given(st.text())
def test_escape_is_reversible_and_yields_one_valid_component(name: str) -> None:
    component = escape_component(name)
    assert unescape_component(component) == name
    assert component
    assert "/" not in component
    assert component not in {".", ".."}
    assert not set(component) & _ZK_FORBIDDEN
    assert component.isascii()


@given(st.text(), st.text())
def test_distinct_names_never_share_a_component(a: str, b: str) -> None:
    if a != b:
        assert escape_component(a) != escape_component(b)


@pytest.mark.parametrize(
    ("name", "component"),
    [
        ("6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b", "6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b"),
        ("aa:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee:ff"),
        ("10.0.0.1", "10.0.0.1"),
        ("mac_table/br-1", "mac_table%2Fbr-1"),
        ("", "%"),
        (".", "%2E"),
        ("..", "%2E%2E"),
        ("%", "%25"),
        ("é", "%C3%A9"),
    ],
)
def test_common_names_stay_readable(name: str, component: str) -> None:
    assert escape_component(name) == component


@pytest.mark.parametrize("bad", ["%G0", "%2", "abc%"])
def test_unescape_refuses_what_escape_cannot_produce(bad: str) -> None:
    with pytest.raises(ValueError):
        unescape_component(bad)


def test_objects_round_trip_through_json() -> None:
    chain = Chain(name="c")
    rule = Rule(chain_id=chain.id, type="accept", position=1, in_ports=[chain.id])
    assert decode_object("rules", encode_object(rule)) == rule
    assert kind_of(rule) == "rules"


def test_kind_of_refuses_unregistered_classes() -> None:
    class Custom(Bridge):
        pass

    with pytest.raises(ValueError, match="not the registered class"):
        kind_of(Custom())


def test_describe_names_the_object_for_humans() -> None:
    assert describe("bridges", "x") == "bridge x"
    assert describe("ip_addr_groups", "y") == "ip addr group y"


def _typical_objects() -> list[StoredObject]:
    """One object of every kind, some fields left at their defaults and some not."""
    bridge, router, chain = Bridge(name="b"), Router(name="r", admin_state_up=False), Chain()
    port = Port(
        device_id=router.id,
        type="Router",
        port_address="10.0.0.1",
        network_address="10.0.0.0",
        network_length=24,
        port_mac="02:00:00:00:00:01",
        tunnel_key=7,
    )
    return [
        bridge,
        router,
        chain,
        port,
        Port(device_id=bridge.id, type="Bridge", vlan_id=0),
        Route(router_id=router.id, dst_network_addr="0.0.0.0", dst_network_length=0,
              next_hop_port=port.id, weight=100),
        Rule(chain_id=chain.id, type="dnat", nw_src_address="10.0.0.1",
             nat_targets=[NatTarget(address_from="1.1.1.1", address_to="1.1.1.1")]),
        PortGroup(stateful=True, port_ids=[port.id]),
        IpAddrGroup(addrs=["10.0.0.1"]),
        Host(name="h", alive=True),
        TunnelZone(hosts=[TunnelZoneHost(host_id=new_id(), ip_address="198.18.0.1")]),
        DhcpSubnet(bridge_id=bridge.id, subnet_prefix="10.0.0.0", subnet_length=24,
                   hosts=[DhcpHost(mac_addr="02:00:00:00:00:02", ip_addr="10.0.0.2")]),
        Mirror(to_port_id=port.id, conditions=[Conditions(), Conditions(nw_proto=6)]),
    ]  # fmt: skip


@pytest.mark.parametrize("obj", _typical_objects(), ids=lambda o: o.kind)
def test_only_fields_that_differ_from_their_default_are_stored(obj: StoredObject) -> None:
    data = json.loads(encode_object(obj))
    assert data["id"] == obj.id
    for name, value in data.items():
        if name != "id":
            default = type(obj).model_fields[name].get_default(call_default_factory=True)
            assert value != default, name
    assert decode_object(obj.kind, encode_object(obj)) == obj


@pytest.mark.parametrize("obj", _typical_objects(), ids=lambda o: o.kind)
def test_objects_stored_in_full_by_earlier_versions_still_load(obj: StoredObject) -> None:
    assert decode_object(obj.kind, obj.model_dump_json()) == obj


def test_a_mirror_of_thousands_of_conditions_stores_compactly() -> None:
    """The issue's mirror: 3,000 small conditions, ~1.8 MB in full form (built without
    validation: the model's list limit now refuses it first)."""
    conditions = [Conditions(nw_proto=6, tp_dst=PortRange(start=p, end=p)) for p in range(3000)]
    mirror = Mirror.model_construct(id=new_id(), to_port_id=new_id(), conditions=conditions)
    full, compact = len(mirror.model_dump_json()), len(encode_object(mirror))
    assert full > 1_500_000 and compact * 8 < full, (full, compact)


def test_an_object_above_the_limit_is_refused_naming_both_sizes() -> None:
    group = IpAddrGroup.model_construct(id=new_id(), name="", addrs=["10.0.0.1"] * 60_000)
    with pytest.raises(ObjectTooLarge) as info:
        encode_object(group)
    message = str(info.value)
    assert f"ip addr group {group.id}" in message
    assert "limit of 524288 bytes (512 KiB)" in message
    size = len(group.model_dump_json(exclude_defaults=True))
    assert f"take {size} bytes" in message


def test_a_transaction_is_bounded_by_its_total_size() -> None:
    check_commit_size([MAX_OBJECT_BYTES])
    with pytest.raises(ObjectTooLarge, match="2 objects"):
        check_commit_size([MAX_OBJECT_BYTES, MAX_OBJECT_BYTES])
    # Operations cost their framing too: thousands of deletes are bounded as well.
    with pytest.raises(ObjectTooLarge):
        check_commit_size([0] * (MAX_COMMIT_BYTES // OP_OVERHEAD_BYTES))
    assert MAX_COMMIT_BYTES < 0xFFFFF  # ZooKeeper's default jute.maxbuffer
