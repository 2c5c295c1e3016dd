"""A stateful port group across hosts (MidoNet's ECMP uplinks), with real VMs on two
lab hosts (eBPF datapath): a router's uplink A is bound on h1, its uplink B on h2, both
in one `stateful` port group. A connection leaves through A and its replies come back
through B, so they are judged on h2, which saw none of the connection's packets: they
pass only if h1 sent the connection's state to B's host as well as to A's.

    vm1 10.0.0.10 (h1, tracked)  --lan--  r  10.0.0.1
    vm2 10.0.0.20 (h1, SNAT)               | A 203.0.113.1/28  -- extA 203.0.113.2  (h1)
                                           | B 203.0.113.17/28 -- extB 203.0.113.18 (h2)
    extA = extB by a veth (203.0.113.32/30): extA, the server, sends everything for the
    lan and the SNAT address to extB, which forwards it to r through B.

The router's inbound filter lets in, from the uplinks to the lan, only replies (the
connection is tracked as it leaves A, keyed by the group); vm2's connections are
SNATed to 203.0.113.150 with no conntrack rule: the NAT binding alone must reach h2.

203.0.113.0/24 exists only inside the VM namespaces.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from lab_helpers import (
    TESSERA,
    Lab,
    env,
    lab_up,
    new_chain,
    root_missing,
    tessera,
    update,
)

from support.wait import wait_until
from tessera.lab import names

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

SNAT_IP = "203.0.113.150"
SERVER_IP = "203.0.113.2"
PORT = 8080

# A TCP server that tells each client the address it saw it from; argv: address, port,
# lifetime in seconds.
SERVER = r"""
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
s.settimeout(0.5)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        c, peer = s.accept()
    except socket.timeout:
        continue
    c.sendall(f"{peer[0]}:{peer[1]}\n".encode())
    c.close()
"""

# Connects, prints what the server saw; exit 1 on failure. argv: address, port, timeout.
CLIENT = r"""
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    c.settimeout(5)
    print(c.recv(100).decode().strip())
except OSError as e:
    print("FAIL", e)
    sys.exit(1)
