"""The health monitor service on a real ZooKeeper, in-process: two nodes elect a leader,
the leader makes the router's probe port (bound to its host) and writes member and pool
statuses as real TCP listeners stop and start; its node dies and the other node takes
over, re-binds the probe port to its own host and goes on; the probe port goes when the
pool's monitor does, and the members come back ACTIVE.

The kernel half (probe namespaces, veths, probes through an agent) needs root and
agents: tests/system/lab/test_lab_lb_health.py. Here probes run from this process, each
member address mapped to a listener on 127.0.0.1 (member addresses cannot be loopback
ones)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from support.wait import wait_until
from tessera.cluster import ClusterServices, Timing
from tessera.cluster.health_monitor import HealthMonitorService
from tessera.cluster.health_plumbing import ProbePlumbing, ProbeSite, probe_port_id
from tessera.cluster.health_probe import tcp_round
from tessera.cluster.health_state import Target
from tessera.model import HealthMonitor, LoadBalancer, Pool, PoolMember, Port, Router, new_id
from tessera.nsdb.base import Nsdb
from tessera.nsdb.errors import NotFound
from tessera.nsdb.store import TopologyStore

pytestmark = [pytest.mark.zookeeper]

DELAY, RETRIES = 1, 2
TIMING = Timing(spread_delay=0.0, rebalance_interval=0.0, restart_initial=0.1)


class NoNamespace(ProbePlumbing):
    """Probe ports in the NSDB as the service makes them; probes from this process."""

    def ensure_namespace(self, router_id: str, bound: str | None) -> tuple[str | None, str]:
        return None, self.site.host_ifnames(router_id)[0]

    def remove_namespace(self, router_id: str) -> None:
        pass

    def remove_leftovers(self) -> None:
        pass

    def path_works(self) -> bool:
        return True


class Backends:
    """One listener on 127.0.0.1 per member address; stop and start them."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.socks: dict[str, socket.socket] = {}
        self.ports: dict[str, int] = {}
        for address in addresses:
            self.start(address)

    def start(self, address: str) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.ports.get(address, 0)))
        sock.listen(16)
        self.socks[address] = sock
        self.ports[address] = sock.getsockname()[1]

    def stop(self, address: str) -> None:
        self.socks.pop(address).close()

    def tcp(self, targets: Sequence[Target]) -> dict[str, bool]:
        mapped = [replace(t, address="127.0.0.1", port=self.ports[t.address]) for t in targets]
        return tcp_round(mapped)

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()


@pytest.mark.parametrize("nsdb_factory", ["zookeeper"], indirect=True)
def test_the_leader_probes_writes_statuses_and_hands_over(nsdb_factory: Any) -> None:
    clients: list[Nsdb] = []
    nodes: list[ClusterServices] = []
    backends = Backends(["10.0.0.10", "10.0.0.11"])

    def nsdb() -> Nsdb:
        client = nsdb_factory()
        clients.append(client)
        return client

    try:
        admin = TopologyStore(nsdb())
        hosts = [new_id(), new_id()]
        agents = TopologyStore(nsdb())
        for k, host in enumerate(hosts, 1):
            agents.register_host(host, f"h{k}", [f"198.18.0.{k}"])
        router = admin.create(Router(name="r"))
        lb = admin.create(LoadBalancer(router_id=router.id))
        monitor = admin.create(HealthMonitor(delay=DELAY, timeout=1, max_retries=RETRIES))
        pool = admin.create(Pool(load_balancer_id=lb.id, health_monitor_id=monitor.id))
        m1, m2 = (
            admin.create(PoolMember(pool_id=pool.id, address=a, protocol_port=80))
            for a in ("10.0.0.10", "10.0.0.11")
        )

        def node(name: str, host: str) -> ClusterServices:
            client = nsdb()
            site = ProbeSite(host_id=host, host_netns=None, netns_prefix="unused-", node=name)
            service = HealthMonitorService(
                client, site, resync_interval=0.5, plumbing=NoNamespace, tcp=backends.tcp
            )
            services = ClusterServices(client, name, [service], timing=TIMING)
            services.start()
            nodes.append(services)
            return services

        def status(cls: type[PoolMember] | type[Pool], id: str) -> str:
            return admin.get(cls, id).status

        def bound_to() -> str | None:
            try:
                return admin.get(Port, probe_port_id(router.id)).host_id
            except NotFound:
                return None

        first = node("n1", hosts[0])
        wait_until(lambda: first.leads() == ["health-monitor"])
        second = node("n2", hosts[1])
        wait_until(lambda: bound_to() == hosts[0], what="the probe port bound to n1's host")
        port = admin.get(Port, probe_port_id(router.id))
        assert (port.port_address, port.network_length) == ("169.254.17.45", 30)

        backends.stop("10.0.0.10")
        wait_until(lambda: status(PoolMember, m1.id) == "INACTIVE", timeout=DELAY * RETRIES + 5)
        assert status(PoolMember, m2.id) == "ACTIVE" and status(Pool, pool.id) == "ACTIVE"
        backends.stop("10.0.0.11")
        wait_until(lambda: status(Pool, pool.id) == "INACTIVE", what="the pool down with both")
        backends.start("10.0.0.10")
        wait_until(lambda: status(PoolMember, m1.id) == "ACTIVE", timeout=DELAY + 5)
        wait_until(lambda: status(Pool, pool.id) == "ACTIVE")

        # The leader's node dies (its session ends): n2 takes over, from its own host.
        first.stop()
        clients[2].close()
        wait_until(lambda: second.leads() == ["health-monitor"], what="n2 leading")
        wait_until(lambda: bound_to() == hosts[1], what="the probe port re-bound to n2's host")
        backends.start("10.0.0.11")
        wait_until(lambda: status(PoolMember, m2.id) == "ACTIVE", timeout=DELAY + 5)
        backends.stop("10.0.0.10")
        wait_until(lambda: status(PoolMember, m1.id) == "INACTIVE", timeout=DELAY * RETRIES + 5)

        # The monitor leaves the pool: the probe port goes, the members are ACTIVE again.
        admin.update(
            Pool, pool.id, {**admin.get(Pool, pool.id).model_dump(), "health_monitor_id": None}
        )
        wait_until(lambda: bound_to() is None, what="the probe port removed")
        wait_until(lambda: status(PoolMember, m1.id) == "ACTIVE")
    finally:
        for services in nodes:
            services.stop()
        backends.close()
