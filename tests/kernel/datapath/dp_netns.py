"""Cables and traffic between the datapath tests' namespaces.

The namespaces are `tessera.lab.sandbox` sandboxes named `tsd-<run id>-<role>` (`PREFIX`),
always removed by the fixture; devices are created inside them (never in the root
namespace) and vanish with them.
"""

from __future__ import annotations

import sys

from tessera.lab.sandbox import Sandbox

PREFIX = "tsd"


def underlay(a: Sandbox, a_ip: str, b: Sandbox, b_ip: str, mtu: int = 1600) -> None:
    """A cable between two host namespaces, addressed in 198.18.0.0/15."""
    a.ip("link", "add", "ul0", "mtu", str(mtu), "type", "veth", "peer", "name", "ul0",
         "netns", b.name)  # fmt: skip
    b.ip("link", "set", "ul0", "mtu", str(mtu))
    a.ip("addr", "add", f"{a_ip}/24", "dev", "ul0")
    b.ip("addr", "add", f"{b_ip}/24", "dev", "ul0")
    a.ip("link", "set", "ul0", "up")
    b.ip("link", "set", "ul0", "up")


# A TCP transfer of `n` bytes from the client namespace, checked byte for byte by the
# server: it fails loudly if a single checksum or segment is wrong.
TCP_SERVER = """
import socket, sys, hashlib
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(20)
print("ready", flush=True)
c, _ = s.accept(); c.settimeout(20)
h = hashlib.sha256(); n = 0
while True:
    d = c.recv(65536)
    if not d: break
    h.update(d); n += len(d)
c.sendall(f"{n} {h.hexdigest()}".encode()); c.close()
"""

TCP_CLIENT = """
import socket, sys, hashlib
n = int(sys.argv[3]); data = bytes(i % 251 for i in range(n))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
c.sendall(data); c.shutdown(socket.SHUT_WR)
answer = b""
while True:
    d = c.recv(4096)
    if not d: break
    answer += d
expect = f"{n} {hashlib.sha256(data).hexdigest()}"
print("ok" if answer.decode() == expect else "mismatch " + answer.decode())
"""


def tcp_transfer(server: Sandbox, server_ip: str, client: Sandbox, n: int, port: int = 5555) -> str:
    proc = server.popen(sys.executable, "-c", TCP_SERVER, server_ip, str(port))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
        out = client.python(TCP_CLIENT, server_ip, str(port), str(n), check=False, timeout=40)
        return (out.stdout + out.stderr).strip()
    finally:
        proc.kill()
        proc.wait(timeout=5)


def ping(ns: Sandbox, dst: str, count: int = 3, extra: tuple[str, ...] = ()) -> bool:
    proc = ns.run("ping", "-c", str(count), "-i", "0.2", "-W", "1", *extra, dst, check=False)
    return proc.returncode == 0
