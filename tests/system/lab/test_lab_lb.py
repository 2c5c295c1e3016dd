"""An L4 load balancer with real VMs on three lab hosts (eBPF datapath, kernel flows):

    client cl 10.0.1.9 (h1) -- 10.0.1.1 router r 10.0.0.1 -- lan 10.0.0.0/24
                                  VIP 10.0.2.100:80          m1 10.0.0.11 (h1)
                                  -> pool, port 8080          m2 10.0.0.12 (h2)
                                                              m3 10.0.0.13 (h3)

Each member runs a TCP server that answers a connection with its own name, then echoes
what it is sent. New connections to the VIP reach every member; with SOURCE_IP one client
stays on one member; a member marked INACTIVE in the NSDB (as the health-monitor service
does) or disabled (`admin_state_up` false) gets no new connection, while a connection it
already serves keeps exchanging data.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from lab_helpers import TESSERA, Lab, add_route, env, lab_up, root_missing, update

from support.wait import wait_until
from tessera.model import PoolMember
from tessera.nsdb.connect import open_nsdb
from tessera.nsdb.store.topology import TopologyStore

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

VIP = "10.0.2.100"
MEMBERS = {"m1": ("10.0.0.11", 1), "m2": ("10.0.0.12", 2), "m3": ("10.0.0.13", 3)}
SERVE_SECONDS = "600"  # the servers' lifetime at most (the module's fixture stops them)

# argv: name, lifetime. Answers each connection with its name, then echoes until EOF.
SERVER = r"""
import socket, sys, threading, time
name = sys.argv[1].encode() + b"\n"
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(128)
s.settimeout(0.5)
def serve(c):
    try:
        c.settimeout(120)
        c.sendall(name)
        while True:
            data = c.recv(4096)
            if not data:
                break
            c.sendall(data)
    except OSError:
        pass
    finally:
        c.close()
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        c, _ = s.accept()
    except socket.timeout:
        continue
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# argv: address, port, count. One connection after the other: the name each was
# answered with (or the error). Prints a JSON list.
CONNECT = r"""
import json, socket, sys
out = []
for _ in range(int(sys.argv[3])):
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
            c.settimeout(5)
            line = b""
            while not line.endswith(b"\n"):
                chunk = c.recv(100)
                if not chunk:
                    break
                line += chunk
            out.append(line.decode().strip() or "closed")
    except OSError as e:
        out.append("error " + repr(e))
print(json.dumps(out))
"""

# argv: address, port, lifetime. One connection: prints the member's name, then sends a
# line every 0.1 s and checks its echo until SIGUSR1 (or the lifetime). Prints
# "ok EXCHANGES" at the end, or "FAIL ..." and exits 1.
LONG = r"""
import signal, socket, sys, time
stop = []
signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.settimeout(5)
f = c.makefile("rb")
print(f.readline().decode().strip(), flush=True)
n, end = 0, time.monotonic() + float(sys.argv[3])
try:
    while not stop and time.monotonic() < end:
        line = b"exchange %d\n" % n
        c.sendall(line)
        if f.readline() != line:
            raise OSError("wrong or no echo")
        n += 1
        time.sleep(0.1)
    print("ok", n, flush=True)
except OSError as e:
    print("FAIL", n, repr(e), flush=True)
    sys.exit(1)
"""


