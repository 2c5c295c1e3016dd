"""Rules, chains, DHCP subnets and groups: what the model accepts and what it defaults,
as the REST contract states it (MidoNet's v1 semantics)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tessera.model import DhcpSubnet, Mirror, NatTarget, Rule, new_id
from tessera.model.rules import Conditions


def rule(**fields: object) -> Rule:
    base: dict[str, object] = {"chain_id": new_id(), "type": "accept"}
    base.update(fields)
    return Rule.model_validate(base)


def test_fragment_policy_defaults_to_header_with_l4_ports_else_any() -> None:
    assert rule().fragment_policy == "any"
    assert rule(tp_dst={"start": 80, "end": 80}).fragment_policy == "header"
    assert rule(tp_src={"start": 1, "end": 2}, fragment_policy="unfragmented").fragment_policy == (
        "unfragmented"
    )
    with pytest.raises(ValidationError, match="needs fragment_policy 'header' or 'unfragmented'"):
        rule(tp_dst={"start": 80, "end": 80}, fragment_policy="nonheader")


def test_an_address_without_length_is_a_host_and_a_length_needs_an_address() -> None:
    r = rule(nw_src_address="10.0.0.5", nw_dst_address="10.0.1.0", nw_dst_length=24)
    assert (r.nw_src_length, r.nw_dst_length) == (32, 24)
    with pytest.raises(ValidationError, match="nw_src_length needs nw_src_address"):
        rule(nw_src_length=24)
    with pytest.raises(ValidationError, match="dl_dst_mask needs dl_dst"):
        rule(dl_dst_mask="ff:ff:ff:00:00:00")


def test_forward_and_return_flow_exclude_each_other() -> None:
    assert rule(match_return_flow=True).match_return_flow
    with pytest.raises(ValidationError, match="exclude each other"):
        rule(match_forward_flow=True, match_return_flow=True)


def test_jump_rules_name_another_chain() -> None:
    chain = new_id()
    with pytest.raises(ValidationError, match="needs jump_chain_id"):
        rule(type="jump")
    with pytest.raises(ValidationError, match="its own chain"):
        rule(type="jump", chain_id=chain, jump_chain_id=chain)
    with pytest.raises(ValidationError, match="jump rules only"):
        rule(jump_chain_id=new_id())


def test_nat_rules_need_targets_and_default_to_accept() -> None:
    target = {"address_from": "203.0.113.1", "address_to": "203.0.113.1"}
    with pytest.raises(ValidationError, match="needs at least one nat_targets"):
        rule(type="snat")
    assert rule(type="snat", nat_targets=[target]).flow_action == "accept"
    assert rule(type="dnat", nat_targets=[target], flow_action="continue").flow_action == (
        "continue"
    )
    assert rule(type="rev_dnat").flow_action == "accept"
    with pytest.raises(ValidationError, match="dnat and snat rules only"):
        rule(nat_targets=[target])
    with pytest.raises(ValidationError, match="NAT rules only"):
        rule(flow_action="accept")


def test_nat_target_ranges_are_ordered() -> None:
    with pytest.raises(ValidationError, match="address_from is greater"):
        NatTarget(address_from="203.0.113.9", address_to="203.0.113.1")
    with pytest.raises(ValidationError, match="port_from is greater"):
        NatTarget(address_from="203.0.113.1", address_to="203.0.113.1", port_from=2, port_to=1)


def test_a_rules_conditions_are_exactly_its_condition_fields() -> None:
    r = rule(nw_proto=6, inv_nw_proto=True, dl_type=0x0800)
    c = r.conditions()
    assert isinstance(c, Conditions)
    assert (c.nw_proto, c.inv_nw_proto, c.dl_type) == (6, True, 0x0800)
    assert set(Conditions.model_fields) <= set(Rule.model_fields)


def test_mirror_conditions_carry_the_rule_references() -> None:
    fields = {ref.field for ref in Mirror.condition_refs}
    assert {"in_ports", "out_ports", "port_group", "ip_addr_group_src"} <= fields
    assert "chain_id" not in fields and "jump_chain_id" not in fields


def subnet(**fields: object) -> DhcpSubnet:
    base: dict[str, object] = {
        "bridge_id": new_id(),
        "subnet_prefix": "10.0.0.0",
        "subnet_length": 24,
    }
    base.update(fields)
    return DhcpSubnet.model_validate(base)


def test_dhcp_subnet_addresses_lie_inside_it() -> None:
    assert subnet(default_gateway="10.0.0.1").key == "10.0.0.0_24"
    with pytest.raises(ValidationError, match="host bits set"):
        subnet(subnet_prefix="10.0.0.1")
    with pytest.raises(ValidationError, match=r"default_gateway 10\.0\.1\.1 is not in"):
        subnet(default_gateway="10.0.1.1")
    with pytest.raises(ValidationError, match="server_addr"):
        subnet(server_addr="192.0.2.1")


def test_dhcp_hosts_are_unique_and_inside_the_subnet() -> None:
    h = {"mac_addr": "02:00:00:00:00:01", "ip_addr": "10.0.0.10"}
    assert subnet(hosts=[h]).hosts[0].ip_addr == "10.0.0.10"
    with pytest.raises(ValidationError, match="MAC 02:00:00:00:00:01 appears twice"):
        subnet(hosts=[h, {**h, "ip_addr": "10.0.0.11"}])
    with pytest.raises(ValidationError, match=r"address 10\.0\.0\.10 appears twice"):
        subnet(hosts=[h, {**h, "mac_addr": "02:00:00:00:00:02"}])
    with pytest.raises(ValidationError, match=r"is not in 10\.0\.0\.0/24"):
        subnet(hosts=[{**h, "ip_addr": "10.0.1.10"}])


@pytest.mark.parametrize("length", [31, 32])
def test_a_dhcp_subnet_leaves_room_for_hosts(length: int) -> None:
    with pytest.raises(ValidationError, match="less than or equal to 30"):
        subnet(subnet_prefix="10.0.0.0", subnet_length=length)
