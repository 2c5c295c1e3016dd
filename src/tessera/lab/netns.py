"""Network namespaces and links through iproute2, and Python code inside a namespace.

Commands run *in* a namespace with `nsenter --net=/run/netns/NAME`, never `ip netns
exec`: the latter remounts /sys, which hides bpffs from eBPF tools and agents.
Everything here acts on named namespaces of the lab; nothing touches the root
namespace's links or routes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from tessera.datapath.ebpf.netns import run_in_netns
from tessera.lab.errors import LabError

NETNS_DIR = Path("/run/netns")
COMMAND_TIMEOUT = 30.0
T = TypeVar("T")


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a plumbing command; a failure becomes a one-line LabError naming it."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise LabError(f"'{argv[0]}' is not installed") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"'{' '.join(argv)}' did not finish within {timeout:g}s") from None
    if check and proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"'{' '.join(argv)}' failed: {reason[-1] if reason else proc.returncode}")
    return proc


def path(name: str) -> Path:
    return NETNS_DIR / name


def nsenter(name: str) -> list[str]:
    """The argv prefix that runs a command inside namespace `name`."""
    return ["nsenter", f"--net={path(name)}", "--"]


def exists(name: str) -> bool:
    return path(name).exists()


def listed() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except OSError:
        return []


def ip(name: str | None, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ip` inside namespace `name` (`ip -n`: it enters only for its own run)."""
    return run(["ip", *(["-n", name] if name else []), *args], check=check)


def add(name: str) -> None:
    """Make namespace `name` (if missing) with loopback up and IPv6 off: the lab's
    networks are IPv4, and IPv6 router solicitations and DAD would only be noise that
    every agent has to simulate."""
    if not exists(name):
        run(["ip", "netns", "add", name])
    sysctl(name, "net.ipv6.conf.all.disable_ipv6", "1")
    sysctl(name, "net.ipv6.conf.default.disable_ipv6", "1")
    ip(name, "link", "set", "lo", "up")


def sysctl(name: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl: /proc/sys/net shows the namespace of its opener."""

    def write() -> None:
        Path("/proc/sys", *key.split(".")).write_text(value)

    try:
        in_netns(name, write)
    except OSError as exc:
        raise LabError(f"cannot set {key}={value} in {name}: {exc.strerror or exc}") from None


def delete(name: str) -> None:
    if exists(name):
        ip(None, "netns", "delete", name)


def link_exists(name: str | None, ifname: str) -> bool:
    return ip(name, "link", "show", "dev", ifname, check=False).returncode == 0


def ipv4_addresses(name: str, ifname: str) -> list[str]:
    """`ADDR/LEN` of `ifname` in namespace `name` ([] if it has none or is missing)."""
    proc = ip(name, "-4", "-o", "addr", "show", "dev", ifname, check=False)
    out: list[str] = []
    for line in proc.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            out.append(fields[fields.index("inet") + 1])
    return out


def link_info(name: str, ifname: str) -> tuple[str | None, int | None]:
    """(MAC, MTU) of `ifname` in namespace `name`, (None, None) if missing."""
    proc = ip(name, "-o", "link", "show", "dev", ifname, check=False)
    if proc.returncode != 0:
        return None, None
    fields = proc.stdout.split()
    mac = fields[fields.index("link/ether") + 1] if "link/ether" in fields else None
    mtu = int(fields[fields.index("mtu") + 1]) if "mtu" in fields else None
    return mac, mtu


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Call `fn()` on a thread inside namespace `name` and return its result.

    setns(2) moves only the calling thread, so a short-lived thread enters and dies
    with it; this process stays where it is. Sockets `fn` creates belong to `name`
    for good, whichever thread uses them later.
    """
    return run_in_netns(path(name), fn)


def inode(name: str) -> int | None:
    """The namespace's identity (nsfs inode): it changes when a namespace is remade."""
    try:
        return path(name).stat().st_ino
    except OSError:
        return None


def pids_inside(names: Sequence[str]) -> list[int]:
    """Processes whose network namespace is one of `names` (started there by `exec`, a
    DHCP client, an agent...): they would keep a deleted namespace alive."""
    wanted: set[str] = set()
    for name in names:
        ino = inode(name)
        if ino is not None:
            wanted.add(f"net:[{ino}]")
    if not wanted:
        return []
    me = os.getpid()
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{entry}/ns/net") in wanted:
                out.append(int(entry))
    return out
