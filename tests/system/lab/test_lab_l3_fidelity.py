"""Issue 11's router behaviours with real VMs in a lab (eBPF datapath, kernel flows):

- a VM that ARPs for its gateway is in the router's ARP table, and the router then
  reaches it without an ARP request of its own;
- an ARP request whose sender is outside the router port's network gets no reply and
  is not learned;
- a router that is down, or a router port that is down (ingress or egress), answers
  ICMP "communication administratively prohibited" (ping: "Packet filtered") from the
  ingress port's address; a bridge port that is down stays silent;
- pings with different TTLs share one routed kernel flow, and a TTL that would expire
  still gets "Time to live exceeded" (the flow's TTL decrement sends it to the agent).

    bridge a 10.0.1.0/24 -- router r (10.0.1.1 | 10.0.2.1) -- bridge b 10.0.2.0/24
      vm1 10.0.1.10                                            vm2 10.0.2.10
                                                               vm3 10.0.2.11
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from lab_helpers import Lab, Snapshot, env, require_agent, root_missing

from support.local import TESSERA
from support.wait import wait_until
from tessera.lab import names

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

VM1_MAC = "02:00:00:00:11:10"
VM2_MAC = "02:00:00:00:12:10"
VM3_MAC = "02:00:00:00:12:11"

# Sends one ARP request from eth0 (sender MAC = eth0's) and prints how many replies to
# it arrived within 2 s. argv: sender IP, target IP.
ARP_PROBE = r"""
import socket, struct, sys, time
spa, tpa = socket.inet_aton(sys.argv[1]), socket.inet_aton(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("eth0", 0x0806))
mac = s.getsockname()[4]
arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + spa + b"\0" * 6 + tpa
s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
s.settimeout(0.2)
replies, deadline = 0, time.monotonic() + 2.0
while time.monotonic() < deadline:
    try:
        frame = s.recv(2048)
    except socket.timeout:
        continue
    body = frame[14:42]
    if len(body) == 28 and body[6:8] == b"\x00\x02" and body[14:18] == tpa and body[24:28] == spa:
        replies += 1
print(replies)
"""


@dataclass
class Net:
    lab: Lab
    router: str
    gw_a: str  # router port 10.0.1.1
    gw_b: str  # router port 10.0.2.1
    vm1_port: str


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    require_agent()
    before = Snapshot.take()
    lab = Lab()
    try:
        lab.up("--hosts", "1", "--datapath", "ebpf")
        yield _topology(lab)
    finally:
        lab.down()
        lab.assert_gone(before)


def _topology(lab: Lab) -> Net:
    a = lab.create("/bridges", {"name": "a"})["id"]
    b = lab.create("/bridges", {"name": "b"})["id"]
    r = lab.create("/routers", {"name": "r"})["id"]
    gw_a = _router_port(lab, r, "10.0.1.1")
    gw_b = _router_port(lab, r, "10.0.2.1")
    for port, prefix in ((gw_a, "10.0.1.0"), (gw_b, "10.0.2.0")):
        lab.create(
            f"/routers/{r}/routes",
            {
                "src_network_addr": "0.0.0.0", "src_network_length": 0,
                "dst_network_addr": prefix, "dst_network_length": 24,
                "type": "Normal", "next_hop_port": port, "weight": 100,
            },
        )  # fmt: skip
    for bridge, router_port in ((a, gw_a), (b, gw_b)):
        interior = lab.create(f"/bridges/{bridge}/ports")["id"]
        with lab.api() as client:
            linked = client.post(f"ports/{interior}/link", json={"peer_id": router_port})
        assert linked.status_code in (200, 201, 204), linked.text
    vm_ports = {}
    for name, bridge, mac, address, gw in (
        ("vm1", a, VM1_MAC, "10.0.1.10/24", "10.0.1.1"),
        ("vm2", b, VM2_MAC, "10.0.2.10/24", "10.0.2.1"),
        ("vm3", b, VM3_MAC, "10.0.2.11/24", "10.0.2.1"),
    ):
        port = lab.create(f"/bridges/{bridge}/ports")["id"]
        vm_ports[name] = port
        lab.cmd(
            "vm", "add", name, "--host", "h1", "--port", port,
            "--mac", mac, "--ip", address, "--gw", gw, timeout=90,
        )  # fmt: skip
    return Net(lab, r, gw_a, gw_b, vm_ports["vm1"])


def _router_port(lab: Lab, router: str, address: str) -> str:
    port: dict[str, Any] = lab.create(
        f"/routers/{router}/ports",
        {"port_address": address, "network_address": address.rsplit(".", 1)[0] + ".0",
         "network_length": 24},
    )  # fmt: skip
    return str(port["id"])


def _ping(lab: Lab, vm: str, target: str, *extra: str, count: int = 1) -> Any:
    return lab.exec(vm, "ping", "-n", "-c", str(count), "-W", "2", *extra, target, check=False)


def _put(lab: Lab, path: str, body: dict[str, Any]) -> None:
    with lab.api() as client:
        response = client.put(path.lstrip("/"), json=body)
    assert response.status_code == 200, response.text


def _arp_table(net: Net) -> dict[str, str]:
    return {e["ip_addr"]: e["mac_addr"] for e in net.lab.get(f"/routers/{net.router}/arp_table")}


def _flows(lab: Lab) -> list[dict[str, Any]]:
    from tessera.agent.control import agents_dir, request

    answer = request(agents_dir() / f"{names.host_id(lab.name, 1)}.sock", "flows")
    flows: list[dict[str, Any]] = answer["flows"]
    return flows


# -- ARP --------------------------------------------------------------------------------------


def test_a_vm_arping_for_its_gateway_is_learned_and_reached_without_arp(net: Net) -> None:
    lab = net.lab
    # vm1 ARPs for its gateway first. Nothing went through the router before (the
    # router's own ARP for vm1 would teach it too), and its echo reply goes back to the
    # frame's source MAC without resolving anything: only vm1's request can teach it.
    wait_until(
        lambda: _ping(lab, "vm1", "10.0.1.1").returncode == 0, 30, what="vm1 to ping its gateway"
    )
    wait_until(
        lambda: _arp_table(net).get("10.0.1.10") == VM1_MAC,
        timeout=10,
        what="the router's ARP table to hold vm1",
    )
    # The router forwards to vm1 without asking who has 10.0.1.10.
    pings: list[Any] = []
    dump = _capture_while(
        lab, "vm1", "arp", lambda: pings.append(_ping(lab, "vm2", "10.0.1.10", count=2))
    )
    assert "2 received" in pings[0].stdout, pings[0].stdout
    assert "who-has 10.0.1.10" not in dump, dump


def test_arp_from_outside_the_port_network_gets_no_reply_and_is_not_learned(net: Net) -> None:
    lab = net.lab
    probe = [sys.executable, "-c", ARP_PROBE]
    inside = lab.exec("vm1", *probe, "10.0.1.10", "10.0.1.1")
    assert inside.stdout.strip() == "1", "the probe itself works: " + inside.stdout + inside.stderr
    outside = lab.exec("vm1", *probe, "10.0.9.9", "10.0.1.1")
    assert outside.stdout.strip() == "0", outside.stdout + outside.stderr
    assert "10.0.9.9" not in _arp_table(net)


# -- administratively prohibited ----------------------------------------------------------


def _filtered(lab: Lab) -> str:
    """ping's output if it reported ICMP type 3 code 13 ("Packet filtered"), else ""."""
    ping = _ping(lab, "vm1", "10.0.2.10", count=2)
    out: str = ping.stdout
    return out if "Packet filtered" in out else ""


