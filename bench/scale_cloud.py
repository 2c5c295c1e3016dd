"""The scale bench's cloud: tenants written through the NSDB, in parallel processes, and
the realization barrier that says when agents have applied everything written so far.

A tenant is what a Neutron project usually is: a router, `bridges` networks linked to
it, a filter chain (`rules` rules) on every network, and `ports_per_bridge` VM ports
per network, each created and bound in one transaction to one of the tenant's hosts.
Through the router every VM port reaches every other, so the agents concerned by a
change to a tenant are exactly the hosts of its VM ports.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

from tessera.model import Bridge, Chain, Port, Router, Rule, StoredObject
from tessera.model.types import PortRange
from tessera.nsdb import tables
from tessera.nsdb.base import Create
from tessera.nsdb.realization import REALIZE_COUNTER, REALIZED, decode_report, request_table
from tessera.nsdb.store.connections import Binding
from tessera.nsdb.store.topology import TUNNEL_KEY_COUNTER, TopologyStore
from tessera.nsdb.zookeeper import ZookeeperNsdb


@dataclass(frozen=True)
class Layout:
    bridges: int = 2
    ports_per_bridge: int = 5
    rules: int = 2

    @property
    def vm_ports(self) -> int:
        return self.bridges * self.ports_per_bridge

    @property
    def objects(self) -> int:
        """NSDB objects per tenant: router, bridges, chain, rules, two ports per link,
        VM ports."""
        return 1 + self.bridges + 1 + self.rules + 2 * self.bridges + self.vm_ports

    @property
    def ports(self) -> int:
        return 2 * self.bridges + self.vm_ports


@dataclass
class Tenant:
    index: int
    router: str
    chain: str
    bridges: list[str]
    vm_ports: dict[str, str] = field(default_factory=dict)  # port id -> host id

    @property
    def hosts(self) -> set[str]:
        return set(self.vm_ports.values())


def build_tenant(nsdb: ZookeeperNsdb, index: int, hosts: Sequence[str], layout: Layout) -> Tenant:
    """Write tenant `index` in one NSDB transaction; its VM ports go round-robin to
    `hosts`.

    The objects are the ones `TopologyStore` would write for the same API calls
    (members filled in, links on both sides, ports with their tunnel keys and bindings),
    committed at once: through the store, every bind and router port lists every port
    of the cloud to check uniqueness, and a cloud of 10,000 ports could not be written
    in the time of a bench (`vm_port`, which the bind samples use, goes through it)."""
    a, b = (index // 250) % 250, index % 250

    def uid() -> str:
        return str(uuid.uuid4())

    def key() -> int:
        return nsdb.next_id(TUNNEL_KEY_COUNTER)

    chain_id = uid()
    rules = [
        Rule(id=uid(), chain_id=chain_id, type="accept", nw_proto=6,
             tp_dst=PortRange(start=8000 + r, end=8000 + r))
        for r in range(layout.rules)
    ]  # fmt: skip
    chain = Chain(id=chain_id, name=f"t{index}-fw", rule_ids=[r.id for r in rules])
    router = Router(id=uid(), name=f"t{index}-rt")
    objs: list[StoredObject] = [chain, *rules, router]
    tenant = Tenant(index, router.id, chain.id, [])
    n = 0
    for k in range(layout.bridges):
        bridge = Bridge(id=uid(), name=f"t{index}-net{k}", inbound_filter_id=chain.id)
        tenant.bridges.append(bridge.id)
        rport_id, uplink_id = uid(), uid()
        rport = Port(
            id=rport_id, device_id=router.id, type="Router",
            port_address=f"10.{a}.{b}.{1 + 16 * k}", network_address=f"10.{a}.{b}.{16 * k}",
            network_length=28,
            port_mac=f"02:00:{a:02x}:{b:02x}:{k:02x}:01", peer_id=uplink_id, tunnel_key=key(),
        )  # fmt: skip
        uplink = Port(
            id=uplink_id, device_id=bridge.id, type="Bridge", peer_id=rport_id, tunnel_key=key()
        )
        objs += [bridge, rport, uplink]
        for _ in range(layout.ports_per_bridge):
            host = hosts[n % len(hosts)]
            n += 1
            port_id = uid()
            objs.append(
                Port(
                    id=port_id, device_id=bridge.id, type="Bridge", host_id=host,
                    interface_name=f"tap{port_id[:11]}", tunnel_key=key(),
                )
            )  # fmt: skip
            tenant.vm_ports[port_id] = host
    nsdb.commit([Create(o) for o in objs])
    return tenant


def vm_port(store: TopologyStore, bridge: str, host: str, port_id: str | None = None) -> str:
    """Create a VM port on `bridge` bound to `host`, in one transaction; its id."""
    port_id = port_id or str(uuid.uuid4())
    ifname = f"tap{port_id[:11]}"
    store.create(Port(id=port_id, device_id=bridge, type="Bridge"), Binding(host, port_id, ifname))
    return port_id


def _build_range(
    zk_hosts: str, root: str, first: int, count: int, hosts: Sequence[str], per_tenant: int,
    layout: Layout,
) -> list[Tenant]:  # fmt: skip
    """Tenants `first`..`first+count-1` (a builder process's share); tenant i's ports go
    to `per_tenant` consecutive hosts starting at i * per_tenant."""
    nsdb = ZookeeperNsdb(zk_hosts, root, op_timeout=30.0)
    try:
        out = []
        for i in range(first, first + count):
            start = (i * per_tenant) % len(hosts)
            mine = [hosts[(start + j) % len(hosts)] for j in range(per_tenant)]
            out.append(build_tenant(nsdb, i, mine, layout))
        return out
    finally:
        nsdb.close()


def build_tenants(
    zk_hosts: str, root: str, first: int, count: int, hosts: Sequence[str], per_tenant: int,
    layout: Layout, processes: int = 3,
) -> list[Tenant]:  # fmt: skip
    """Write `count` tenants from `processes` builder processes (each its own session)."""
    if count <= 0:
        return []
    if count < 20:  # not worth starting processes
        return _build_range(zk_hosts, root, first, count, hosts, per_tenant, layout)
    processes = max(1, min(processes, count // 4 or 1))
    share = -(-count // processes)
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(
                _build_range, zk_hosts, root, s, min(share, first + count - s), list(hosts),
                per_tenant, layout,
            )
            for s in range(first, first + count, share)
        ]  # fmt: skip
        return [t for f in futures for t in f.result()]


def ghost_hosts(store: TopologyStore, count: int) -> list[str]:
    """Hosts that exist but run no agent (ports of the rest of the cloud are bound to
    them): registered, then their liveness entries removed, so that no `--wait` waits
    for them."""
    out = []
    for i in range(count):
        host_id = str(uuid.uuid4())
        store.register_host(host_id, f"ghost{i}", [f"198.19.{i // 250}.{i % 250 + 1}"])
        store.nsdb.state_delete(tables.HOST_LIVENESS, host_id)
        out.append(host_id)
    return out


def realized(nsdb: ZookeeperNsdb, hosts: Sequence[str], timeout: float) -> float | None:
    """Seconds until every agent of `hosts` has applied everything committed before
    this call (the `--wait` request and report tables, `tessera.nsdb.realization`);
    None if one had not within `timeout`."""
    t0 = time.monotonic()
    seq = nsdb.next_id(REALIZE_COUNTER)
    for host in hosts:
        nsdb.state_set(request_table(host), str(seq), "", ephemeral=True)
    try:
        pending = set(hosts)
        while pending and time.monotonic() - t0 < timeout:
            reports = nsdb.state_get(REALIZED)
            for host in list(pending):
                report = decode_report(reports[host]) if host in reports else None
                if report is not None and report.seq >= seq:
                    pending.discard(host)
            if pending:
                time.sleep(0.05)
        return None if pending else time.monotonic() - t0
    finally:
        for host in hosts:
            with contextlib.suppress(Exception):
                nsdb.state_delete(request_table(host), str(seq))