class Site:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.procs: list[subprocess.Popen[str]] = []
        self.member_ids: dict[str, str] = {}
        self.vip = ""

    def spawn(self, vm: str, script: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [TESSERA, "lab", "exec", "--name", self.lab.name, vm, "--",
             sys.executable, "-c", script, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def connect(self, count: int) -> list[str]:
        proc = self.lab.exec(
            "cl", sys.executable, "-c", CONNECT, VIP, "80", str(count), timeout=30 + 6 * count
        )
        answers: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
        return answers

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
def site() -> Iterator[Site]:
    with lab_up("--hosts", "3", "--datapath", "ebpf") as lab:
        s = Site(lab)
        try:
            _topology(s)
            yield s
        finally:
            s.stop()


def _topology(s: Site) -> None:
    lab = s.lab
    r = lab.create("/routers", {"name": "r"})["id"]
    for name, net in (("lan", "10.0.0"), ("cli", "10.0.1")):
        bridge = lab.create("/bridges", {"name": name})["id"]
        gw = lab.create(
            f"/routers/{r}/ports",
            {"port_address": f"{net}.1", "network_address": f"{net}.0", "network_length": 24},
        )["id"]
        add_route(lab, r, f"{net}.0", 24, gw)
        interior = lab.create(f"/bridges/{bridge}/ports")["id"]
        with lab.api() as client:
            linked = client.post(f"ports/{interior}/link", json={"peer_id": gw})
        assert linked.status_code in (200, 201, 204), linked.text
        vms = {"cl": ("10.0.1.9", 1)} if name == "cli" else MEMBERS
        for vm, (ip, host) in vms.items():
            port = lab.create(f"/bridges/{bridge}/ports")["id"]
            lab.cmd(
                "vm", "add", vm, "--host", f"h{host}", "--port", port,
                "--ip", f"{ip}/24", "--gw", f"{net}.1", timeout=90,
            )  # fmt: skip
    lb = lab.create("/load_balancers", {"router_id": r})["id"]
    pool = lab.create("/pools", {"load_balancer_id": lb})["id"]
    for vm, (ip, _host) in MEMBERS.items():
        member = lab.create(
            "/pool_members", {"pool_id": pool, "address": ip, "protocol_port": 8080}
        )
        s.member_ids[vm] = member["id"]
    s.vip = lab.create(
        "/vips", {"load_balancer_id": lb, "pool_id": pool, "address": VIP, "protocol_port": 80}
    )["id"]
    for vm in MEMBERS:
        s.spawn(vm, SERVER, vm, SERVE_SECONDS)
    for vm in MEMBERS:
        wait_until(
            lambda vm=vm: ":8080 " in lab.exec(vm, "ss", "-Hltn").stdout,  # type: ignore[misc]
            timeout=15,
            what=f"the server on {vm}",
        )


def test_new_connections_reach_every_member(site: Site) -> None:
    answers = site.connect(30)
    counts = Counter(answers)
    assert set(counts) == set(MEMBERS), counts  # no error, every member (p of a miss ~1e-5)
    assert sum(counts.values()) == 30


def test_source_ip_keeps_one_client_on_one_member(site: Site) -> None:
    update(site.lab, f"/vips/{site.vip}", {"session_persistence": "SOURCE_IP"})
    try:
        answers = site.connect(12)
        assert len(set(answers)) == 1 and answers[0] in MEMBERS, answers
    finally:
        update(site.lab, f"/vips/{site.vip}", {"session_persistence": None})


def _status(site: Site, vm: str, status: Any) -> None:
    """Write a member's status straight into the NSDB, as the health-monitor service
    does."""
    nsdb = open_nsdb(site.lab.status()["nsdb"]["url"])
    try:
        TopologyStore(nsdb).set_status(PoolMember, site.member_ids[vm], status)
    finally:
        nsdb.close()


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the long connection printed nothing"
    return proc.stdout.readline().strip()


def test_a_member_out_of_service_gets_no_new_connection_but_keeps_its_own(site: Site) -> None:
    long = site.spawn("cl", LONG, VIP, "80", "300")
    serving = _first_line(long, 20)
    assert serving in MEMBERS, serving
    member = f"/pool_members/{site.member_ids[serving]}"
    try:
        for step in ("inactive", "disabled"):
            if step == "inactive":
                _status(site, serving, "INACTIVE")
            else:
                _status(site, serving, "ACTIVE")
                update(site.lab, member, {"admin_state_up": False})
            time.sleep(1.0)  # the agents hear of it (a watch) before the next connections
            answers = site.connect(15)
            assert serving not in answers, (step, answers)
            assert set(answers) <= set(MEMBERS), (step, answers)
            assert long.poll() is None, f"the long connection ended when {step}"
    finally:
        _status(site, serving, "ACTIVE")
        update(site.lab, member, {"admin_state_up": True})
    long.send_signal(signal.SIGUSR1)  # our child, by its pid: python itself (nsenter execs)
    out, err = long.communicate(timeout=30)
    assert long.returncode == 0, f"the long connection failed: {out} {err}"
    word, exchanges = out.split()
    assert word == "ok" and int(exchanges) >= 20, out  # it kept talking all along