def test_a_down_router_answers_administratively_prohibited(net: Net) -> None:
    lab = net.lab
    _put(lab, f"/routers/{net.router}", {"admin_state_up": False})
    try:
        out = wait_until(lambda: _filtered(lab), what="ping to say Packet filtered")
        assert "From 10.0.1.1" in out, out
    finally:
        _put(lab, f"/routers/{net.router}", {"admin_state_up": True})
    wait_until(lambda: _ping(lab, "vm1", "10.0.2.10").returncode == 0, what="vm2 again")


@pytest.mark.parametrize("side", ["ingress", "egress"])
def test_a_down_router_port_answers_administratively_prohibited(net: Net, side: str) -> None:
    lab = net.lab
    port = net.gw_a if side == "ingress" else net.gw_b
    _put(lab, f"/ports/{port}", {"admin_state_up": False})
    try:
        out = wait_until(lambda: _filtered(lab), what="ping to say Packet filtered")
        assert "From 10.0.1.1" in out, out
    finally:
        _put(lab, f"/ports/{port}", {"admin_state_up": True})
    wait_until(lambda: _ping(lab, "vm1", "10.0.2.10").returncode == 0, what="vm2 again")


def test_a_down_bridge_port_stays_silent(net: Net) -> None:
    lab = net.lab
    _put(lab, f"/ports/{net.vm1_port}", {"admin_state_up": False})
    try:
        wait_until(lambda: _ping(lab, "vm1", "10.0.2.10").returncode != 0, what="vm1 cut off")
        ping = _ping(lab, "vm1", "10.0.2.10", count=2)
        assert ping.returncode != 0
        assert "From " not in ping.stdout and "filtered" not in ping.stdout, ping.stdout
    finally:
        _put(lab, f"/ports/{net.vm1_port}", {"admin_state_up": True})
    wait_until(lambda: _ping(lab, "vm1", "10.0.2.10").returncode == 0, what="vm2 again")


# -- TTL ---------------------------------------------------------------------------------------


def test_pings_with_different_ttls_share_one_routed_kernel_flow(net: Net) -> None:
    lab = net.lab
    for ttl in ("64", "30", "9"):
        ping = _ping(lab, "vm1", "10.0.2.11", "-t", ttl, count=2)
        assert "2 received" in ping.stdout, ping.stdout
    flows = _flows(lab)
    routed = [
        f
        for f in flows
        if f["match"].get("ip_dst") == "10.0.2.11" and {"type": "dec_ttl", "n": 1} in f["actions"]
    ]
    assert len(routed) == 1, flows
    (flow,) = routed
    assert "ip_ttl" not in flow["match"], flow
    assert flow["packets"] >= 5  # the first packet was simulated, the others hit it
    # A TTL that would expire is handed to the agent by the flow, and answered.
    expired = _ping(lab, "vm1", "10.0.2.11", "-t", "1")
    assert "Time to live exceeded" in expired.stdout, expired.stdout
    assert "From 10.0.1.1" in expired.stdout, expired.stdout


def _capture_while(lab: Lab, vm: str, expr: str, action: Any) -> str:
    """tcpdump on the VM's eth0 while `action` runs; what it printed."""
    dump = subprocess.Popen(
        [TESSERA, "lab", "exec", "--name", lab.name, vm, "--",
         "timeout", "6", "tcpdump", "-l", "-n", "-i", "eth0", expr],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip
    try:
        assert dump.stderr is not None
        started = ""
        while "listening on" not in started:  # printed once it captures
            line = dump.stderr.readline()
            assert line, started
            started += line
        action()
        out, err = dump.communicate(timeout=20)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait(timeout=5)
    return started + out + err
