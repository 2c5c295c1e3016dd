"""Ports: interior or exterior, bridge or router — the invariants the store and the
simulation rely on, refused at the model so no layer above has to re-check them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tessera.model import KINDS, Bridge, Port, Route, Router, new_id


def router_port(**extra: object) -> Port:
    fields: dict[str, object] = {
        "device_id": new_id(),
        "type": "Router",
        "port_address": "10.0.0.1",
        "network_address": "10.0.0.0",
        "network_length": 24,
    }
    fields.update(extra)
    return Port.model_validate(fields)


def test_a_router_port_needs_its_address_and_network() -> None:
    with pytest.raises(ValidationError, match="needs port_address, network_address"):
        Port(device_id=new_id(), type="Router")


def test_a_router_port_address_lies_in_its_network() -> None:
    assert router_port(network_address="10.0.0.7").network_length == 24  # host bits allowed
    with pytest.raises(ValidationError, match=r"is not in 10\.0\.1\.0/24"):
        router_port(network_address="10.0.1.0")


def test_router_fields_are_refused_on_bridge_ports_and_vlan_on_router_ports() -> None:
    with pytest.raises(ValidationError, match="apply to router ports only"):
        Port(device_id=new_id(), type="Bridge", port_address="10.0.0.1")
    with pytest.raises(ValidationError, match="vlan_id applies to bridge ports only"):
        router_port(vlan_id=10)
    assert Port(device_id=new_id(), type="Bridge", vlan_id=4095).vlan_id == 4095
    with pytest.raises(ValidationError):
        Port(device_id=new_id(), type="Bridge", vlan_id=4096)


def test_a_port_is_linked_or_bound_never_both() -> None:
    with pytest.raises(ValidationError, match="not both"):
        Port(
            device_id=new_id(),
            type="Bridge",
            peer_id=new_id(),
            host_id=new_id(),
            interface_name="veth0",
        )
    linked = Port(device_id=new_id(), type="Bridge", peer_id=new_id())
    assert linked.is_interior and not linked.is_exterior
    bound = Port(device_id=new_id(), type="Bridge", host_id=new_id(), interface_name="veth0")
    assert bound.is_exterior and not bound.is_interior


def test_a_binding_names_both_host_and_interface() -> None:
    with pytest.raises(ValidationError, match="set together"):
        Port(device_id=new_id(), type="Bridge", host_id=new_id())
    with pytest.raises(ValidationError, match="set together"):
        Port(device_id=new_id(), type="Bridge", interface_name="veth0")


def test_interface_names_fit_the_kernel_limit() -> None:
    with pytest.raises(ValidationError):
        Port(device_id=new_id(), type="Bridge", host_id=new_id(), interface_name="x" * 16)


def test_tunnel_keys_fit_a_vxlan_vni_below_its_commit_bit() -> None:
    assert Port(device_id=new_id(), type="Bridge", tunnel_key=(1 << 23) - 1).tunnel_key
    with pytest.raises(ValidationError):
        Port(device_id=new_id(), type="Bridge", tunnel_key=1 << 23)


def test_devices_are_hashable_so_snapshots_can_key_on_them() -> None:
    b = Bridge(name="b", inbound_mirror_ids=(new_id(),))
    assert hash(b) == hash(Bridge.model_validate(b.model_dump()))
    assert {Router(name="r")}  # a set of routers builds


def test_a_normal_route_needs_a_next_hop_port_and_on_link_gateway_is_none() -> None:
    with pytest.raises(ValidationError, match="needs next_hop_port"):
        Route(router_id=new_id(), dst_network_addr="0.0.0.0", dst_network_length=0)
    r = Route(
        router_id=new_id(),
        dst_network_addr="10.1.0.0",
        dst_network_length=16,
        next_hop_port=new_id(),
        next_hop_gateway="0.0.0.0",
    )
    assert r.next_hop_gateway is None
    assert (
        Route(
            router_id=new_id(), dst_network_addr="10.0.0.0", dst_network_length=8, type="BlackHole"
        ).next_hop_port
        is None
    )


def test_every_reference_names_known_kinds_and_declared_fields() -> None:
    for kind, cls in KINDS.items():
        assert cls.kind == kind
        for ref in cls.refs:
            assert ref.field in cls.model_fields, (kind, ref.field)
            for target in ref.targets:
                assert target in KINDS, (kind, ref.field, target)
            assert ref.on_delete in ("cascade", "nullify", "remove")
            assert not ref.delete_if_emptied or ref.many, (kind, ref.field)
        for field in cls.read_only:
            assert field in cls.model_fields, (kind, field)
