"""Network namespaces for datapath tests: made here, always removed.

Every namespace is `tsd-<run id>-<role>`; devices are created inside them (never in the
root namespace) and vanish with them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import TypeVar

from tessera.datapath.ebpf.netns import run_in_netns

T = TypeVar("T")


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def namespaces_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name
        sh("ip", "netns", "add", name)
        self.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        self.run("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        self.ip("link", "set", "lo", "up")

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def ip(self, *args: str) -> str:
        return sh("ip", "-n", self.name, *args).stdout

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return sh("nsenter", f"--net={self.path}", *argv, check=check, timeout=timeout)

    def popen(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["nsenter", f"--net={self.path}", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def python(
        self, code: str, *args: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-c", code, *args, check=False, timeout=timeout)

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` in this namespace (sockets it makes stay bound here)."""
        return run_in_netns(self.path, fn)

    def delete(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)


class NetnsFactory:
    def __init__(self) -> None:
        self.run_id = secrets.token_hex(3)
        self.made: list[Netns] = []

    def __call__(self, role: str) -> Netns:
        ns = Netns(f"tsd-{self.run_id}-{role}")
        self.made.append(ns)
        return ns

    def cleanup(self) -> None:
        for ns in reversed(self.made):
            ns.delete()
        self.made.clear()


def cable_vm(host: Netns, host_if: str, vm: Netns, mac: str, cidr: str, mtu: int = 1500) -> None:
    """A VM: `eth0` in `vm` (addressed), its peer `host_if` in `host`, both up."""
    host.ip("link", "add", host_if, "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
            "netns", vm.name)  # fmt: skip
    vm.ip("link", "set", "eth0", "address", mac, "mtu", str(mtu))
    vm.ip("addr", "add", cidr, "dev", "eth0")
    vm.ip("link", "set", "eth0", "up")
    host.ip("link", "set", host_if, "up")


def underlay(a: Netns, a_ip: str, b: Netns, b_ip: str, mtu: int = 1600) -> None:
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


def tcp_transfer(server: Netns, server_ip: str, client: Netns, n: int, port: int = 5555) -> str:
    proc = server.popen(sys.executable, "-c", TCP_SERVER, server_ip, str(port))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
        out = client.python(TCP_CLIENT, server_ip, str(port), str(n), timeout=40)
        return (out.stdout + out.stderr).strip()
    finally:
        proc.kill()
        proc.wait(timeout=5)


def ping(ns: Netns, dst: str, count: int = 3, extra: tuple[str, ...] = ()) -> bool:
    proc = ns.run("ping", "-c", str(count), "-i", "0.2", "-W", "1", *extra, dst, check=False)
    return proc.returncode == 0
