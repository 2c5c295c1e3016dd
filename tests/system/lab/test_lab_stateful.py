"""Stateful L4 with real VMs across two lab hosts (eBPF datapath, kernel flows):

- a conntrack firewall on vm1's port: vm1 reaches vm3 (on the other host) and gets its
  replies; vm3 cannot start a connection (TCP or ping) to vm1;
- dynamic SNAT: vm1 (h1) connects to an "external" VM on the router's uplink (h2); the
  external VM sees the SNAT address and a leased port, the replies come back — the
  state was pushed to h2 before the first packet left h1;
- a floating IP: the external VM reaches vm2 by its floating IP, and vm2's own
  connections leave from it.

    lan 10.0.0.0/24 -- router r (10.0.0.1 | 203.0.113.1 uplink) -- ext 203.0.113.9/25
      vm1 10.0.0.10 (h1, firewalled)              SNAT 10.0.0.0/24 -> 203.0.113.150
      vm2 10.0.0.20 (h1)                           floating 203.0.113.200 <-> 10.0.0.20
      vm3 10.0.0.30 (h2)

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
    agent_status,
    env,
    lab_up,
    new_chain,
    replies_only,
    root_missing,
    routed_lan,
    tessera,
    update,
)

from support.wait import wait_until
from tessera.lab import names

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

SNAT_IP = "203.0.113.150"
FLOATING_IP = "203.0.113.200"
PORT = 8080

# A TCP server that tells each client the address it saw it from, then exits after
# argv[3] seconds. argv: address, port, lifetime.
SERVER = r"""
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
s.settimeout(0.5)
print("listening", flush=True)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        c, peer = s.accept()
    except socket.timeout:
        continue
    c.sendall(f"{peer[0]}:{peer[1]}\n".encode())
    c.close()
"""

# Connects, prints what the server saw and its own local address; exit 1 on failure.
CLIENT = r"""
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    c.settimeout(5)
    seen = c.recv(100).decode().strip()
    print(seen, "%s:%d" % c.getsockname())
except OSError as e:
    print("FAIL", e)
    sys.exit(1)