"""


class Net:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.servers: dict[str, subprocess.Popen[str]] = {}

    def server(self, vm: str, address: str) -> None:
        """A server on `vm` (one per VM, started once for the module's tests)."""
        if vm in self.servers:
            return
        proc = subprocess.Popen(
            [TESSERA, "lab", "exec", "--name", self.lab.name, vm, "--",
             sys.executable, "-c", SERVER, address, str(PORT), "120"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
        )  # fmt: skip
        self.servers[vm] = proc
        wait_until(
            lambda: f":{PORT} " in self.lab.exec(vm, "ss", "-Hltn").stdout,
            timeout=15,
            what=f"the server on {vm}",
        )

    def connect(self, vm: str, target: str, timeout: float = 5.0) -> tuple[bool, str]:
        proc = self.lab.exec(
            vm, sys.executable, "-c", CLIENT, target, str(PORT), str(timeout), check=False
        )
        return proc.returncode == 0, proc.stdout.strip()

    def tx_packets(self, vm: str, ifname: str) -> int:
        out = self.lab.exec(vm, "ip", "-j", "-s", "link", "show", ifname).stdout
        packets: int = json.loads(out)[0]["stats64"]["tx"]["packets"]
        return packets

    def stop(self) -> None:
        for proc in self.servers.values():  # our own children, by their pid
            proc.terminate()
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    # The veth between extA and extB goes with their namespaces at the lab's end.
    with lab_up("--hosts", "2", "--datapath", "ebpf") as lab:
        n = Net(lab)
        try:
            _topology(lab)
            yield n
        finally:
            n.stop()


def _router_port(lab: Lab, router: str, address: str, network: str, length: int) -> str:
    port: str = lab.create(
        f"/routers/{router}/ports",
        {"port_address": address, "network_address": network, "network_length": length},
    )["id"]
    lab.create(
        f"/routers/{router}/routes",
        {
            "src_network_addr": "0.0.0.0", "src_network_length": 0,
            "dst_network_addr": network, "dst_network_length": length,
            "type": "Normal", "next_hop_port": port, "weight": 100,
        },
    )  # fmt: skip
    return port


def _topology(lab: Lab) -> None:
    lan = lab.create("/bridges", {"name": "lan"})["id"]
    r = lab.create("/routers", {"name": "r"})["id"]
    gw = _router_port(lab, r, "10.0.0.1", "10.0.0.0", 24)
    a = _router_port(lab, r, "203.0.113.1", "203.0.113.0", 28)
    b = _router_port(lab, r, "203.0.113.17", "203.0.113.16", 28)
    interior = lab.create(f"/bridges/{lan}/ports")["id"]
    with lab.api() as client:
        linked = client.post(f"ports/{interior}/link", json={"peer_id": gw})
    assert linked.status_code in (200, 201, 204), linked.text

    group = lab.create("/port_groups", {"name": "uplinks", "stateful": True})["id"]
    for port in (a, b):
        lab.create(f"/port_groups/{group}/ports", {"port_id": port})

    lan_net = {"nw_dst_address": "10.0.0.0", "nw_dst_length": 24}
    pool = [{"address_from": SNAT_IP, "address_to": SNAT_IP, "port_from": 20000,
             "port_to": 29999}]  # fmt: skip
    pre = new_chain(
        lab, "pre",
        {"type": "accept", "in_ports": [a, b], "match_return_flow": True, **lan_net},
        {"type": "drop", "in_ports": [a, b], **lan_net},
        {"type": "rev_snat", "in_ports": [a, b]},
        {"type": "accept", "nw_src_address": "10.0.0.10", "nw_src_length": 32,
         "match_forward_flow": True},
    )  # fmt: skip
    post = new_chain(
        lab, "post",
        {"type": "snat", "out_ports": [a, b], "nw_src_address": "10.0.0.20",
         "nw_src_length": 32, "nat_targets": pool},
    )  # fmt: skip
    update(lab, f"/routers/{r}", {"inbound_filter_id": pre, "outbound_filter_id": post})

    for name, address in (("vm1", "10.0.0.10/24"), ("vm2", "10.0.0.20/24")):
        port = lab.create(f"/bridges/{lan}/ports")["id"]
        lab.cmd(
            "vm", "add", name, "--host", "h1", "--port", port,
            "--ip", address, "--gw", "10.0.0.1", timeout=90,
        )  # fmt: skip
    lab.cmd("vm", "add", "extA", "--host", "h1", "--port", a, "--ip", f"{SERVER_IP}/28")
    lab.cmd("vm", "add", "extB", "--host", "h2", "--port", b, "--ip", "203.0.113.18/28")
    # The "external" network behind the uplinks: a veth made inside extA's namespace,
    # its peer moved straight into extB's (never in the root namespace).
    lab.exec(
        "extA", "ip", "link", "add", "xa", "type", "veth",
        "peer", "name", "xb", "netns", names.netns(lab.name, "extB"),
    )  # fmt: skip
    for vm, link, address in (("extA", "xa", "203.0.113.33/30"), ("extB", "xb", "203.0.113.34/30")):
        lab.exec(vm, "ip", "addr", "add", address, "dev", link)
        lab.exec(vm, "ip", "link", "set", link, "up")
    # extA answers the lan and the SNAT address through extB, never through A ...
    for prefix in ("10.0.0.0/24", f"{SNAT_IP}/32"):
        lab.exec("extA", "ip", "route", "add", prefix, "via", "203.0.113.34")
        lab.exec("extB", "ip", "route", "add", prefix, "via", "203.0.113.17")
    # ... and extB forwards it to B.
    lab.exec("extB", "ip", "route", "add", "203.0.113.0/28", "via", "203.0.113.33")
    lab.exec("extB", "sysctl", "-qw", "net.ipv4.ip_forward=1")


def _conntrack(lab: Lab, host: int) -> list[dict[str, Any]]:
    out = tessera("conntrack", "--host", names.host_id(lab.name, host), "--json").stdout
    entries: list[dict[str, Any]] = json.loads(out)["entries"]
    return entries


def test_the_path_is_asymmetric_and_b_drops_new_inbound_connections(net: Net) -> None:
    """The premise of the tests below: the lan reaches the server through A; what the
    server sends the lan arrives through B; and B lets in nothing but replies."""
    ping = net.lab.exec("vm1", "ping", "-n", "-c", "1", "-W", "2", SERVER_IP, check=False)
    assert ping.returncode == 0, ping.stdout
    route = net.lab.exec("extA", "ip", "route", "get", "10.0.0.10").stdout
    assert "dev xa" in route, route
    net.server("vm1", "10.0.0.10")
    ok, seen = net.connect("extA", "10.0.0.10", timeout=3.0)
    assert not ok, f"a new connection from outside passed B: {seen}"


def test_a_tracked_connection_out_through_a_gets_its_replies_in_through_b(net: Net) -> None:
    net.server("extA", SERVER_IP)
    through_b = net.tx_packets("extB", "eth0")
    for _ in range(3):
        ok, seen = net.connect("vm1", SERVER_IP)
        assert ok, seen
        assert seen.startswith("10.0.0.10:")
    # The replies (SYN-ACK, data, FIN: at least two packets per connection) went
    # through B.
    assert net.tx_packets("extB", "eth0") - through_b >= 6
    # h2 judged them with the state h1 sent: the connection, keyed by the group.
    h2 = [e for e in _conntrack(net.lab, 2) if e["kind"] == "conntrack"]
    assert any(e["forward"]["dst_ip"] == SERVER_IP for e in h2), h2


def test_a_snat_binding_alone_reaches_the_other_member_host(net: Net) -> None:
    net.server("extA", SERVER_IP)
    for _ in range(3):
        ok, seen = net.connect("vm2", SERVER_IP)
        assert ok, seen
        assert seen.startswith(f"{SNAT_IP}:"), seen
    kinds = {e["kind"] for e in _conntrack(net.lab, 2)}
    assert "rev_snat" in kinds, kinds
