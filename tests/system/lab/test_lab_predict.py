"""New connections through a conntrack firewall with real TCP (eBPF datapath, kernel
flows), two VMs on one host: the first connection misses once — its SYN, whose flow
commits new connections in the kernel's connection table — and its replies run on the
flow predicted with it (`tessera.agent.predict`), keyed on the kernel's answer "a
reply"; every later connection costs no miss at all (`tessera.agent.kernel_ct`).

    lan 10.0.0.0/24: vm1 10.0.0.10 (h1, firewalled: replies only) -- vm2 10.0.0.20 (h1)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lab_helpers import agent_status, firewall, lab_up, root_missing
from test_lab_stateful import Net

from tessera.lab import names

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

CONNECTIONS = 10


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    with lab_up("--hosts", "1", "--datapath", "ebpf") as lab:
        n = Net(lab)
        try:
            lan = lab.create("/bridges", {"name": "lan"})["id"]
            ports = {}
            for name, address in (("vm1", "10.0.0.10/24"), ("vm2", "10.0.0.20/24")):
                ports[name] = lab.create(f"/bridges/{lan}/ports")["id"]
                lab.cmd(
                    "vm", "add", name, "--host", "h1", "--port", ports[name], "--ip", address,
                    timeout=90,
                )  # fmt: skip
            firewall(lab, "vm1", ports["vm1"])
            yield n
        finally:
            n.stop()


def test_new_connections_through_a_local_firewall_cost_no_miss(net: Net) -> None:
    host_id = names.host_id(net.lab.name, 1)
    net.server("vm2", "10.0.0.20")
    # Warm-up: ARP both ways (and the bridge learns both MACs), a first connection.
    assert net.ping("vm1", "10.0.0.20")
    ok, seen = net.connect("vm1", "10.0.0.20")
    assert ok, seen
    before = agent_status(host_id)["misses"]
    for _ in range(CONNECTIONS):
        ok, seen = net.connect("vm1", "10.0.0.20")  # SYN, SYN-ACK, data, FIN both ways
        assert ok, seen
    misses = agent_status(host_id)["misses"] - before
    # Before connection tracking in the kernel: one per connection (its SYN), two
    # without prediction. A few are allowed for ARP revalidation meanwhile.
    assert misses <= 3, misses
    # vm2 still cannot start a connection to vm1: the reply flows are replies only.
    net.server("vm1", "10.0.0.10")
    ok, seen = net.connect("vm2", "10.0.0.10", timeout=2.0)
    assert not ok, seen
