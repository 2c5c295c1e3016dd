"""Stateful NAT under load and across agent restarts, with real VMs on two lab hosts
(eBPF datapath, kernel flows):

- dynamic SNAT: VMs on both hosts open many connections at once to an "external" VM
  through the same SNAT address; each agent hands out ports from its own leased blocks,
  so the external VM never sees one (address, port) twice while they are open, and
  every reply reaches the VM (and the socket) that asked;
- a NATed TCP stream (dynamic SNAT, and a floating IP) keeps going, with no reset and
  no byte lost, while the agent of the host where it enters, or of the host where it
  leaves, is stopped and started again.

    lan 10.0.0.0/24 -- router r (10.0.0.1 | 203.0.113.1 uplink) -- ext 203.0.113.9/25 (h2)
      vm1 10.0.0.10 (h1)   vm3 10.0.0.30 (h2)     SNAT 10.0.0.0/24 -> 203.0.113.150
      vm2 10.0.0.20 (h1)   vm4 10.0.0.40 (h2)     floating 203.0.113.200 <-> fip 10.0.0.99 (h1)

203.0.113.0/24 exists only inside the VM namespaces.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from lab_helpers import (
    TESSERA,
    Lab,
    add_route,
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
FLOATING_IP = "203.0.113.200"
EXT_IP = "203.0.113.9"
CONNECTIONS = 20  # per VM, all open at once
CLIENTS = {"vm1": 1, "vm2": 1, "vm3": 2, "vm4": 2}  # VM -> host
FIP_VM = "fip"  # 10.0.0.99 on h1, reached from outside by its floating IP
STREAM_SECONDS = 120.0  # at most: the stream runs until the test has restarted the agent
AFTER_START = 2.0  # seconds the stream goes on once the restarted agent holds its state

# Accepts connections for argv[3] seconds; answers each client's first line with the
# address it saw it from and that line, then holds the connection until the client
# closes it. Prints "open ADDR:PORT" per connection accepted and "twice ADDR:PORT" when
# an (address, port) arrives while a connection from it is still open.
SERVER = r"""
import socket, sys, threading, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(256)
s.settimeout(0.5)
print("listening", flush=True)
lock = threading.Lock()
open_peers = set()
def serve(c, peer):
    try:
        c.settimeout(20)
        line = b""
        while not line.endswith(b"\n"):
            chunk = c.recv(100)
            if not chunk:
                return
            line += chunk
        c.sendall(f"{peer[0]}:{peer[1]} ".encode() + line)
        while c.recv(100):
            pass
    except OSError:
        pass
    finally:
        with lock:
            open_peers.discard(peer)
        c.close()
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        c, peer = s.accept()
    except socket.timeout:
        continue
    with lock:
        if peer in open_peers:
            print("twice %s:%d" % peer, flush=True)
        open_peers.add(peer)
        print("open %s:%d" % peer, flush=True)
    threading.Thread(target=serve, args=(c, peer), daemon=True).start()
"""

# Opens argv[3] connections at once (one thread each), sends each a line naming it,
# and once all are answered (or failed) closes them. Prints JSON: per connection the
# answer or the error.
CLIENTS_SCRIPT = r"""
import json, socket, sys, threading
host, port, n, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
results, socks = [None] * n, []
barrier = threading.Barrier(n, timeout=30)
def one(i):
    c = None
    try:
        c = socket.create_connection((host, port), timeout=10)
        socks.append(c)
        token = f"{name}#{i}"
        c.sendall(token.encode() + b"\n")
        c.settimeout(10)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = c.recv(200)
            if not chunk:
                break
            answer += chunk
        seen, echoed = answer.decode().split()
        results[i] = {"seen": seen, "ok": echoed == token}
    except (OSError, ValueError) as e:
        results[i] = {"error": repr(e)}
    try:
        barrier.wait()  # all open together, then all closed
    except threading.BrokenBarrierError:
        pass
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join(60)
for c in socks:
    c.close()
print(json.dumps(results))
"""

# Receives one connection and counts its bytes to EOF; answers the count. argv: address,
# port, lifetime.
RECEIVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(float(sys.argv[3]))
print("listening", flush=True)
c, peer = s.accept()
c.settimeout(30)
total = 0
while True:
    chunk = c.recv(65536)
    if not chunk:
        break
    total += len(chunk)
c.sendall(f"{total}\n".encode())
c.close()
print(f"{peer[0]}:{peer[1]} {total}", flush=True)
"""

# Sends a paced stream until SIGUSR1 (or argv[3] seconds at most), then half-closes and
# reads the receiver's count. Prints "sent received"; exit 1 on any error (a reset too).
SENDER = r"""
import signal, socket, sys, time
stop = []
signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.settimeout(30)
chunk = bytes(range(256)) * 64
sent, end = 0, time.monotonic() + float(sys.argv[3])
try:
    while not stop and time.monotonic() < end:
        c.sendall(chunk)
        sent += len(chunk)
        time.sleep(0.005)
    c.shutdown(socket.SHUT_WR)
    answer = b""
    while not answer.endswith(b"\n"):
        part = c.recv(100)
        if not part:
            break
        answer += part
    print(sent, answer.decode().strip(), flush=True)
except OSError as e:
    print("FAIL", sent, repr(e), flush=True)
    sys.exit(1)
"""


