"""The kernel's NAT rewrites and `frames.run_actions` agree byte for byte, on random
frames and random rewrites.

The fake and userspace datapaths execute NAT in Python (`frames.nat`), the eBPF one in
the kernel with the csum helpers (`nat_rewrite` in tessera_dp.c); the two must produce
the same bytes, checksums included, for whatever the packet strategies draw: TCP, UDP
(with and without a checksum), ICMP of any type, first and later fragments, transport
headers cut short, IP options, tenant tags, ARP and other EtherTypes. The flow matches
everything entering port 1 and runs rewrites with an output to port 3 somewhere among
them (a copy taking the rewrites so far) and one to port 2 at the end.

The CI variant is derandomized (a fixed sequence of 50 examples, each a few tenths of a
second of real traffic: the same ones every run, so more would only cost time); the
`slow` one (`HYPOTHESIS_PROFILE=explore`) draws a thousand fresh ones at random.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from kdp_harness import Harness, at_port, seen

from support.explore import explore_only
from support.packet_strategies import arps, ipv4s, small_payloads
from tessera.datapath.base import (
    Action,
    Flow,
    Match,
    Output,
    SetEthDst,
    SetIpDst,
    SetIpSrc,
    SetTpDst,
    SetTpSrc,
)
from tessera.datapath.frames import run_actions
from tessera.packet import ETH_TYPE_ARP, ETH_TYPE_IPV4, PROTO_ICMP, PROTO_UDP, Ethernet, Icmp, IPv4

pytestmark = pytest.mark.root

MAC_IN, MAC_OUT = 0x0200_0000_0E01, 0x0200_0000_0E02
MAX_FRAME = 1514  # the veths' MTU plus the Ethernet header
# No explain phase: a failing example waits for outputs that never come (seconds each).
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]
CI = settings(
    derandomize=True, max_examples=50, deadline=None, database=None, phases=PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)  # fmt: skip
SLOW = settings(
    max_examples=1000, deadline=None, phases=PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)  # fmt: skip

u16 = st.integers(0, 0xFFFF)
ips = st.integers(0, 0xFFFF_FFFF)
nat_actions: st.SearchStrategy[Action] = st.one_of(
    st.builds(SetIpSrc, ips),
    st.builds(SetIpDst, ips),
    st.builds(SetTpSrc, u16),
    st.builds(SetTpDst, u16),
    st.builds(SetEthDst, st.integers(0, (1 << 48) - 1)),
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Padded to the 60 bytes of a wire's shortest frame (with bytes no rewrite may
    touch: padding is not the packet's), as veths drop runts."""
    data = draw(unpadded_frames())
    return data + draw(st.binary(min_size=max(0, 60 - len(data)), max_size=max(0, 60 - len(data))))


@st.composite
def unpadded_frames(draw: st.DrawFn) -> bytes:
    """Mostly IPv4 (of every kind the strategies make, a UDP checksum now and then
    zeroed), some ARP and other EtherTypes; untagged or with a tenant tag."""
    kind = draw(st.sampled_from(["ipv4"] * 8 + ["arp", "other"]))
    vlan = draw(st.sampled_from([None] * 3 + [0, 42]))
    if kind == "arp":
        eth = Ethernet(MAC_OUT, MAC_IN, ETH_TYPE_ARP, draw(arps), vlan)
        return eth.build()
    if kind == "other":
        return Ethernet(MAC_OUT, MAC_IN, 0x88B5, draw(small_payloads), vlan).build()
    ip: IPv4 = draw(ipv4s())
    data = Ethernet(MAC_OUT, MAC_IN, ETH_TYPE_IPV4, ip, vlan).build()
    if ip.proto == PROTO_UDP and not ip.is_fragment and draw(st.booleans()):
        at = (18 if vlan is not None else 14) + 20 + len(ip.options) + 6
        data = data[:at] + b"\0\0" + data[at + 2 :]
        event("UDP without checksum")
    return data


@st.composite
def nat_flows(draw: st.DrawFn) -> tuple[Action, ...]:
    rewrites = draw(st.lists(nat_actions, min_size=1, max_size=6))
    copy_at = draw(st.integers(0, len(rewrites)))
    return (*rewrites[:copy_at], Output(3), *rewrites[copy_at:], Output(2))


def check(ebpf: Harness, frame: bytes, actions: tuple[Action, ...]) -> None:
    if len(frame) > MAX_FRAME:
        return
    ran = run_actions(frame, actions)
    want = seen([(at_port(o.port), data) for o, data in ran.outputs if isinstance(o, Output)])
    event("dropped by a NAT rewrite" if ran.dropped else f"{len(want.outputs)} outputs")
    ebpf.dp.install(Flow(Match.of(in_port=1), actions))
    assert ebpf.exchange(1, frame, expect=want.count()) == want, (frame.hex(), actions)


@CI
@given(frames(), nat_flows())
def test_the_kernel_rewrites_what_python_rewrites(
    ebpf_harness: Harness, frame: bytes, actions: tuple[Action, ...]
) -> None:
    check(ebpf_harness, frame, actions)


@pytest.mark.slow
@explore_only("a thousand random NAT rewrites")
@SLOW
@given(frames(), nat_flows())
def test_the_kernel_rewrites_what_python_rewrites_many(
    ebpf_harness: Harness, frame: bytes, actions: tuple[Action, ...]
) -> None:
    check(ebpf_harness, frame, actions)


@st.composite
def echo_frames(draw: st.DrawFn) -> bytes:
    """ICMP echo requests and replies (rare among random ICMP types), whole or a first
    fragment, with or without IP options and a tenant tag: what SNAT rewrites the id of."""
    echo = Icmp(draw(st.sampled_from([0, 8])), draw(st.integers(0, 255)), draw(u16),
                draw(u16), draw(small_payloads))  # fmt: skip
    options = draw(st.sampled_from([b"", b"\x01\x01\x01\x00"]))
    ip = IPv4(draw(ips), draw(ips), PROTO_ICMP, echo, ttl=draw(st.integers(1, 255)),
              more_fragments=draw(st.booleans()), options=options)  # fmt: skip
    vlan = draw(st.sampled_from([None, 42]))
    data = Ethernet(MAC_OUT, MAC_IN, ETH_TYPE_IPV4, ip, vlan).build()
    return data + bytes(max(0, 60 - len(data)))


@CI
@given(echo_frames(), st.lists(st.builds(SetTpSrc, u16), min_size=1, max_size=3), ips)
def test_the_kernel_rewrites_an_echo_id_as_python_does(
    ebpf_harness: Harness, frame: bytes, ids: list[SetTpSrc], addr: int
) -> None:
    """SNAT of a ping (address and id, then the reply's reverse) fixes the ICMP checksum
    the same way in the kernel and in Python."""
    check(ebpf_harness, frame, (SetIpSrc(addr), *ids, Output(3), SetIpDst(addr), Output(2)))
