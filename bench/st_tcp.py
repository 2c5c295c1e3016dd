"""Short TCP connections between namespaces: a server and a bounded client, each its
own process inside a namespace, the same for every path the stateful bench compares.

Why processes of their own: the client must not share the bench's interpreter (its
threads, its GIL) with anything else, and a client or server that hangs is stopped by
its pid. The client keeps ``concurrency`` connections in flight with non-blocking
sockets; each connection is SYN, SYN-ACK, ACK, then closed with an RST (``SO_LINGER``
0): no TIME_WAIT, so thousands of connections a second never run out of ports, and
every connection is a new 5-tuple because the client binds its source ports itself,
walking through a range the bench hands it (never reused within a run, so no
connection finds a previous one's kernel flow or NAT binding).

Which client: the C one (``c/tcp_connect.c``, ``c/tcp_accept.c``: the same arguments,
behaviour and answer), built on first use with the C compiler the install puts on the
machine, else the Python one below. The Python client tops out at 12-14k
connections/s on this machine kind, below what the datapath carries; the C one, one
process per core, at 30-36k/s over loopback. Every row names the client it used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import BenchError, Lab, Netns

SERVER_PORT = 8080
# The kernel's own ephemeral ports (iperf3, pings) stay above the client's range.
CLIENT_PORTS = (10000, 60999)
KERNEL_PORTS = "61000 65000"

# argv: address, port, lifetime (s). Accepts and closes; ends after its lifetime.
SERVER = r"""
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4096)
s.settimeout(0.5)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        c, _ = s.accept()
    except OSError:
        continue
    c.close()
"""

# argv: dst, port, count, seconds, concurrency, first source port, gap (s), timeout (s).
# Prints JSON: ok, failed, start (CLOCK_MONOTONIC s), elapsed (s, first connect to last
# completion), connect times (s) of the successful connections, in order.
CLIENT = r"""
import errno, json, selectors, socket, struct, sys, time
dst, port = sys.argv[1], int(sys.argv[2])
count, seconds, conc = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
sport, gap, timeout = int(sys.argv[6]), float(sys.argv[7]), float(sys.argv[8])
linger = struct.pack("ii", 1, 0)
sel = selectors.DefaultSelector()
launched = ok = failed = 0
times = []
t0 = time.perf_counter()
end = t0 + seconds
last = t0
while True:
    now = time.perf_counter()
    while len(sel.get_map()) < conc and launched < count and now < end:
        s = socket.socket()
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        try:
            s.bind(("", sport + launched))
        except OSError:  # a port another socket of the namespace holds: the next one
            s.close()
            launched += 1
            continue
        launched += 1
        err = s.connect_ex((dst, port))
        if err not in (0, errno.EINPROGRESS):
            failed += 1
            s.close()
            continue
        sel.register(s, selectors.EVENT_WRITE, time.perf_counter())
        if gap:
            break
    if not sel.get_map():
        if launched >= count or now >= end:
            break
        continue
    for key, _ in sel.select(timeout=0.05):
        s = key.fileobj
        done = time.perf_counter()
        sel.unregister(s)
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            ok += 1
            times.append(done - key.data)
            last = done
        else:
            failed += 1
        s.close()
        if gap:
            time.sleep(gap)
    now = time.perf_counter()
    for key in list(sel.get_map().values()):
        if now - key.data > timeout:
            sel.unregister(key.fileobj)
            key.fileobj.close()
            failed += 1
