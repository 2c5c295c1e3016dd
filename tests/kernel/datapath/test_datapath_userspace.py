"""The userspace datapath forwarding real traffic between namespaces.

Flows are installed by hand here (the agent is tested elsewhere): what is checked is
that the AF_PACKET path moves frames as the flows say, completes the checksums a veth
leaves partial (TCP must work, not only ping), segments GSO frames, and tunnels over
VXLAN between two hosts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dp_netns import ping, tcp_transfer, underlay

from tessera.datapath.base import Flow, Match, Output, OutputTunnel
from tessera.datapath.userspace import UserspaceDatapath
from tessera.lab.sandbox import SandboxFactory, cable_vm
from tessera.packet.addr import ip_from_str, mac_from_str

pytestmark = pytest.mark.root

MAC1, MAC2 = "02:00:00:00:01:01", "02:00:00:00:01:02"


@pytest.fixture
def datapaths() -> Iterator[list[UserspaceDatapath]]:
    made: list[UserspaceDatapath] = []
    yield made
    for dp in made:
        dp.close()


def _l2_flows(dp: UserspaceDatapath, a: int, b: int) -> None:
    dp.install(Flow(Match.of(in_port=a, eth_dst=mac_from_str(MAC2)), (Output(b),)))
    dp.install(Flow(Match.of(in_port=b, eth_dst=mac_from_str(MAC1)), (Output(a),)))
    # ARP broadcasts: a wire between the two VMs.
    dp.install(Flow(Match.of(in_port=a, eth_dst=0xFFFF_FFFF_FFFF), (Output(b),)))
    dp.install(Flow(Match.of(in_port=b, eth_dst=0xFFFF_FFFF_FFFF), (Output(a),)))


def test_one_host_ping_and_tcp_with_partial_checksums_and_gso(
    netns: SandboxFactory, datapaths: list[UserspaceDatapath]
) -> None:
    host, vm1, vm2 = netns("host"), netns("vm1"), netns("vm2")
    cable_vm(host, "tap1", vm1, MAC1, "10.9.0.1/24")
    cable_vm(host, "tap2", vm2, MAC2, "10.9.0.2/24")
    dp = UserspaceDatapath()
    datapaths.append(dp)
    host.call(dp.start)
    host.call(lambda: dp.add_port(1, "tap1"))
    host.call(lambda: dp.add_port(2, "tap2"))
    vm1.ip("neigh", "add", "10.9.0.2", "lladdr", MAC2, "dev", "eth0")
    vm2.ip("neigh", "add", "10.9.0.1", "lladdr", MAC1, "dev", "eth0")
    # Nothing installed: every frame is a miss for the agent.
    assert not ping(vm1, "10.9.0.2", count=1)
    misses = dp.recv_misses(1.0)
    assert misses and all(m.port == 1 for m in misses)

    _l2_flows(dp, 1, 2)
    assert ping(vm1, "10.9.0.2")
    # 2 MB through veths with TSO on: GSO frames and partial checksums on every segment.
    assert tcp_transfer(vm2, "10.9.0.2", vm1, 2_000_000) == "ok"
    stats = dp.stats(Match.of(in_port=1, eth_dst=mac_from_str(MAC2)))
    assert stats is not None and stats.packets > 10 and stats.bytes > 2_000_000


def test_two_hosts_over_vxlan(netns: SandboxFactory, datapaths: list[UserspaceDatapath]) -> None:
    h1, h2, vm1, vm2 = netns("h1"), netns("h2"), netns("vm1"), netns("vm2")
    underlay(h1, "198.18.0.1", h2, "198.18.0.2")
    cable_vm(h1, "tap1", vm1, MAC1, "10.9.0.1/24")
    cable_vm(h2, "tap2", vm2, MAC2, "10.9.0.2/24")
    dp1, dp2 = UserspaceDatapath("198.18.0.1"), UserspaceDatapath("198.18.0.2")
    datapaths += [dp1, dp2]
    h1.call(dp1.start)
    h2.call(dp2.start)
    h1.call(lambda: dp1.add_port(1, "tap1", tunnel_key=101))
    h2.call(lambda: dp2.add_port(5, "tap2", tunnel_key=202))
    vm1.ip("neigh", "add", "10.9.0.2", "lladdr", MAC2, "dev", "eth0")
    vm2.ip("neigh", "add", "10.9.0.1", "lladdr", MAC1, "dev", "eth0")
    dp1.install(Flow(Match.of(in_port=1), (OutputTunnel(202, ip_from_str("198.18.0.2")),)))
    dp2.install(Flow(Match.of(in_port=5), (OutputTunnel(101, ip_from_str("198.18.0.1")),)))
    assert ping(vm1, "10.9.0.2")
    assert tcp_transfer(vm2, "10.9.0.2", vm1, 1_000_000) == "ok"
