"""Two tenants whose routers share one external network, in a lab (eBPF datapath, real
namespaces): each VM reaches the other tenant's VM by its floating IP, across both
routers and the external bridge, although its host's agent loads only its own tenant,
the external bridge and the other router's front (`agent.reach`, the depth limit), and
the other router on demand, when the first packet gets there.

    vm1 10.0.1.5 (h1) -- net1 -- r1 (10.0.1.1 | 203.0.113.1) --+
                                  FIP 203.0.113.101 -> vm1    |-- ext 203.0.113.0/24
    vm2 10.0.2.5 (h2) -- net2 -- r2 (10.0.2.1 | 203.0.113.2) --+
                                  FIP 203.0.113.102 -> vm2

203.0.113.0/24 exists only inside the VM namespaces.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lab_helpers import Lab, add_route, agent_status, lab_up, new_chain, root_missing, update

from support.wait import wait_until

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

FIP = {1: "203.0.113.101", 2: "203.0.113.102"}


def _link(lab: Lab, bridge: str, router_port: str) -> None:
    interior = lab.create(f"/bridges/{bridge}/ports")["id"]
    with lab.api() as client:
        linked = client.post(f"ports/{interior}/link", json={"peer_id": router_port})
    assert linked.status_code in (200, 201, 204), linked.text


def _tenant(lab: Lab, ext: str, k: int) -> None:
    net = lab.create("/bridges", {"name": f"net{k}"})["id"]
    r = lab.create("/routers", {"name": f"r{k}"})["id"]
    ports = {}
    for name, address, network in (
        ("lan", f"10.0.{k}.1", f"10.0.{k}.0"),
        ("gw", f"203.0.113.{k}", "203.0.113.0"),
    ):
        ports[name] = lab.create(
            f"/routers/{r}/ports",
            {"port_address": address, "network_address": network, "network_length": 24},
        )["id"]
        add_route(lab, r, network, 24, ports[name])
    _link(lab, net, ports["lan"])
    _link(lab, ext, ports["gw"])
    fixed = f"10.0.{k}.5"
    inbound = new_chain(
        lab, f"r{k}-in",
        {"type": "dnat", "in_ports": [ports["gw"]], "nw_dst_address": FIP[k],
         "nw_dst_length": 32, "nat_targets": [{"address_from": fixed, "address_to": fixed}]},
    )  # fmt: skip
    outbound = new_chain(
        lab, f"r{k}-out",
        {"type": "snat", "out_ports": [ports["gw"]], "nw_src_address": fixed,
         "nw_src_length": 32, "nat_targets": [{"address_from": FIP[k], "address_to": FIP[k]}]},
    )  # fmt: skip
    update(lab, f"/routers/{r}", {"inbound_filter_id": inbound, "outbound_filter_id": outbound})
    port = lab.create(f"/bridges/{net}/ports")["id"]
    lab.cmd(
        "vm", "add", f"vm{k}", "--host", f"h{k}", "--port", port,
        "--ip", f"{fixed}/24", "--gw", f"10.0.{k}.1", timeout=90,
    )  # fmt: skip


@pytest.fixture(scope="module")
def net() -> Iterator[Lab]:
    with lab_up("--hosts", "2") as lab:
        ext = lab.create("/bridges", {"name": "ext"})["id"]
        for k in (1, 2):
            _tenant(lab, ext, k)
        yield lab


def _devices(lab: Lab, k: int) -> int:
    """Devices host hk's agent holds whole."""
    status = agent_status(lab.host_ids()[k - 1])
    return int(status["topology"]["devices"])


def test_vms_of_two_tenants_reach_each_other_by_floating_ip_across_the_external_bridge(
    net: Lab,
) -> None:
    # Each agent holds its VM's bridge, its router and ext; the other router a front.
    wait_until(lambda: _devices(net, 1) == 3 and _devices(net, 2) == 3, 30, what="the loads")
    ping = net.exec("vm1", "ping", "-c", "3", "-W", "2", FIP[2], check=False)
    assert "3 received" in ping.stdout, ping.stdout + ping.stderr
    assert "ttl=62" in ping.stdout  # two router hops
    # The first ping made each agent load the other router, and its network behind.
    assert _devices(net, 1) == 5 and _devices(net, 2) == 5
    back = net.exec("vm2", "ping", "-c", "2", "-W", "2", FIP[1], check=False)
    assert "2 received" in back.stdout, back.stdout + back.stderr