"""


class Net:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.servers: list[subprocess.Popen[str]] = []

    def server(self, vm: str, address: str, lifetime: float = 60.0) -> None:
        proc = subprocess.Popen(
            [TESSERA, "lab", "exec", "--name", self.lab.name, vm, "--",
             sys.executable, "-c", SERVER, address, str(PORT), str(lifetime)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
        )  # fmt: skip
        self.servers.append(proc)
        wait_until(
            lambda: f":{PORT}" in self.lab.exec(vm, "ss", "-Hltn").stdout,
            timeout=15,
            what=f"the server on {vm}",
        )

    def connect(self, vm: str, target: str, timeout: float = 5.0) -> tuple[bool, str]:
        proc = self.lab.exec(
            vm, sys.executable, "-c", CLIENT, target, str(PORT), str(timeout), check=False
        )
        return proc.returncode == 0, proc.stdout.strip()

    def ping(self, vm: str, target: str) -> bool:
        proc = self.lab.exec(vm, "ping", "-n", "-c", "2", "-W", "2", target, check=False)
        return proc.returncode == 0

    def stop(self) -> None:
        for proc in self.servers:  # our own children, by their pid
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    with lab_up("--hosts", "2", "--datapath", "ebpf") as lab:
        n = Net(lab)
        try:
            _topology(lab)
            yield n
        finally:
            n.stop()


def _topology(lab: Lab) -> None:
    lan, r, _gw, uplink = routed_lan(lab)

    # NAT on the router: the floating IP first (1:1 both ways), then dynamic SNAT.
    one = [{"address_from": "10.0.0.20", "address_to": "10.0.0.20"}]
    fip = [{"address_from": FLOATING_IP, "address_to": FLOATING_IP}]
    pool = [{"address_from": SNAT_IP, "address_to": SNAT_IP, "port_from": 20000,
             "port_to": 29999}]  # fmt: skip
    pre = new_chain(
        lab, "pre",
        {"type": "dnat", "in_ports": [uplink], "nw_dst_address": FLOATING_IP,
         "nw_dst_length": 32, "nat_targets": one},
        {"type": "rev_snat", "in_ports": [uplink]},
    )  # fmt: skip
    post = new_chain(
        lab, "post",
        {"type": "snat", "out_ports": [uplink], "nw_src_address": "10.0.0.20",
         "nw_src_length": 32, "nat_targets": fip},
        {"type": "snat", "out_ports": [uplink], "nw_src_address": "10.0.0.0",
         "nw_src_length": 24, "nat_targets": pool},
    )  # fmt: skip
    update(lab, f"/routers/{r}", {"inbound_filter_id": pre, "outbound_filter_id": post})

    # vm1's firewall: its connections are tracked; towards it only ARP and replies pass.
    from_vm1, to_vm1 = replies_only(lab, "vm1")
    ports = {}
    for name, host, address, gateway in (
        ("vm1", "h1", "10.0.0.10/24", "10.0.0.1"),
        ("vm2", "h1", "10.0.0.20/24", "10.0.0.1"),
        ("vm3", "h2", "10.0.0.30/24", "10.0.0.1"),
    ):
        ports[name] = lab.create(f"/bridges/{lan}/ports")["id"]
        lab.cmd(
            "vm", "add", name, "--host", host, "--port", ports[name],
            "--ip", address, "--gw", gateway, timeout=90,
        )  # fmt: skip
    update(
        lab, f"/ports/{ports['vm1']}", {"inbound_filter_id": from_vm1, "outbound_filter_id": to_vm1}
    )
    # The external VM on the uplink: 203.0.113.9/25, so that the SNAT and floating
    # addresses (above .127) are reached through its gateway, the router.
    lab.cmd(
        "vm", "add", "ext", "--host", "h2", "--port", uplink,
        "--ip", "203.0.113.9/25", "--gw", "203.0.113.1", timeout=90,
    )  # fmt: skip


def _conntrack(lab: Lab, host: int) -> list[dict[str, Any]]:
    out = tessera("conntrack", "--host", names.host_id(lab.name, host), "--json").stdout
    entries: list[dict[str, Any]] = json.loads(out)["entries"]
    return entries


def test_a_conntrack_firewall_lets_replies_in_and_drops_new_inbound(net: Net) -> None:
    net.server("vm3", "10.0.0.30")
    net.server("vm1", "10.0.0.10")
    # vm1 starts: accepted, and the replies (SYN-ACK, data) entering on h2 pass.
    ok, seen = net.connect("vm1", "10.0.0.30")
    assert ok, seen
    assert seen.startswith("10.0.0.10:")
    assert net.ping("vm1", "10.0.0.30")
    # vm3 starts: its SYN and its echo request are new inbound connections: dropped.
    ok, seen = net.connect("vm3", "10.0.0.10", timeout=3.0)
    assert not ok, f"vm3 reached vm1 through the firewall: {seen}"
    assert not net.ping("vm3", "10.0.0.10")
    # vm2 has no firewall: vm3 reaches it.
    assert net.ping("vm3", "10.0.0.20")
    # h2, where the replies enter, holds vm1's connections (its datapath committed
    # them as they arrived, asked by h1's flow).
    assert any(
        e["kind"] == "conntrack"
        and e["forward"]["src_ip"] == "10.0.0.10"
        and e["forward"]["dst_ip"] == "10.0.0.30"
        for e in _conntrack(net.lab, 2)
    )


def test_connections_across_hosts_through_the_firewall_cost_no_miss(net: Net) -> None:
    """vm1's connections to vm3 leave h1 by a flow that commits them on arrival at h2
    (the VNI's commit bit): after the first one, neither agent sees a miss, and h2's
    datapath holds each connection vm3's replies are looked up in."""
    net.server("vm3", "10.0.0.30")
    ok, seen = net.connect("vm1", "10.0.0.30")  # the flows of new connections and replies
    assert ok, seen
    hosts = [names.host_id(net.lab.name, n) for n in (1, 2)]
    before = [agent_status(h)["misses"] for h in hosts]
    sources = set()
    for _ in range(10):
        ok, seen = net.connect("vm1", "10.0.0.30")  # SYN, SYN-ACK, data, FIN both ways
        assert ok, seen
        sources.add(int(seen.split()[0].split(":")[1]))
    misses = [agent_status(h)["misses"] - b for h, b in zip(hosts, before, strict=True)]
    # One per connection on h1 before (its SYN, keyed on the 5-tuple, the state pushed
    # to h2). A few are allowed for ARP revalidation meanwhile.
    assert sum(misses) <= 3, misses
    committed = {
        e["forward"]["src_port"]
        for e in _conntrack(net.lab, 2)
        if e.get("datapath") and e["forward"]["dst_port"] == PORT
    }
    assert sources <= committed, (sources, committed)


def test_dynamic_snat_to_an_external_vm_and_the_replies_back(net: Net) -> None:
    net.server("ext", "203.0.113.9")
    seen_ports = set()
    for _ in range(3):
        ok, seen = net.connect("vm1", "203.0.113.9")
        assert ok, seen
        peer, local = seen.split()
        ip, port = peer.split(":")
        assert ip == SNAT_IP, f"the external VM saw {peer} (vm1's own end: {local})"
        assert 20000 <= int(port) <= 29999
        assert local.startswith("10.0.0.10:")
        seen_ports.add(int(port))
    assert len(seen_ports) == 3  # each connection its own (address, port)
    assert net.ping("vm1", "203.0.113.9")  # ICMP echo through SNAT too
    kinds = [e["kind"] for e in _conntrack(net.lab, 1)]
    assert "fwd_snat" in kinds and "rev_snat" in kinds
    # The egress host (h2) received the bindings before the replies came.
    assert "rev_snat" in {e["kind"] for e in _conntrack(net.lab, 2)}


def test_a_floating_ip_both_ways(net: Net) -> None:
    net.server("vm2", "10.0.0.20")
    ok, seen = net.connect("ext", FLOATING_IP)
    assert ok, seen
    peer, _local = seen.split()
    assert peer.split(":")[0] == "203.0.113.9"  # vm2 sees the external address
    # vm2's own connection leaves from its floating IP.
    ok, seen = net.connect("vm2", "203.0.113.9")
    assert ok, seen
    assert seen.split()[0].split(":")[0] == FLOATING_IP
    assert net.ping("ext", FLOATING_IP)