class Net:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, vm: str, script: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [TESSERA, "lab", "exec", "--name", self.lab.name, vm, "--",
             sys.executable, "-c", script, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def listening(self, vm: str, port: int) -> None:
        wait_until(
            lambda: f":{port} " in self.lab.exec(vm, "ss", "-Hltn").stdout,
            timeout=15,
            what=f"the server on {vm}:{port}",
        )

    def stop(self) -> None:
        for proc in self.procs:  # our own children, by their pid
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


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
    add_route(lab, r, "10.0.0.0", 24, gw)
    add_route(lab, r, "203.0.113.0", 24, uplink)
    interior = lab.create(f"/bridges/{lan}/ports")["id"]
    with lab.api() as client:
        linked = client.post(f"ports/{interior}/link", json={"peer_id": gw})
    assert linked.status_code in (200, 201, 204), linked.text

    one = [{"address_from": "10.0.0.99", "address_to": "10.0.0.99"}]
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
        {"type": "snat", "out_ports": [uplink], "nw_src_address": "10.0.0.99",
         "nw_src_length": 32, "nat_targets": fip},
        {"type": "snat", "out_ports": [uplink], "nw_src_address": "10.0.0.0",
         "nw_src_length": 24, "nat_targets": pool},
    )  # fmt: skip
    update(lab, f"/routers/{r}", {"inbound_filter_id": pre, "outbound_filter_id": post})

    for index, (name, host) in enumerate(sorted(CLIENTS.items()), 1):
        port = lab.create(f"/bridges/{lan}/ports")["id"]
        lab.cmd(
            "vm", "add", name, "--host", f"h{host}", "--port", port,
            "--ip", f"10.0.0.{index}0/24", "--gw", "10.0.0.1", timeout=90,
        )  # fmt: skip
    port = lab.create(f"/bridges/{lan}/ports")["id"]
    lab.cmd(
        "vm", "add", FIP_VM, "--host", "h1", "--port", port,
        "--ip", "10.0.0.99/24", "--gw", "10.0.0.1", timeout=90,
    )  # fmt: skip
    # 203.0.113.9/25: the SNAT and floating addresses (above .127) are reached through
    # its gateway, the router.
    lab.cmd(
        "vm", "add", "ext", "--host", "h2", "--port", uplink,
        "--ip", f"{EXT_IP}/25", "--gw", "203.0.113.1", timeout=90,
    )  # fmt: skip


def _report(lab: Lab, host: int) -> dict[str, Any]:
    out = tessera("conntrack", "--host", names.host_id(lab.name, host), "--json").stdout
    report: dict[str, Any] = json.loads(out)
    return report


def _blocks(lab: Lab, host: int) -> set[tuple[str, int, int]]:
    blocks = set()
    for lease in _report(lab, host)["snat_blocks"]:
        first, last = (int(p) for p in lease["ports"].split("-"))
        blocks.add((lease["ip"], first, last))
    return blocks


def test_concurrent_snat_connections_from_two_hosts_never_share_an_address_and_port(
    net: Net,
) -> None:
    port = 8081
    server = net.spawn("ext", SERVER, EXT_IP, str(port), "60")
    net.listening("ext", port)
    started = time.monotonic()
    clients = {
        vm: net.spawn(vm, CLIENTS_SCRIPT, EXT_IP, str(port), str(CONNECTIONS), vm) for vm in CLIENTS
    }
    results: dict[str, list[dict[str, Any]]] = {}
    for vm, proc in clients.items():
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, f"{vm}: {err}{out}"
        results[vm] = json.loads(out.strip().splitlines()[-1])
    assert time.monotonic() - started < 90
    server.terminate()
    served, _ = server.communicate(timeout=10)
    lines = served.splitlines()
    assert not [x for x in lines if x.startswith("twice")], served
    assert len([x for x in lines if x.startswith("open")]) == CONNECTIONS * len(CLIENTS)

    by_host: dict[int, set[int]] = {1: set(), 2: set()}
    seen_all: list[tuple[str, int]] = []
    for vm, answers in results.items():
        failed = [a for a in answers if a is None or "error" in a]
        assert not failed, f"{vm}: {len(failed)} of {CONNECTIONS} failed: {failed[:3]}"
        # Each reply reached the socket that asked (the server echoed its own token).
        assert all(a["ok"] for a in answers), f"{vm}: a reply reached the wrong connection"
        for a in answers:
            ip, sport = a["seen"].split(":")
            assert ip == SNAT_IP, f"{vm}: the external VM saw {a['seen']}"
            assert 20000 <= int(sport) <= 29999
            seen_all.append((ip, int(sport)))
            by_host[CLIENTS[vm]].add(int(sport))
    # All were open at once (each client held them until all were answered), so no two
    # connections of any VM may have shared an (address, port).
    assert len(seen_all) == len(set(seen_all)) == CONNECTIONS * len(CLIENTS)
    assert not by_host[1] & by_host[2]
    # Each host translated from blocks of its own, and no block is leased by both.
    blocks = {host: _blocks(net.lab, host) for host in (1, 2)}
    assert blocks[1] and blocks[2], blocks
    assert not blocks[1] & blocks[2], blocks
    for host, ports in by_host.items():
        for p in ports:
            assert any(first <= p <= last for _ip, first, last in blocks[host]), (host, p, blocks)


