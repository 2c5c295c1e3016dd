"""Kernel against Python for `FlowStats.tcp_flags`: for random frames (every kind the
packet strategies make: TCP with any flags and IP options, short first fragments, later
fragments, UDP, ICMP, ARP, tagged or not), the flags the eBPF program ORs into a flow's
stats are exactly `tessera.datapath.frames.tcp_flags`, which the fake and userspace
datapaths use."""

from __future__ import annotations

import pytest
from hypothesis import event, example, given
from kdp_harness import Harness, at_port, seen
from test_kernel_vs_python_nat import CI, MAX_FRAME, SLOW, frames

from support.explore import explore_only
from tessera.datapath.base import Flow, Match, Output
from tessera.datapath.frames import tcp_flags

pytestmark = pytest.mark.root

# A FIN|ACK segment behind 40 bytes of IP options (the flags byte furthest in).
_ETH_IP = "02000000000e02000000000108004f00005000004000400600000a0000010a000002"
_TCP = "0fa0005000000001000000015011000000000000"  # ports seq ack off/flags ...
_FIN_BEHIND_OPTIONS = bytes.fromhex(_ETH_IP + "01" * 36 + "00" * 4 + _TCP)


def check(ebpf: Harness, data: bytes) -> None:
    if len(data) > MAX_FRAME:
        return
    want = tcp_flags(data)
    event("TCP flags" if want else "no TCP flags")
    match = Match.of(in_port=1)
    ebpf.dp.install(Flow(match, (Output(2),)))
    try:
        assert ebpf.exchange(1, data, expect=1) == seen([(at_port(2), data)])
        stats = ebpf.dp.stats(match)
        assert stats is not None and stats.packets == 1
        assert stats.tcp_flags == want, data.hex()
    finally:
        ebpf.dp.delete(match)


@CI
@given(frames())
@example(_FIN_BEHIND_OPTIONS)
def test_the_kernel_sees_the_tcp_flags_python_sees(ebpf_harness: Harness, data: bytes) -> None:
    check(ebpf_harness, data)


@pytest.mark.slow
@explore_only("a thousand random frames through a flow")
@SLOW
@given(frames())
def test_the_kernel_sees_the_tcp_flags_python_sees_many(ebpf_harness: Harness, data: bytes) -> None:
    check(ebpf_harness, data)
