"""Traffic through a lab, with both datapaths: VMs on two hosts reach each other through
bridges and a router (real `ping`, TCP with `nc`), a VM configures itself by DHCP, and
the README demo script works as written.

    bridge A 10.0.1.0/24 -- router (10.0.1.1 | 10.0.2.1) -- bridge B 10.0.2.0/24
      vm1 10.0.1.10 (h1)                                      vm2 10.0.2.10 (h2)
      vm3 10.0.1.11 (h2)
      vm4 by DHCP: 10.0.1.20, MTU 1400, 172.16.0.0/16 via 10.0.1.254 (h2)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import Lab, Snapshot, env, require_agent, root_missing

from support.local import TESSERA
from support.wait import wait_until

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

REPO = Path(__file__).resolve().parents[3]
DHCP_MAC = "02:00:00:00:01:20"


@pytest.fixture(scope="module", params=["ebpf", "userspace"])
def net(request: pytest.FixtureRequest) -> Iterator[Lab]:
    require_agent()
    before = Snapshot.take()
    lab = Lab()
    try:
        lab.up("--hosts", "2", "--datapath", request.param)
        _topology(lab)
        yield lab
    finally:
        lab.down()
        lab.assert_gone(before)


def _topology(lab: Lab) -> None:
    a = lab.create("/bridges", {"name": "a"})["id"]
    b = lab.create("/bridges", {"name": "b"})["id"]
    r = lab.create("/routers", {"name": "r"})["id"]
    ra = _router_port(lab, r, "10.0.1.1")
    rb = _router_port(lab, r, "10.0.2.1")
    for port, net in ((ra, "10.0.1.0"), (rb, "10.0.2.0")):
        lab.create(
            f"/routers/{r}/routes",
            {
                "src_network_addr": "0.0.0.0", "src_network_length": 0,
                "dst_network_addr": net, "dst_network_length": 24,
                "type": "Normal", "next_hop_port": port, "weight": 100,
            },
        )  # fmt: skip
    for bridge, router_port in ((a, ra), (b, rb)):
        interior = lab.create(f"/bridges/{bridge}/ports")["id"]
        with lab.api() as client:
            linked = client.post(f"ports/{interior}/link", json={"peer_id": router_port})
        assert linked.status_code in (200, 201, 204), linked.text
    lab.create(
        f"/bridges/{a}/dhcp_subnets",
        {
            "subnet_prefix": "10.0.1.0", "subnet_length": 24,
            "default_gateway": "10.0.1.1", "server_addr": "10.0.1.1", "interface_mtu": 1400,
            "opt121_routes": [
                {"destination_prefix": "172.16.0.0", "destination_length": 16,
                 "gateway_addr": "10.0.1.254"},
            ],
        },
    )  # fmt: skip
    lab.create(
        f"/bridges/{a}/dhcp_subnets/10.0.1.0_24/hosts",
        {"mac_addr": DHCP_MAC, "ip_addr": "10.0.1.20", "name": "vm4"},
    )
    vms: list[tuple[str, str, str, list[str]]] = [
        ("vm1", "h1", a, ["--ip", "10.0.1.10/24", "--gw", "10.0.1.1"]),
        ("vm2", "h2", b, ["--ip", "10.0.2.10/24", "--gw", "10.0.2.1"]),
        ("vm3", "h2", a, ["--ip", "10.0.1.11/24", "--gw", "10.0.1.1"]),
        ("vm4", "h2", a, ["--dhcp", "--mac", DHCP_MAC]),
    ]
    for name, host, bridge, options in vms:
        port = lab.create(f"/bridges/{bridge}/ports")["id"]
        lab.cmd("vm", "add", name, "--host", host, "--port", port, *options, timeout=90)


def _router_port(lab: Lab, router: str, address: str) -> str:
    port: dict[str, Any] = lab.create(
        f"/routers/{router}/ports",
        {"port_address": address, "network_address": address.rsplit(".", 1)[0] + ".0",
         "network_length": 24},
    )  # fmt: skip
    return str(port["id"])


def test_vms_on_two_hosts_ping_through_the_router(net: Lab) -> None:
    ping = net.exec("vm1", "ping", "-c", "3", "-W", "2", "10.0.2.10", check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "3 received" in ping.stdout
    assert "ttl=63" in ping.stdout  # one router hop
    back = net.exec("vm2", "ping", "-c", "2", "-W", "2", "10.0.1.10", check=False)
    assert "2 received" in back.stdout, back.stdout


def test_tcp_between_hosts_on_one_bridge_delivers_every_byte(net: Lab, tmp_path: Path) -> None:
    sent, received = tmp_path / "sent", tmp_path / "received"
    sent.write_bytes(os.urandom(300_000))
    listener = subprocess.Popen(
        [TESSERA, "lab", "exec", "--name", net.name, "vm3", "--",
         "sh", "-c", f"exec nc -l -w 10 5001 > {received}"],
        env=env(),
    )  # fmt: skip
    try:
        wait_until(
            lambda: "5001" in net.exec("vm3", "ss", "-Hltn").stdout,
            timeout=10,
            what="the listener in vm3",
        )
        send = net.exec("vm1", "sh", "-c", f"nc -N -w 10 10.0.1.11 5001 < {sent}", check=False)
        assert send.returncode == 0, send.stderr
        assert listener.wait(timeout=20) == 0
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(timeout=5)
    digest = hashlib.sha256
    assert digest(received.read_bytes()).hexdigest() == digest(sent.read_bytes()).hexdigest()


def test_a_vm_gets_address_gateway_mtu_and_classless_routes_by_dhcp(net: Lab) -> None:
    (vm,) = [v for v in net.status()["vms"] if v["name"] == "vm4"]
    assert vm["addresses"] == ["10.0.1.20/24"]
    assert vm["mtu"] == 1400
    routes = net.exec("vm4", "ip", "-4", "route", "show").stdout
    assert "default via 10.0.1.1 dev eth0" in routes
    assert "172.16.0.0/16 via 10.0.1.254 dev eth0" in routes
    ping = net.exec("vm4", "ping", "-c", "2", "-W", "2", "10.0.2.10", check=False)
    assert "2 received" in ping.stdout, ping.stdout


def test_the_demo_script_pings_across_hosts() -> None:
    require_agent()
    before = Snapshot.take()
    lab = Lab()
    script_env = env() | {"TESSERA_LAB": lab.name}
    try:
        proc = subprocess.run(
            [str(REPO / "scripts" / "demo.sh")],
            capture_output=True, text=True, timeout=300, env=script_env, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "3 received" in proc.stdout
        assert f"tessera lab down --name {lab.name}" in proc.stdout
        # It leaves the lab up, its API where the script said.
        status = lab.status()
        assert all(h["alive"] for h in status["hosts"])
        assert f"TESSERA_API={status['api']['url']}" in proc.stdout
        assert {vm["name"] for vm in status["vms"]} == {"vm1", "vm2"}
    finally:
        lab.down()
        lab.assert_gone(before)
