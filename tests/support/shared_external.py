"""The commonest Neutron topology as raw model objects: tenants whose routers all have
their gateway on one shared external bridge (`router:external`), the way
`tessera.neutron` translates it — a router with an inbound and an outbound chain (a
floating IP's `dnat` and `rev_snat` in, its `snat` out), an interface linked to the
tenant's bridge, a gateway port linked to a port of the external bridge, routes to both
networks, and VM ports with a security group chain.

    tenant k:  VMs -- bridge k -- router k (10.k.0.1 | 203.0.113.k) --+
                                                                      |-- external bridge
    tenant j:  VMs -- bridge j -- router j (10.j.0.1 | 203.0.113.j) --+
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tessera.model import (
    Bridge,
    Chain,
    NatTarget,
    Port,
    PortRange,
    Route,
    Router,
    Rule,
    StoredObject,
    new_id,
)
from tessera.nsdb import indexes


@dataclass
class Tenant:
    bridge: Bridge
    router: Router
    vm_ports: list[Port]
    ext_port: Port  # the external bridge's port linked to the router's gateway
    gateway: Port
    objects: list[StoredObject] = field(default_factory=list)

    def ids(self) -> set[tuple[str, str]]:
        return {(o.kind, o.id) for o in self.objects}


def external_bridge() -> Bridge:
    return Bridge(name="ext")


def tenant(k: int, ext: Bridge, vms: int = 2, host: str | None = None) -> Tenant:
    """Tenant `k`: its VM ports bound to `host` if given (else to a host of their own),
    network 10.k.0.0/24, gateway 203.0.113.k, a floating IP 203.0.113.(100+k) for its
    first VM (k modulo 100: a cloud of more tenants reuses addresses, which what an
    agent loads does not depend on)."""
    a = (k - 1) % 100 + 1
    net, gw_ip, fip = f"10.{a}.0", f"203.0.113.{a}", f"203.0.113.{100 + a}"
    host = host or new_id()
    br = Bridge(name=f"net{k}")
    inbound, outbound = Chain(name=f"r{k}-in"), Chain(name=f"r{k}-out")
    rt = Router(name=f"r{k}", inbound_filter_id=inbound.id, outbound_filter_id=outbound.id)
    sg = Chain(name=f"sg{k}")
    uplink_id, rport_id, ext_port_id, gw_id = new_id(), new_id(), new_id(), new_id()
    uplink = Port(id=uplink_id, device_id=br.id, type="Bridge", peer_id=rport_id)
    rport = Port(
        id=rport_id, device_id=rt.id, type="Router", peer_id=uplink_id,
        port_address=f"{net}.1", network_address=f"{net}.0", network_length=24,
    )  # fmt: skip
    ext_port = Port(id=ext_port_id, device_id=ext.id, type="Bridge", peer_id=gw_id)
    gateway = Port(
        id=gw_id, device_id=rt.id, type="Router", peer_id=ext_port_id,
        port_address=gw_ip, network_address="203.0.113.0", network_length=24,
    )  # fmt: skip
    vm_ports = [
        Port(
            device_id=br.id,
            type="Bridge",
            host_id=host,
            interface_name=f"tap{k}-{i}",
            inbound_filter_id=sg.id,
        )
        for i in range(vms)
    ]
    first_vm = f"{net}.5"
    rules = [
        Rule(
            chain_id=inbound.id, type="dnat", in_ports=[gw_id], nw_dst_address=fip,
            nw_dst_length=32, nat_targets=[NatTarget(address_from=first_vm, address_to=first_vm)],
        ),
        Rule(chain_id=inbound.id, type="rev_snat", in_ports=[gw_id]),
        Rule(
            chain_id=outbound.id, type="snat", out_ports=[gw_id], nw_src_address=first_vm,
            nw_src_length=32, nat_targets=[NatTarget(address_from=fip, address_to=fip)],
        ),
        Rule(chain_id=sg.id, type="accept", nw_proto=6, tp_dst=PortRange(start=22, end=22)),
        Rule(chain_id=sg.id, type="drop"),
    ]  # fmt: skip
    inbound = inbound.model_copy(update={"rule_ids": [r.id for r in rules[:2]]})
    outbound = outbound.model_copy(update={"rule_ids": [rules[2].id]})
    sg = sg.model_copy(update={"rule_ids": [r.id for r in rules[3:]]})
    routes = [
        Route(
            router_id=rt.id,
            dst_network_addr=dst,
            dst_network_length=length,
            next_hop_port=port,
            next_hop_gateway=gateway_ip,
        )
        for dst, length, port, gateway_ip in (
            (f"{net}.0", 24, rport_id, None),
            ("203.0.113.0", 24, gw_id, None),
            ("0.0.0.0", 0, gw_id, "203.0.113.254"),
        )
    ]
    objects: list[StoredObject] = [
        br, rt, inbound, outbound, sg, uplink, rport, ext_port, gateway, *vm_ports,
        *rules, *routes,
    ]  # fmt: skip
    return Tenant(br, rt, vm_ports, ext_port, gateway, objects)


def cloud(tenants: int, me: str, vms: int = 2) -> tuple[Bridge, list[Tenant]]:
    """`tenants` tenants on one external bridge; tenant 1's VMs are bound to `me`."""
    ext = external_bridge()
    return ext, [tenant(k, ext, vms, me if k == 1 else None) for k in range(1, tenants + 1)]


def lookups(
    objects: list[StoredObject],
) -> tuple[dict[tuple[str, str], StoredObject], dict[indexes.IndexKey, set[str]]]:
    """`get` and `members` data for `agent.reach.reach` over these objects."""
    return {(o.kind, o.id): o for o in objects}, indexes.expected(objects)
