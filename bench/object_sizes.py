"""How large topology objects are in the NSDB, and how many list entries fit.

For each list field that can grow (a mirror's conditions, a chain's rules, a group's
members, a DHCP subnet's hosts...), with realistic (fat) entries:

- `stored/entry`: bytes one entry adds to the stored (compact) form;
- `fits`: the most entries the NSDB's size check accepts (`codec.MAX_OBJECT_BYTES`),
  found by bisection on objects built without validation;
- `model`: whether the model itself accepts that many (its own list limits, if any,
  are then the binding ones: "no" means the model refuses before the NSDB would);
- `full/compact`: the stored size of 1,000 entries in the full JSON form of earlier
  versions and in today's compact form.

No ZooKeeper is needed: the limits are checked before anything is sent, alike for both
backends. Runs in a few seconds:

    .venv/bin/python bench/object_sizes.py
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tessera.model import (
    Chain,
    Conditions,
    DhcpHost,
    DhcpSubnet,
    IpAddrGroup,
    Mirror,
    NatTarget,
    Opt121Route,
    PortGroup,
    PortRange,
    Rule,
    StoredObject,
    TunnelZone,
    TunnelZoneHost,
    new_id,
)
from tessera.nsdb.codec import MAX_OBJECT_BYTES, encode_object
from tessera.nsdb.errors import ObjectTooLarge


@dataclass
class Case:
    name: str
    cls: type[StoredObject]
    fixed: dict[str, Any]
    field: str
    entry: Callable[[int], Any]


def _condition(i: int) -> Conditions:
    return Conditions(
        in_ports=[new_id(), new_id()],
        nw_src_address=f"10.{i >> 8 & 255}.{i & 255}.0",
        nw_src_length=24,
        nw_proto=6,
        tp_dst=PortRange(start=i % 65536, end=i % 65536),
    )


def _addr(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def _mac(i: int) -> str:
    return "02:00:" + ":".join(f"{b:02x}" for b in i.to_bytes(4, "big"))


CHAIN, BRIDGE = new_id(), new_id()
CASES = [
    Case("mirror.conditions", Mirror, {"to_port_id": new_id()}, "conditions", _condition),
    Case("chain.rule_ids", Chain, {}, "rule_ids", lambda i: new_id()),
    Case("rule.in_ports", Rule, {"chain_id": CHAIN, "type": "accept"}, "in_ports",
         lambda i: new_id()),
    Case("rule.nat_targets", Rule, {"chain_id": CHAIN, "type": "dnat"}, "nat_targets",
         lambda i: NatTarget(address_from=_addr(i), address_to=_addr(i), port_from=1,
                             port_to=65535)),
    Case("port_group.port_ids", PortGroup, {}, "port_ids", lambda i: new_id()),
    Case("ip_addr_group.addrs", IpAddrGroup, {}, "addrs", _addr),
    Case("tunnel_zone.hosts", TunnelZone, {}, "hosts",
         lambda i: TunnelZoneHost(host_id=new_id(), ip_address=_addr(i))),
    Case("dhcp_subnet.hosts (64-char names)", DhcpSubnet,
         {"bridge_id": BRIDGE, "subnet_prefix": "10.0.0.0", "subnet_length": 8}, "hosts",
         lambda i: DhcpHost(mac_addr=_mac(i), ip_addr=_addr(i + 1), name="h" * 64)),
    Case("dhcp_subnet.dns_server_addrs", DhcpSubnet,
         {"bridge_id": BRIDGE, "subnet_prefix": "10.0.0.0", "subnet_length": 8},
         "dns_server_addrs", _addr),
    Case("dhcp_subnet.opt121_routes", DhcpSubnet,
         {"bridge_id": BRIDGE, "subnet_prefix": "10.0.0.0", "subnet_length": 8},
         "opt121_routes",
         lambda i: Opt121Route(destination_prefix=_addr(i << 8), destination_length=24,
                               gateway_addr="10.0.0.1")),
]  # fmt: skip


def build(case: Case, entries: list[Any]) -> StoredObject:
    """The object with `entries`, without validation (the model's limits aside)."""
    base = case.cls.model_validate({**case.fixed, case.field: [case.entry(0)]})
    return case.cls.model_construct(**{**dict(base), case.field: entries})


def fits(case: Case, pool: list[Any]) -> int:
    """The most entries (up to len(pool)) whose object the NSDB's size check accepts."""
    low, high = 0, len(pool)
    while low < high:
        mid = (low + high + 1) // 2
        try:
            encode_object(build(case, pool[:mid]))
            low = mid
        except ObjectTooLarge:
            high = mid - 1
    return low


def model_accepts(case: Case, entries: list[Any]) -> bool:
    obj = build(case, entries)
    try:
        case.cls.model_validate(obj.model_dump())
    except ValidationError:
        return False
    return True


def main() -> None:
    print(f"NSDB limit per object: {MAX_OBJECT_BYTES} bytes (stored, compact form)\n")
    print(f"{'list':36} {'stored/entry':>12} {'fits':>7} {'model':>6} {'full/compact x1000':>22}")
    for case in CASES:
        pool = [case.entry(i) for i in range(40_000)]
        thousand = build(case, pool[:1000])
        compact = len(encode_object(thousand))
        full = len(thousand.model_dump_json())
        per = (compact - len(encode_object(build(case, pool[:1])))) / 999
        n = fits(case, pool)
        accepted = "yes" if model_accepts(case, pool[:n]) else "no"
        print(f"{case.name:36} {per:12.0f} {n:7} {accepted:>6} {full:>10} / {compact:<10}")


if __name__ == "__main__":
    main()
