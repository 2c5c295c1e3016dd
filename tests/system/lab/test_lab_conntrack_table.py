"""The datapath's connection table under a burst, and resized, with real VMs (eBPF).

    lan 10.0.0.0/24: vm1 10.0.0.10 (h1, firewalled: replies only)   vm2 10.0.0.20 (h1)

vm1 holds an idle TCP connection to a server on vm2; the server speaks first after the
idle time (as a push notification does), so only the datapath's entry lets its segment
through vm1's firewall.

- A burst of 90,000 connections from vm1, each closed by vm1's RST once established
  (more than the 65,536 entries the table had): each RST removes its connection's entry
  on the spot, so the idle connection keeps its own, and the server's next segment
  still reaches vm1. Before, the burst's entries stayed until the sweep expired them
  seconds later, the full LRU table evicted the idle connection, and the firewall
  dropped the server's segment (this test failed so).
- The agent restarted with another table size (`TESSERA_CT_ENTRIES`, as
  `tessera agent --ct-entries`) replaces the table by one of that size holding its
  connections: the idle connection still works.
"""

from __future__ import annotations

import ctypes
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_helpers import TESSERA, Lab, env, firewall, lab_up, root_missing

from support.wait import wait_until
from tessera.datapath.ebpf.layout import CtKey, CtValue
from tessera.datapath.ebpf.maps.bpfmap import BpfMap
from tessera.lab import names

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

PORT = 8081
PIN_ROOT = Path("/sys/fs/bpf/tessera")

# Accepts one connection, then sends it every line it reads on stdin.
SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
print("accepted", flush=True)
for line in sys.stdin:
    c.sendall(line.encode())
"""

# Connects and prints every line the server sends.
CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.settimeout(None)
print("connected", flush=True)
for line in c.makefile():
    print("got", line.strip(), flush=True)
"""

# Accepts and closes connections on port argv[2] for argv[3] seconds.
ACCEPTOR = r"""
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4096)
s.settimeout(0.5)
print("listening", flush=True)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        c, _ = s.accept()
    except OSError:
        continue
    c.close()
"""

# Opens argv[3] connections to argv[1]:argv[2] (argv[4] in flight, from source ports
# 10000 up), each closed by an RST the moment it is established; prints how many were.
BURST = r"""
import errno, selectors, socket, struct, sys, time
dst, port, count, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
linger = struct.pack("ii", 1, 0)
sel = selectors.DefaultSelector()
launched = ok = 0
end = time.monotonic() + 60
while (launched < count or sel.get_map()) and time.monotonic() < end:
    while len(sel.get_map()) < conc and launched < count:
        s = socket.socket()
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        launched += 1
        try:
            s.bind(("", 10000 + launched))
        except OSError:
            s.close()
            continue
        if s.connect_ex((dst, port)) not in (0, errno.EINPROGRESS):
            s.close()
            continue
        sel.register(s, selectors.EVENT_WRITE)
    for key, _ in sel.select(timeout=0.05):
        sel.unregister(key.fileobj)
        ok += key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        key.fileobj.close()
print("connected", ok, flush=True)
"""
BURST_PORTS = (8082, 8083)
BURST_EACH = 45_000  # source ports 10001..55000 to each of the two ports


class Stream:
    """A `tessera lab exec` child whose stdout is read line by line with a timeout."""

    def __init__(self, lab: Lab, vm: str, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [TESSERA, "lab", "exec", "--name", lab.name, vm, "--",
             sys.executable, "-c", script, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env(),
        )  # fmt: skip

    def line(self, timeout: float = 5.0) -> str | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else None

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        self.proc.terminate()  # our own child, by its pid
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_up("--hosts", "1", "--datapath", "ebpf") as lab:
        lan = lab.create("/bridges", {"name": "lan"})["id"]
        ports = {}
        for name, address in (("vm1", "10.0.0.10/24"), ("vm2", "10.0.0.20/24")):
            ports[name] = lab.create(f"/bridges/{lan}/ports")["id"]
            lab.cmd("vm", "add", name, "--host", "h1", "--port", ports[name], "--ip", address,
                    timeout=90)  # fmt: skip
        firewall(lab, "vm1", ports["vm1"], wait=True)
        yield lab


def _table(lab: Lab, name: str) -> tuple[int, int]:
    """(max entries, entries) of h1's pinned connection table `name`."""
    m = BpfMap.open_pinned(PIN_ROOT / names.host_id(lab.name, 1) / "maps" / name, CtKey, CtValue)
    try:
        return m.info().max_entries, len(m.items_bytes()[0]) // ctypes.sizeof(CtKey)
    finally:
        m.close()


def test_an_idle_connection_outlives_a_burst_and_a_resize(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = Stream(lab, "vm2", SERVER, "10.0.0.20", str(PORT))
    client: Stream | None = None
    try:
        assert server.line(15) == "listening"
        # A first connection through the firewall: its miss installs the flows.
        warm = lab.exec("vm1", sys.executable, "-c",
                        "import socket; socket.create_connection(('10.0.0.20', 1), 5)",
                        check=False)  # fmt: skip
        assert "refused" in warm.stderr, warm.stderr
        client = Stream(lab, "vm1", CLIENT, "10.0.0.20", str(PORT))
        assert client.line(15) == "connected"
        assert server.line(5) == "accepted"
        server.send("hello")
        assert client.line() == "got hello"
        time.sleep(1.0)  # idle: the burst's entries are all newer

        acceptors = [Stream(lab, "vm2", ACCEPTOR, "10.0.0.20", str(p), "120") for p in BURST_PORTS]
        try:
            assert all(a.line(15) == "listening" for a in acceptors)
            bursts = [Stream(lab, "vm1", BURST, "10.0.0.20", str(p), str(BURST_EACH), "64")
                      for p in BURST_PORTS]  # fmt: skip
            done = [b.line(90) for b in bursts]
            for b in bursts:
                b.stop()
        finally:
            for a in acceptors:
                a.stop()
        connected = sum(int(d.split()[1]) for d in done if d and d.startswith("connected"))
        assert connected > 0.9 * 2 * BURST_EACH, done  # more than the old 65,536 table
        # Each ended by the client's RST, which removed its entry on the spot.
        assert _table(lab, "conntrack")[1] < 1000
        server.send("after the burst")
        assert client.line() == "got after the burst"

        lab.cmd("agent", "stop", "h1")
        monkeypatch.setenv("TESSERA_CT_ENTRIES", "4096")
        lab.cmd("agent", "start", "h1")
        wait_until(lambda: _table(lab, "conntrack")[0] == 4096, timeout=60,
                   what="h1's connection table to be resized")  # fmt: skip
        time.sleep(1.0)  # the new programs attached, the old table's last entries copied
        server.send("after the resize")
        assert client.line() == "got after the resize"
    finally:
        for stream in (client, server):
            if stream is not None:
                stream.stop()
