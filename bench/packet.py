"""Micro-benchmark of the packet layer: frames parsed and matched per second.

The simulation budget is >= 20,000 packets/s on one core, so turning a frame into a
FlowMatch must cost a few microseconds at most. The floor (one struct unpack of the
Ethernet header) is measured in the same run, so the ratios survive a slower machine.

    .venv/bin/python bench/packet.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import struct
import time
from collections.abc import Callable
from functools import partial

from tessera.packet import (
    BROADCAST_IP,
    BROADCAST_MAC,
    ETH_TYPE_IPV4,
    Dhcp,
    Ethernet,
    FlowMatch,
    Icmp,
    IPv4,
    Tcp,
    Udp,
    arp_request,
    complete_l4_checksum,
    dhcp,
)

PORT = "6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b"
VM, ROUTER = 0x020000000001, 0x0200000000FE
SRC, DST = 0x0A000005, 0x0A010009


def frames() -> dict[str, bytes]:
    def ip(proto: int, l4: Tcp | Udp | Icmp) -> bytes:
        return Ethernet(ROUTER, VM, ETH_TYPE_IPV4, IPv4(SRC, DST, proto, l4)).build()

    discover = Dhcp(op=1, xid=7, chaddr=VM, message_type=dhcp.DISCOVER, hostname="vm")
    return {
        "tcp 1460B": ip(6, Tcp(40000, 443, flags=0x18, payload=bytes(1460))),
        "udp 64B": ip(17, Udp(5353, 53, bytes(64))),
        "icmp echo": ip(1, Icmp(8, 0, 1, 1, bytes(56))),
        "arp request": arp_request(VM, SRC, DST).build(),
        "dhcp discover": Ethernet(
            BROADCAST_MAC, VM, ETH_TYPE_IPV4, IPv4(0, BROADCAST_IP, 17, Udp(68, 67, discover))
        ).build(),
    }


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second, in batches so the clock is read rarely."""
    batch, calls, start = 1000, 0, time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls / elapsed


def match_and_read(frame: bytes) -> Callable[[], object]:
    """What a bridge + router hop typically reads, then the megaflow key."""

    def run() -> object:
        m = FlowMatch.from_frame(PORT, frame)
        _ = m.in_port, m.eth_dst, m.eth_type, m.ip_dst, m.ip_ttl, m.tp_dst
        return m.masked_key()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    args = parser.parse_args()
    eth = struct.Struct("!6s6sH")
    sample = frames()["udp 64B"]
    baseline = rate(lambda: eth.unpack_from(sample), args.seconds)

    print(f"baseline (one header unpack): {baseline:,.0f}/s\n")
    header = f"{'frame':<14} {'match+read+key/s':>17} {'full parse/s':>13} {'build/s':>10}"
    print(header + f" {'csum fix/s':>11} {'match µs':>9} {'vs base':>8}")
    for name, frame in frames().items():
        matched = rate(match_and_read(frame), args.seconds)
        parsed = rate(partial(Ethernet.parse, frame), args.seconds)
        packet = Ethernet.parse(frame)
        built = rate(packet.build, args.seconds)
        fixed = rate(partial(complete_l4_checksum, frame), args.seconds)
        print(
            f"{name:<14} {matched:>17,.0f} {parsed:>13,.0f} {built:>10,.0f} {fixed:>11,.0f}"
            f" {1e6 / matched:>9.2f} {baseline / matched:>7.1f}x"
        )


if __name__ == "__main__":
    main()
