"""Chains and rules: MidoNet's firewall, evaluated in position order."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, model_validator

from tessera.model.base import Ref, StoredObject
from tessera.model.limits import MAX_NAT_TARGETS, MAX_PORTS_PER_CONDITION, MAX_RULES_PER_CHAIN
from tessera.model.text import STORED_CONTEXT, Name, is_stored
from tessera.model.types import IPv4Addr, MacAddr, PortRange, PrefixLen, TesseraModel, Uuid

RuleType = Literal[
    "accept", "drop", "reject", "return", "jump", "continue", "dnat", "snat", "rev_dnat", "rev_snat"
]
FlowAction = Literal["accept", "continue", "return"]
FragmentPolicy = Literal["any", "header", "nonheader", "unfragmented"]
NAT_TYPES = frozenset({"dnat", "snat"})
MIN_ETHERTYPE = 0x0600
"""IEEE 802.3: a type/length field below 0x0600 is a frame length, not an EtherType."""


class Chain(StoredObject):
    """An ordered list of rules; `rule_ids` is the order (a rule's position is its index+1)."""

    kind: ClassVar[str] = "chains"
    refs: ClassVar[tuple[Ref, ...]] = (Ref("rule_ids", ("rules",), "remove", many=True),)
    read_only: ClassVar[tuple[str, ...]] = ("id", "rule_ids")

    name: Name = ""
    tenant_id: Name | None = None
    rule_ids: list[Uuid] = Field(default_factory=list, max_length=MAX_RULES_PER_CHAIN)


class NatTarget(TesseraModel):
    address_from: IPv4Addr
    address_to: IPv4Addr
    port_from: int = Field(default=0, ge=0, le=65535)
    port_to: int = Field(default=0, ge=0, le=65535)

    @model_validator(mode="after")
    def _ordered(self) -> NatTarget:
        from ipaddress import IPv4Address

        if IPv4Address(self.address_from) > IPv4Address(self.address_to):
            raise ValueError("nat target address_from is greater than address_to")
        if self.port_from > self.port_to:
            raise ValueError("nat target port_from is greater than port_to")
        return self


class Conditions(TesseraModel):
    """Every condition a rule (or a mirror) can test; an unset field matches anything."""

    in_ports: list[Uuid] = Field(default_factory=list, max_length=MAX_PORTS_PER_CONDITION)
    out_ports: list[Uuid] = Field(default_factory=list, max_length=MAX_PORTS_PER_CONDITION)
    inv_in_ports: bool = False
    inv_out_ports: bool = False
    port_group: Uuid | None = None
    inv_port_group: bool = False
    ip_addr_group_src: Uuid | None = None
    ip_addr_group_dst: Uuid | None = None
    dl_type: int | None = Field(default=None, ge=0, le=0xFFFF)
    inv_dl_type: bool = False
    dl_src: MacAddr | None = None
    dl_src_mask: MacAddr | None = None
    dl_dst: MacAddr | None = None
    dl_dst_mask: MacAddr | None = None
    inv_dl_src: bool = False
    inv_dl_dst: bool = False
    nw_src_address: IPv4Addr | None = None
    nw_src_length: PrefixLen | None = None
    inv_nw_src: bool = False
    nw_dst_address: IPv4Addr | None = None
    nw_dst_length: PrefixLen | None = None
    inv_nw_dst: bool = False
    nw_proto: int | None = Field(default=None, ge=0, le=255)
    inv_nw_proto: bool = False
    tp_src: PortRange | None = None
    tp_dst: PortRange | None = None
    inv_tp_src: bool = False
    inv_tp_dst: bool = False
    match_forward_flow: bool = False
    match_return_flow: bool = False
    fragment_policy: FragmentPolicy | None = None

    @model_validator(mode="after")
    def _conditions(self, info: ValidationInfo) -> Conditions:
        if self.dl_type is not None and self.dl_type < MIN_ETHERTYPE and not is_stored(info):
            raise ValueError(
                f"dl_type {self.dl_type:#06x} is not an EtherType: values below 0x0600 are "
                "IEEE 802.3 frame lengths, which no rule can match"
            )
        if self.nw_src_address is not None and self.nw_src_length is None:
            object.__setattr__(self, "nw_src_length", 32)
        if self.nw_dst_address is not None and self.nw_dst_length is None:
            object.__setattr__(self, "nw_dst_length", 32)
        if self.nw_src_length is not None and self.nw_src_address is None:
            raise ValueError("nw_src_length needs nw_src_address")
        if self.nw_dst_length is not None and self.nw_dst_address is None:
            raise ValueError("nw_dst_length needs nw_dst_address")
        if self.dl_src_mask is not None and self.dl_src is None:
            raise ValueError("dl_src_mask needs dl_src")
        if self.dl_dst_mask is not None and self.dl_dst is None:
            raise ValueError("dl_dst_mask needs dl_dst")
        if self.match_forward_flow and self.match_return_flow:
            raise ValueError("match_forward_flow and match_return_flow exclude each other")
        has_tp = self.tp_src is not None or self.tp_dst is not None
        if self.fragment_policy is None:
            object.__setattr__(self, "fragment_policy", "header" if has_tp else "any")
        elif has_tp and self.fragment_policy not in ("header", "unfragmented"):
            raise ValueError(
                "a rule with tp_src or tp_dst needs fragment_policy 'header' or 'unfragmented'"
            )
        return self


class Rule(Conditions, StoredObject):
    """A rule of a chain. `position` is 1-based; on create it says where to insert."""

    kind: ClassVar[str] = "rules"
    refs: ClassVar[tuple[Ref, ...]] = (
        Ref("chain_id", ("chains",), "cascade"),
        Ref("jump_chain_id", ("chains",), "cascade"),
        Ref("in_ports", ("ports",), "remove", many=True, delete_if_emptied=True),
        Ref("out_ports", ("ports",), "remove", many=True, delete_if_emptied=True),
        Ref("port_group", ("port_groups",), "cascade"),
        Ref("ip_addr_group_src", ("ip_addr_groups",), "cascade"),
        Ref("ip_addr_group_dst", ("ip_addr_groups",), "cascade"),
    )
    read_only: ClassVar[tuple[str, ...]] = ("id", "chain_id")
    independent_fields: ClassVar[frozenset[str]] = frozenset({"position"})

    chain_id: Uuid
    type: RuleType
    position: int = Field(default=0, ge=0)
    jump_chain_id: Uuid | None = None
    nat_targets: list[NatTarget] = Field(default_factory=list, max_length=MAX_NAT_TARGETS)
    flow_action: FlowAction | None = None

    @model_validator(mode="after")
    def _action(self) -> Rule:
        if self.type == "jump":
            if self.jump_chain_id is None:
                raise ValueError("a jump rule needs jump_chain_id")
            if self.jump_chain_id == self.chain_id:
                raise ValueError("a jump rule cannot jump to its own chain")
        elif self.jump_chain_id is not None:
            raise ValueError("jump_chain_id applies to jump rules only")
        if self.type in NAT_TYPES:
            if not self.nat_targets:
                raise ValueError(f"a {self.type} rule needs at least one nat_targets entry")
            if self.flow_action is None:
                object.__setattr__(self, "flow_action", "accept")
        else:
            if self.nat_targets:
                raise ValueError("nat_targets apply to dnat and snat rules only")
            if self.type in ("rev_dnat", "rev_snat"):
                if self.flow_action is None:
                    object.__setattr__(self, "flow_action", "accept")
            elif self.flow_action is not None:
                raise ValueError("flow_action applies to NAT rules only")
        return self

    def conditions(self) -> Conditions:
        # From a validated rule: under STORED_CONTEXT, so a rule stored before a check
        # existed still yields its conditions.
        fields = {k: getattr(self, k) for k in Conditions.model_fields}
        return Conditions.model_validate(fields, context=STORED_CONTEXT)