print(json.dumps({"ok": ok, "failed": failed, "start": t0, "elapsed": last - t0, "times": times}))
"""


C_SOURCES = Path(__file__).resolve().parent / "c"
C_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tessera-bench"


@functools.cache
def c_tool(name: str) -> str | None:
    """``c/<name>.c`` compiled (cached by the source's hash), None when no compiler or
    the build fails: the callers then use the Python client and server."""
    src = C_SOURCES / f"{name}.c"
    cc = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
    if cc is None or not src.is_file():
        return None
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    exe = C_CACHE / f"{name}-{digest}"
    if not exe.is_file():
        C_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = exe.with_suffix(f".{os.getpid()}.tmp")
        build = subprocess.run(
            [cc, "-O2", "-o", str(tmp), str(src)], capture_output=True, text=True, check=False
        )
        if build.returncode != 0:
            why = build.stderr.strip()[-300:]
            print(f"# st_tcp: {name}.c did not build: {why}", file=sys.stderr)
            return None
        tmp.replace(exe)
    return str(exe)


def client_name(processes: int = 1) -> str:
    """How a row names the load generator it was measured with."""
    kind = "C client" if c_tool("tcp_connect") else "Python client"
    return f"{kind}, {processes} processes" if processes > 1 else kind


@dataclass(frozen=True)
class Connects:
    ok: int
    failed: int
    elapsed: float
    times: list[float]  # connect (SYN -> SYN-ACK seen) of each successful connection, s
    slow_ports: list[int] = field(default_factory=list)  # source ports slower than 0.5 s (C)

    @property
    def per_second(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0


class SourcePorts:
    """A client namespace's source ports, handed out once each (see the module doc)."""

    def __init__(self, ns: Netns) -> None:
        ns.sysctl("net.ipv4.ip_local_port_range", KERNEL_PORTS)
        self.next, self.last = CLIENT_PORTS

    def take(self, count: int) -> int:
        if self.next + count - 1 > self.last:
            raise BenchError(f"client source ports used up ({count} more wanted)")
        first = self.next
        self.next += count
        return first


def serve(lab: Lab, ns: Netns, address: str, lifetime: float) -> subprocess.Popen[bytes]:
    """The accept-and-close server on ``address``:SERVER_PORT, stopped at ``lab.close()``
    at the latest, and by itself after ``lifetime`` seconds."""
    exe = c_tool("tcp_accept")
    cmd = [exe] if exe else [sys.executable, "-c", SERVER]
    proc = lab.popen(
        ns.argv(*cmd, address, str(SERVER_PORT), str(lifetime)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while f"{address}:{SERVER_PORT}" not in ns.run("ss", "-Hltn", check=False).stdout:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"TCP server in {ns.name} did not start")
        time.sleep(0.05)
    return proc


def connects(
    ns: Netns,
    ports: SourcePorts,
    dst: str,
    count: int,
    seconds: float,
    concurrency: int = 1,
    gap: float = 0.0,
    timeout: float = 2.0,
    processes: int = 1,
) -> Connects:
    """At most ``count`` new connections from ``ns`` to ``dst`` in at most ``seconds``
    (plus ``timeout`` for the last ones), ``concurrency`` in flight; with ``gap`` one at
    a time, that long apart (latency samples on an otherwise idle path). With
    ``processes`` > 1 that many clients run side by side (one per core: a single
    client's own kernel work is then the ceiling), each with its share of the count,
    the concurrency and the source ports; the rate is over the union of their runs."""
    processes = max(1, min(processes, count, concurrency)) if not gap else 1
    exe = c_tool("tcp_connect")
    cmd = [exe] if exe else [sys.executable, "-c", CLIENT]
    bound = seconds + timeout + 30
    procs = []
    for i in range(processes):
        n = count // processes + (1 if i < count % processes else 0)
        conc = concurrency // processes + (1 if i < concurrency % processes else 0)
        first = ports.take(n)
        argv = ns.argv(
            *cmd, dst, str(SERVER_PORT), str(n), str(seconds), str(conc), str(first),
            str(gap), str(timeout),
        )  # fmt: skip
        procs.append(
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    docs = []
    try:
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=bound)
            except subprocess.TimeoutExpired:
                raise BenchError(f"TCP client to {dst} did not finish in {bound:.0f} s") from None
            try:
                docs.append(json.loads(out))
            except json.JSONDecodeError:
                raise BenchError(f"TCP client to {dst}: {err.strip()[-200:]}") from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    start = min(float(d["start"]) for d in docs)
    end = max(float(d["start"]) + float(d["elapsed"]) for d in docs)
    return Connects(
        sum(int(d["ok"]) for d in docs),
        sum(int(d["failed"]) for d in docs),
        end - start,
        [t for d in docs for t in d["times"]],
        [int(port) for d in docs for port in d.get("slow_ports", [])],
    )
