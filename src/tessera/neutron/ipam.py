"""IPv4 address management for Neutron subnets: default allocation pools, their checks,
and picking a free address for a port."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable

from tessera.model.neutron import AllocationPool
from tessera.neutron.errors import bad_request, conflict

IPv4 = ipaddress.IPv4Address


def default_pools(net: ipaddress.IPv4Network, gateway: str | None) -> list[AllocationPool]:
    """Every host address of the subnet except the gateway, as Neutron computes them."""
    first, last = net.network_address + 1, net.broadcast_address - 1
    if first > last:
        return []
    pools: list[AllocationPool] = []
    gw = IPv4(gateway) if gateway else None
    if gw is None or not first <= gw <= last:
        return [AllocationPool(start=str(first), end=str(last))]
    if first < gw:
        pools.append(AllocationPool(start=str(first), end=str(gw - 1)))
    if gw < last:
        pools.append(AllocationPool(start=str(gw + 1), end=str(last)))
    return pools


def check_pools(
    net: ipaddress.IPv4Network, pools: list[AllocationPool], gateway: str | None
) -> None:
    """Pools inside the subnet's host range, ordered start..end, not overlapping, not
    holding the gateway (Neutron's 400s and its 409 GatewayConflictWithAllocationPools)."""
    first, last = net.network_address + 1, net.broadcast_address - 1
    spans = []
    for pool in pools:
        start, end = IPv4(pool.start), IPv4(pool.end)
        if start > end or not (first <= start and end <= last):
            raise bad_request(
                f"The allocation pool {pool.start}-{pool.end} spans beyond the subnet cidr {net}.",
                "OutOfBoundsAllocationPool",
            )
        spans.append((start, end))
    spans.sort()
    for (_, end1), (start2, end2) in itertools.pairwise(spans):
        if start2 <= end1:
            raise bad_request(
                f"Found overlapping allocation pools: {start2}-{end2} overlaps another pool.",
                "OverlappingAllocationPools",
            )
    if gateway:
        gw = IPv4(gateway)
        for start, end in spans:
            if start <= gw <= end:
                raise conflict(
                    "GatewayConflictWithAllocationPools",
                    f"Gateway ip {gateway} conflicts with allocation pool {start}-{end}.",
                )


def free_address(pools: list[AllocationPool], used: Iterable[str]) -> str | None:
    """The lowest pool address not in `used`; None when the pools are exhausted."""
    taken = {IPv4(u) for u in used}
    for pool in sorted(pools, key=lambda p: IPv4(p.start)):
        addr = IPv4(pool.start)
        end = IPv4(pool.end)
        while addr <= end:
            if addr not in taken:
                return str(addr)
            addr += 1
    return None