def _about(lab: Lab, host: int, port: int) -> set[tuple[str, str, str]]:
    """What h`host`'s agent holds about the connections to or from `port` (nothing
    while it does not answer: it may be starting)."""
    proc = tessera("conntrack", "--host", names.host_id(lab.name, host), "--json", check=False)
    if proc.returncode != 0:
        return set()
    return {
        (e["kind"], e["forward"]["text"], json.dumps(e["nat"], sort_keys=True))
        for e in json.loads(proc.stdout)["entries"]
        if port in (e["forward"].get("src_port"), e["forward"].get("dst_port"))
    }


def _restart_during_stream(
    net: Net,
    sender_vm: str,
    receiver_vm: str,
    bind: str,
    target: str,
    port: int,
    host: int,
    *,
    wipe_flow_state: bool = False,
    back: frozenset[str] | None = None,
) -> tuple[str, set[tuple[str, str, str]]]:
    """Stream from `sender_vm` to `target` while h`host`'s agent is stopped and started
    (`wipe_flow_state`: its flow-state file deleted in between, so that it starts
    without local state); returns the address the receiver saw the stream from and
    what the agent held about the connection before the stop: held again after the
    start (checked while the stream still runs), or of it the entries of the kinds in
    `back`."""
    receiver = net.spawn(receiver_vm, RECEIVER, bind, str(port), "60")
    net.listening(receiver_vm, port)
    sender = net.spawn(sender_vm, SENDER, target, str(port), str(STREAM_SECONDS))
    time.sleep(2.0)
    assert sender.poll() is None, sender.communicate()
    held = _about(net.lab, host, port)
    wipe = ["--wipe-flow-state"] if wipe_flow_state else []
    stopped = net.lab.cmd("agent", "stop", *wipe, f"h{host}").stdout
    assert "stopped" in stopped and (not wipe or "flow-state file wiped" in stopped), stopped
    time.sleep(1.0)
    net.lab.cmd("agent", "start", f"h{host}")
    wanted = {e for e in held if back is None or e[0] in back}
    restored = wait_until(
        lambda: wanted <= _about(net.lab, host, port),
        timeout=10,
        interval=0.5,
        what=f"h{host}'s agent to hold the connection's state again",
    )
    assert restored
    time.sleep(AFTER_START)  # the stream goes on with the new agent
    assert sender.poll() is None, "the stream ended before the agent was back"
    sender.send_signal(signal.SIGUSR1)  # our child, by its pid: python itself (nsenter execs)
    out, err = sender.communicate(timeout=60)
    assert sender.returncode == 0, f"the sender failed: {out} {err}"
    sent, received = (int(x) for x in out.split())
    rout, rerr = receiver.communicate(timeout=30)
    assert receiver.returncode == 0, rerr
    peer, counted = rout.strip().splitlines()[-1].split()
    assert int(counted) == received == sent, (sent, received, counted)
    assert sent > 1_000_000  # a stream, not a handful of packets
    return peer.split(":")[0], held


@pytest.mark.parametrize("host", [1, 2], ids=["ingress-h1", "egress-h2"])
def test_a_snat_stream_survives_an_agent_restart(net: Net, host: int) -> None:
    port = 9000 + host
    peer, held = _restart_during_stream(net, "vm1", "ext", EXT_IP, EXT_IP, port, host)
    assert peer == SNAT_IP
    # Both hosts hold the binding (h1 made it, h2 was sent it), and had it back.
    assert {kind for kind, _, _ in held} >= {"fwd_snat", "rev_snat"}, held
    # The ingress host leases the binding's block again: no other connection gets its port.
    (nat,) = [json.loads(n) for kind, _, n in held if kind == "fwd_snat"]
    wait_until(
        lambda: any(first <= nat["port"] <= last for _ip, first, last in _blocks(net.lab, 1)),
        timeout=15,
        interval=0.5,
        what="h1 to lease the restored binding's block again",
    )


@pytest.mark.parametrize("host", [2, 1], ids=["ingress-h2", "egress-h1"])
def test_a_floating_ip_stream_survives_an_agent_restart(net: Net, host: int) -> None:
    peer, _ = _restart_during_stream(
        net, "ext", FIP_VM, "10.0.0.99", FLOATING_IP, 9100 + host, host
    )
    assert peer == EXT_IP
