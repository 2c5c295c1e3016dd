"""ICMP errors about NATed and tracked connections, with real kernels on two lab hosts
(eBPF datapath): an error is only useful if the sender's kernel matches its quoted
header to a socket, which it does only if the quote was translated back — a connected
UDP socket then gets ECONNREFUSED.

- stateful DNAT: the external VM reaches vm1 (on the other host) through the DNAT
  address (TCP request and answer), and its UDP to a closed port behind the DNAT
  address is refused (vm1's port unreachable, translated back on the way out);
- dynamic SNAT: vm2 sends UDP to a closed port of the external VM and is refused (the
  external VM's port unreachable, to the SNAT address, translated back to vm2);
- vm2 is behind a conntrack firewall that drops new inbound traffic (vm1 cannot ping
  it): the error, related to vm2's connection, still comes in.

    lan 10.0.0.0/24 -- router r (10.0.0.1 | 203.0.113.1 uplink) -- ext 203.0.113.9/25 (h1)
      vm1 10.0.0.10 (h2)   DNAT 203.0.113.160:80 -> 10.0.0.10:8080 (TCP and UDP)
      vm2 10.0.0.20 (h2)   SNAT 10.0.0.0/24 -> 203.0.113.150:20000-29999, firewalled

203.0.113.0/24 exists only inside the VM namespaces.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from lab_helpers import (
    TESSERA,
    Lab,
    env,
    lab_up,
    new_chain,
    replies_only,
    root_missing,
    routed_lan,
    update,
)

from support.wait import wait_until

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

SNAT_IP = "203.0.113.150"
DNAT_IP = "203.0.113.160"

# A TCP server on argv[1]:argv[2] answering each client with the address it saw, for
# argv[3] seconds.
SERVER = r"""
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
s.settimeout(0.5)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        c, peer = s.accept()
    except socket.timeout:
        continue
    c.sendall(f"{peer[0]}\n".encode())
    c.close()
"""

CLIENT = r"""
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    c.settimeout(5)
    print(c.recv(100).decode().strip())
except OSError as e:
    print("FAIL", e)
    sys.exit(1)
"""

# UDP on a connected socket to argv[1]:argv[2]: exit 0 and print REFUSED when the
# kernel reports ECONNREFUSED (a port unreachable matched to this socket), 1 if nothing
# came back, 2 if something answered. A few tries: the first may wait for ARP.
PROBE = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((sys.argv[1], int(sys.argv[2])))
for _ in range(4):
    try:
        s.send(b"probe")
        s.recv(100)
    except ConnectionRefusedError:
        print("REFUSED", "%s:%d" % s.getsockname())
        sys.exit(0)
    except socket.timeout:
        continue
    print("ANSWERED")
    sys.exit(2)
print("TIMEOUT")
sys.exit(1)
"""


class Net:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.servers: list[subprocess.Popen[str]] = []

    def server(self, vm: str, address: str, port: int, lifetime: float = 60.0) -> None:
        proc = subprocess.Popen(
            [TESSERA, "lab", "exec", "--name", self.lab.name, vm, "--",
             sys.executable, "-c", SERVER, address, str(port), str(lifetime)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
        )  # fmt: skip
        self.servers.append(proc)
        wait_until(
            lambda: f":{port}" in self.lab.exec(vm, "ss", "-Hltn").stdout,
            timeout=15,
            what=f"the server on {vm}",
        )

    def run(self, vm: str, script: str, *args: str) -> tuple[int, str]:
        proc = self.lab.exec(vm, sys.executable, "-c", script, *args, check=False)
        return proc.returncode, proc.stdout.strip()

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

    to_vm1 = [{"address_from": "10.0.0.10", "address_to": "10.0.0.10", "port_from": 8080,
               "port_to": 8080}]  # fmt: skip
    pool = [{"address_from": SNAT_IP, "address_to": SNAT_IP, "port_from": 20000,
             "port_to": 29999}]  # fmt: skip
    pre = new_chain(
        lab, "pre",
        {"type": "dnat", "in_ports": [uplink], "nw_dst_address": DNAT_IP,
         "nw_dst_length": 32, "tp_dst": {"start": 80, "end": 80}, "nat_targets": to_vm1},
        {"type": "rev_snat", "in_ports": [uplink]},
    )  # fmt: skip
    post = new_chain(
        lab, "post",
        {"type": "rev_dnat", "out_ports": [uplink], "flow_action": "continue"},
        {"type": "snat", "out_ports": [uplink], "nw_src_address": "10.0.0.0",
         "nw_src_length": 24, "nat_targets": pool},
    )  # fmt: skip
    update(lab, f"/routers/{r}", {"inbound_filter_id": pre, "outbound_filter_id": post})

    # vm2's firewall: its connections are tracked; towards it only ARP and what is a
    # reply (or related to one) passes.
    from_vm2, to_vm2 = replies_only(lab, "vm2")
    ports = {}
    for name, address in (("vm1", "10.0.0.10/24"), ("vm2", "10.0.0.20/24")):
        ports[name] = lab.create(f"/bridges/{lan}/ports")["id"]
        lab.cmd(
            "vm", "add", name, "--host", "h2", "--port", ports[name],
            "--ip", address, "--gw", "10.0.0.1", timeout=90,
        )  # fmt: skip
    update(
        lab, f"/ports/{ports['vm2']}", {"inbound_filter_id": from_vm2, "outbound_filter_id": to_vm2}
    )
    # The external VM on the uplink, on the other host: 203.0.113.9/25, so that the
    # SNAT and DNAT addresses (above .127) are reached through its gateway, the router.
    lab.cmd(
        "vm", "add", "ext", "--host", "h1", "--port", uplink,
        "--ip", "203.0.113.9/25", "--gw", "203.0.113.1", timeout=90,
    )  # fmt: skip


def test_stateful_dnat_both_ways_and_its_port_unreachable_translated(net: Net) -> None:
    net.server("vm1", "10.0.0.10", 8080)
    code, seen = net.run("ext", CLIENT, DNAT_IP, "80")
    assert code == 0 and seen == "203.0.113.9", seen  # vm1 answered, through the DNAT
    # Nothing listens on vm1's UDP 8080: its port unreachable reaches the external VM
    # with the DNAT address outside and in the quote, or no socket would take it.
    code, out = net.run("ext", PROBE, DNAT_IP, "80")
    assert code == 0, out


def test_dynamic_snat_port_unreachable_reaches_the_firewalled_vm(net: Net) -> None:
    # The firewall works: a new inbound connection to vm2 is dropped.
    assert not net.ping("vm1", "10.0.0.20")
    # vm2's UDP leaves through SNAT; the external VM's port unreachable (about the SNAT
    # address and port) comes back through the firewall, related, translated back.
    code, out = net.run("vm2", PROBE, "203.0.113.9", "9")
    assert code == 0, out
    assert out.startswith("REFUSED 10.0.0.20:")
