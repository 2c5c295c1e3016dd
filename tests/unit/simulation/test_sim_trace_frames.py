"""Every packet description the trace accepts makes a frame the simulation can parse: a
description is the client's input, so a frame that fails to parse would be a server
error for a client mistake (the API must answer 4xx)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tessera.packet.match import FlowMatch
from tessera.simulation.trace import PacketDescription

PORT = "6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b"
_IPS = st.one_of(st.none(), st.sampled_from(["10.0.0.1", "10.0.0.2", "0.0.0.0"]))

descriptions = st.fixed_dictionaries(
    {"port_id": st.just(PORT), "src_mac": st.just("02:00:00:00:00:01")},
    optional={
        "dst_mac": st.sampled_from(["ff:ff:ff:ff:ff:ff", "02:00:00:00:00:02"]),
        "vlan_id": st.one_of(st.none(), st.integers(0, 4095)),
        "eth_type": st.one_of(
            st.none(), st.sampled_from([0x0800, 0x0806, 0x8100, 0x86DD, 0x88B5]),
            st.integers(0x0600, 0xFFFF),
        ),
        "src_ip": _IPS,
        "dst_ip": _IPS,
        "protocol": st.one_of(
            st.none(), st.sampled_from(["tcp", "udp", "icmp", "arp"]), st.integers(0, 255)
        ),
        "dst_port": st.one_of(st.none(), st.integers(0, 65535)),
        "arp_op": st.sampled_from(["request", "reply"]),
        "ttl": st.integers(0, 255),
        "fragment": st.sampled_from(["none", "first", "later"]),
    },
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(descriptions)
def test_an_accepted_description_always_parses(body: dict[str, object]) -> None:
    try:
        desc = PacketDescription.model_validate(body)
    except ValidationError:
        return  # refused with a message: a 422
    FlowMatch.from_frame(desc.port_id, desc.frame())
