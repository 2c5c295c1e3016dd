"""Pings through dynamic SNAT across two lab hosts (eBPF datapath, kernel flows): two VMs
on different hosts ping one external VM at the same time, with the same echo id, through
the same SNAT address. SNAT gives each echo its own id, so both get every reply; and the
flows of both directions are keyed by the echo id, so all packets after the first are
forwarded by the kernel (the flows' hit counters say so).

    lan 10.0.0.0/24 -- router r (10.0.0.1 | 203.0.113.1 uplink) -- ext 203.0.113.9/25 (h1)
      vm1 10.0.0.10 (h1)                          SNAT 10.0.0.0/24 -> 203.0.113.150
      vm2 10.0.0.20 (h2)

`ping` of iputils picks its own id (no option sets it), so the VMs run a small raw-socket
pinger. 203.0.113.0/24 exists only inside the VM namespaces.
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
)

from tessera.lab import names

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

SNAT_IP = "203.0.113.150"
EXT_IP = "203.0.113.9"
ECHO_ID = 4242
COUNT = 12

# Sends argv[3] echo requests with id argv[2] to argv[1], argv[4] seconds apart; prints
# the sequence numbers whose reply (same id, from the target) came back.
PINGER = r"""
import socket, struct, sys, time
target, ident, count, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(0.05)
def checksum(b):
    total = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
got = set()
def receive(until):
    while time.monotonic() < until:
        try:
            data, peer = s.recvfrom(2048)
        except socket.timeout:
            continue
        ihl = (data[0] & 15) * 4
        kind, _code, _sum, i, seq = struct.unpack_from("!BBHHH", data, ihl)
        if kind == 0 and i == ident and peer[0] == target:
            got.add(seq)
for seq in range(1, count + 1):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"tessera echo"
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    s.sendto(body, (target, 0))
    receive(time.monotonic() + gap)
receive(time.monotonic() + 1.0)
print(" ".join(str(q) for q in sorted(got)))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up("--hosts", "2", "--datapath", "ebpf") as the_lab:
        _topology(the_lab)
        yield the_lab


def _topology(lab: Lab) -> None:
    lan = lab.create("/bridges", {"name": "lan"})["id"]
    r = lab.create("/routers", {"name": "r"})["id"]
    gw = lab.create(
        f"/routers/{r}/ports",
        {"port_address": "10.0.0.1", "network_address": "10.0.0.0", "network_length": 24},
    )["id"]
    uplink = lab.create(
        f"/routers/{r}/ports",
        {"port_address": "203.0.113.1", "network_address": "203.0.113.0", "network_length": 24},
    )["id"]
    for port, prefix in ((gw, "10.0.0.0"), (uplink, "203.0.113.0")):
        lab.create(
            f"/routers/{r}/routes",
            {
                "src_network_addr": "0.0.0.0", "src_network_length": 0,
                "dst_network_addr": prefix, "dst_network_length": 24,
                "type": "Normal", "next_hop_port": port, "weight": 100,
            },
        )  # fmt: skip
    interior = lab.create(f"/bridges/{lan}/ports")["id"]
    with lab.api() as client:
        linked = client.post(f"ports/{interior}/link", json={"peer_id": gw})
        assert linked.status_code in (200, 201, 204), linked.text
    pool = [{"address_from": SNAT_IP, "address_to": SNAT_IP, "port_from": 20000,
             "port_to": 29999}]  # fmt: skip
    pre = new_chain(lab, "pre", {"type": "rev_snat", "in_ports": [uplink]})
    post = new_chain(
        lab, "post",
        {"type": "snat", "out_ports": [uplink], "nw_src_address": "10.0.0.0",
         "nw_src_length": 24, "nat_targets": pool},
    )  # fmt: skip
    with lab.api() as client:
        current = client.get(f"routers/{r}").json()
        fields = {"inbound_filter_id": pre, "outbound_filter_id": post}
        response = client.put(f"routers/{r}", json={**current, **fields})
        assert response.status_code == 200, response.text
    for name, host, address in (("vm1", "h1", "10.0.0.10/24"), ("vm2", "h2", "10.0.0.20/24")):
        port = lab.create(f"/bridges/{lan}/ports")["id"]
        lab.cmd(
            "vm", "add", name, "--host", host, "--port", port,
            "--ip", address, "--gw", "10.0.0.1", timeout=90,
        )  # fmt: skip
    lab.cmd(
        "vm", "add", "ext", "--host", "h1", "--port", uplink,
        "--ip", f"{EXT_IP}/25", "--gw", "203.0.113.1", timeout=90,
    )  # fmt: skip


def _pinger(lab: Lab, vm: str, count: int = COUNT) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [TESSERA, "lab", "exec", "--name", lab.name, vm, "--", sys.executable, "-c", PINGER,
         EXT_IP, str(ECHO_ID), str(count), "0.25"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip


def _replies(proc: subprocess.Popen[str]) -> set[int]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return {int(q) for q in out.split()}


def _flows(lab: Lab, host: int) -> list[dict[str, Any]]:
    from tessera.agent.control import agents_dir, request

    answer = request(agents_dir() / f"{names.host_id(lab.name, host)}.sock", "flows")
    flows: list[dict[str, Any]] = answer["flows"]
    return flows


def test_two_vms_on_two_hosts_ping_one_address_with_one_id_through_one_snat_address(
    lab: Lab,
) -> None:
    # The router learns every MAC first, so that no request waits for ARP.
    for vm in ("vm1", "vm2"):
        assert _replies(_pinger(lab, vm, count=1)) == {1}, vm
    one, two = _pinger(lab, "vm1"), _pinger(lab, "vm2")  # at the same time
    got = {"vm1": _replies(one), "vm2": _replies(two)}
    assert got == {"vm1": set(range(1, COUNT + 1)), "vm2": set(range(1, COUNT + 1))}, got

    # Each VM's echo got its own id on the SNAT address (the id both VMs used is 4242).
    out = tessera("conntrack", "--host", names.host_id(lab.name, 1), "--json").stdout
    fwd = [
        e for e in json.loads(out)["entries"]
        if e["kind"] == "fwd_snat" and e["forward"]["proto"] == 1
        and e["forward"]["src_port"] == ECHO_ID
    ]  # fmt: skip
    by_vm = {e["forward"]["src_ip"]: (e["nat"]["ip"], e["nat"]["port"]) for e in fwd}
    assert set(by_vm) == {"10.0.0.10", "10.0.0.20"}, fwd
    assert {ip for ip, _ in by_vm.values()} == {SNAT_IP}
    assert by_vm["10.0.0.10"][1] != by_vm["10.0.0.20"][1]
    assert all(20000 <= port <= 29999 for _, port in by_vm.values())

    # The kernel carried the echoes after the first: each VM's requests hit one flow
    # keyed by the id, on its own host; the replies hit one per translated id on h1.
    for host, vm_ip in ((1, "10.0.0.10"), (2, "10.0.0.20")):
        requests = [
            f
            for f in _flows(lab, host)
            if f["match"].get("ip_src") == vm_ip and f["match"].get("icmp_id") == ECHO_ID
        ]
        assert len(requests) == 1, requests
        assert requests[0]["packets"] >= COUNT - 1, requests
    for _ip, new_id in by_vm.values():
        replies = [f for f in _flows(lab, 1) if f["match"].get("icmp_id") == new_id
                   and f["match"].get("ip_src") == EXT_IP]  # fmt: skip
        assert len(replies) == 1, replies
        assert replies[0]["packets"] >= COUNT - 1, replies
