"""Traffic between tenants across a shared external bridge, with agents that load only
what their ports reach up to the depth limit (`agent.reach`, issue 17).

    VM1 (h1) -- net1 -- r1 (gw 203.0.113.1, FIP1 .101) --+
    VM2 (h2) -- net2 -- r2 (gw 203.0.113.2, FIP2 .102) --+-- ext
                net3 -- r3 (gw 203.0.113.3, FIP3 .103) --+

h1 loads net1, r1 and ext; r2 and r3 are fronts there (router, inbound filter, gateway
port). VM1's packet to FIP2 makes r1 ARP on ext (a flood into every router: r2's front
answers for its floating IP, r3's drops it), then enters r2, which h1 loads on demand
(and net2 behind it) before the packet reaches VM2 on h2; r3 stays a front. The reply
does the same on h2 with r1.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_harness import Cloud, Host, Vm
from test_agent_stateful import chain, udp, udp_of

from tessera.model import Bridge, Route, Router
from tessera.packet import Ethernet
from tessera.packet.addr import ip_from_str, mac_from_str

BROADCAST = 0xFFFF_FFFF_FFFF


def rp_mac(k: int) -> str:
    return f"02:7e:00:00:{k:02x}:01"


def gw_mac(k: int) -> str:
    return f"02:7e:00:00:{k:02x}:02"


@dataclass
class Tenant:
    k: int
    bridge: Bridge
    router: Router
    fip: str
    vm: Vm | None = None


def tenant(cloud: Cloud, ext: Bridge, k: int, host: Host | None) -> Tenant:
    """Tenant k: net 10.0.k.0/24 behind router rk, whose gateway 203.0.113.k is on ext;
    VM 10.0.k.5 (on `host`, if given) with floating IP 203.0.113.(100+k)."""
    br, rt = cloud.bridge(f"net{k}"), cloud.router(f"r{k}")
    rp = cloud.router_port(rt, f"10.0.{k}.1/24", rp_mac(k))
    gw = cloud.router_port(rt, f"203.0.113.{k}/24", gw_mac(k))
    cloud.topo.link(rp.id, cloud.bridge_port(br).id)
    cloud.topo.link(gw.id, cloud.bridge_port(ext).id)
    for port, net in ((rp, f"10.0.{k}.0"), (gw, "203.0.113.0")):
        cloud.topo.create(
            Route(
                router_id=rt.id, dst_network_addr=net, dst_network_length=24,
                next_hop_port=port.id,
            )
        )  # fmt: skip
    fixed, fip = f"10.0.{k}.5", f"203.0.113.{100 + k}"
    inbound = chain(
        cloud, f"r{k}-in",
        {"type": "dnat", "in_ports": [gw.id], "nw_dst_address": fip, "nw_dst_length": 32,
         "nat_targets": [{"address_from": fixed, "address_to": fixed}]},
    )  # fmt: skip
    outbound = chain(
        cloud, f"r{k}-out",
        {"type": "snat", "out_ports": [gw.id], "nw_src_address": fixed, "nw_src_length": 32,
         "nat_targets": [{"address_from": fip, "address_to": fip}]},
    )  # fmt: skip
    cloud.topo.update(
        Router, rt.id, {"inbound_filter_id": inbound.id, "outbound_filter_id": outbound.id}
    )
    t = Tenant(k, br, rt, fip)
    if host is not None:
        t.vm = cloud.vm(host, br, f"tap{k}", f"02:00:00:00:{k:02x}:05", fixed)
    return t


def holds(h: Host, t: Tenant) -> str:
    """What host `h`'s agent holds of tenant `t`'s router: "loaded", "front" or "none"."""
    cache = h.agent.cache
    if cache.is_loaded((Router.kind, t.router.id)):
        return "loaded"
    with cache.state.lock:
        front = t.router.id in cache.state.fronts
    return "front" if front and cache.get(Router.kind, t.router.id) is not None else "none"


def holds_bridge(h: Host, t: Tenant) -> bool:
    return (Bridge.kind, t.bridge.id) in h.agent.cache.held()


def deliver(cloud: Cloud, src: Vm, to: Tenant, frame: bytes) -> list[bytes]:
    """`src` sends `frame`; `to`'s VM answers its router's ARP request if one comes.
    The (non-ARP) frames that VM received."""
    dst = to.vm
    assert dst is not None
    cloud.send(src, frame)
    got = cloud.received(dst)
    if any(Ethernet.parse(f).dst == BROADCAST for f in got):
        router_ip = ip_from_str(f"10.0.{to.k}.1")
        cloud.send(dst, dst.arp_reply(mac_from_str(rp_mac(to.k)), router_ip))
        got = cloud.received(dst)
    return [f for f in got if Ethernet.parse(f).dst != BROADCAST]


def test_a_vm_reaches_another_tenants_floating_ip_through_a_router_loaded_on_demand(
    cloud: Cloud,
) -> None:
    h1, h2 = cloud.host("h1", "198.18.0.1"), cloud.host("h2", "198.18.0.2")
    ext = cloud.bridge("ext")
    t1, t2, t3 = tenant(cloud, ext, 1, h1), tenant(cloud, ext, 2, h2), tenant(cloud, ext, 3, None)
    cloud.settle()
    assert t1.vm is not None and t2.vm is not None
    vm1, vm2 = t1.vm, t2.vm

    # Before: each host holds its tenant and ext; the other routers are fronts only.
    assert (holds(h1, t1), holds(h1, t2), holds(h1, t3)) == ("loaded", "front", "front")
    assert (holds(h2, t1), holds(h2, t2), holds(h2, t3)) == ("front", "loaded", "front")
    assert h1.agent.cache.is_loaded((Bridge.kind, ext.id))
    assert not holds_bridge(h1, t2) and not holds_bridge(h1, t3)
    held_before = len(h1.agent.cache.held())
    assert h1.agent.status()["topology"] == {"objects": held_before, "devices": 3, "fronts": 2}

    # VM1 -> FIP2: r1 SNATs to FIP1, ARPs for FIP2 on ext, r2 (loaded on demand on h1)
    # DNATs to VM2.
    out = udp(vm1, mac_from_str(rp_mac(1)), ip_from_str(t2.fip), 40000, 53)
    (got,) = deliver(cloud, vm1, t2, out)
    assert udp_of(got) == (t1.fip, 40000, "10.0.2.5", 53)
    assert Ethernet.parse(got).src == mac_from_str(rp_mac(2))

    assert (holds(h1, t2), holds(h1, t3)) == ("loaded", "front")
    assert holds_bridge(h1, t2) and not holds_bridge(h1, t3)  # net2 on demand too
    assert len(h1.agent.cache.held()) > held_before
    assert h1.agent.status()["topology"]["devices"] == 5  # + r2 and net2

    # The reply: VM2 -> FIP1, r1 loaded on demand on h2 the same way.
    assert holds(h2, t1) == "front"
    back = udp(vm2, mac_from_str(rp_mac(2)), ip_from_str(t1.fip), 53, 40000)
    (reply,) = deliver(cloud, vm2, t1, back)
    assert udp_of(reply) == (t2.fip, 53, "10.0.1.5", 40000)
    assert (holds(h2, t1), holds(h2, t3)) == ("loaded", "front")

    # The flows are in place: the next packets go by the datapaths alone.
    cloud.send(vm1, out)
    assert [udp_of(f) for f in cloud.received(vm2)] == [(t1.fip, 40000, "10.0.2.5", 53)]


def test_an_arp_flood_on_the_external_bridge_loads_no_other_router(cloud: Cloud) -> None:
    """r1 asks ext who has an address nobody owns: the request floods into every
    router on ext, whose fronts drop it, and h1 loads none of them."""
    h1 = cloud.host("h1", "198.18.0.1")
    ext = cloud.bridge("ext")
    t1 = tenant(cloud, ext, 1, h1)
    others = [tenant(cloud, ext, k, None) for k in range(2, 8)]
    cloud.settle()
    assert t1.vm is not None
    held = set(h1.agent.cache.held())
    cloud.send(t1.vm, udp(t1.vm, mac_from_str(rp_mac(1)), ip_from_str("203.0.113.77"), 1, 2))
    assert [holds(h1, t) for t in others] == ["front"] * len(others)
    assert set(h1.agent.cache.held()) == held
    assert not [p for p in h1.agent.upcall.parked.values() if p.waiting_for]


def test_a_local_bind_keeps_what_was_loaded_on_demand_and_an_unbind_lets_it_go(
    cloud: Cloud,
) -> None:
    """A new VM on h1 only adds to what h1's ports reach: r2, loaded on demand for VM1's
    traffic, stays (dropping it would cost the next packet to FIP2 another load). A VM
    leaving h1 may have been the way to it: then only the closure is kept."""
    h1, h2 = cloud.host("h1", "198.18.0.1"), cloud.host("h2", "198.18.0.2")
    ext = cloud.bridge("ext")
    t1, t2 = tenant(cloud, ext, 1, h1), tenant(cloud, ext, 2, h2)
    cloud.settle()
    assert t1.vm is not None and t2.vm is not None
    out = udp(t1.vm, mac_from_str(rp_mac(1)), ip_from_str(t2.fip), 40000, 53)
    assert deliver(cloud, t1.vm, t2, out)
    assert holds(h1, t2) == "loaded"

    second = cloud.vm(h1, t1.bridge, "tap9", "02:00:00:00:01:09", "10.0.1.9")
    cloud.settle()
    assert second.port_id in h1.agent.cache.bound_ports()
    assert holds(h1, t2) == "loaded"

    cloud.topo.unbind(h1.host_id, second.port_id)
    cloud.settle()
    assert second.port_id not in h1.agent.cache.bound_ports()
    assert holds(h1, t2) == "front"
