"""Network namespaces a caller creates and must delete: tests and benchmarks.

The lab's own namespaces (`tessera.lab.netns`) are long-lived and adopted when they
already exist. A sandbox is the opposite: made fresh under a name unique to one run,
refused if that name is taken (it would be someone else's), and deleted by whoever made
it, even when the run fails. Tests and benchmarks each grew their own copy of this;
one class keeps the naming, setup and cleanup rules identical for all of them.

Every command-running method returns the `CompletedProcess` and, unless `check=False`,
raises `LabError` (one line: the command and its last error line) when it fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from tessera.lab import netns
from tessera.lab.errors import LabError

T = TypeVar("T")
TOOLS = ("ip", "nsenter")


def unavailable() -> str | None:
    """Why sandboxes cannot be made on this machine (for a skip), None if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


class Sandbox:
    """A network namespace this process made: loopback up, IPv6 off, nothing else.

    Creating the object creates the namespace, so holding a `Sandbox` means owning what
    `delete()` removes.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.path: Path = netns.path(name)
        netns.run(["ip", "netns", "add", name])  # fails if taken: never adopt
        try:
            netns.add(name)  # the lab's setup of an existing namespace
        except BaseException:
            with contextlib.suppress(LabError):  # the setup's error is the one to see
                self.delete()
            raise

    def __repr__(self) -> str:
        return f"Sandbox({self.name!r})"

    def argv(self, *argv: str) -> list[str]:
        """The command line running `argv` inside (nsenter keeps bpffs visible), for
        callers that start the process themselves."""
        return [*netns.nsenter(self.name), *argv]

    def run(
        self, *argv: str, check: bool = True, timeout: float = netns.COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return netns.run(self.argv(*argv), check=check, timeout=timeout)

    def ip(
        self, *args: str, check: bool = True, timeout: float = netns.COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """`ip -n`: it enters the namespace only for its own run, no nsenter needed."""
        return netns.run(["ip", "-n", self.name, *args], check=check, timeout=timeout)

    def python(
        self, code: str, *args: str, check: bool = True, timeout: float = netns.COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """`code` run by this interpreter in a process of its own inside: for what must
        not share this process (blocking servers, its own sockets and threads)."""
        return self.run(sys.executable, "-c", code, *args, check=check, timeout=timeout)

    def popen(
        self,
        *argv: str,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        """A process left running inside; the caller stops it (by this handle) before
        `delete()`, or it keeps the namespace alive, unnamed."""
        return subprocess.Popen(self.argv(*argv), stdout=stdout, stderr=stderr, env=env, text=True)

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()` on a thread inside, without a process: sockets it makes stay here."""
        return netns.in_netns(self.name, fn)

    def sysctl(self, key: str, value: str) -> None:
        netns.sysctl(self.name, key, value)

    def ifindex(self, ifname: str) -> int:
        try:
            return self.call(lambda: socket.if_nametoindex(ifname))
        except OSError:
            raise LabError(f"no device {ifname} in namespace {self.name}") from None

    def delete(self) -> None:
        """Remove the namespace and the devices in it; nothing if it is already gone."""
        netns.delete(self.name)


class SandboxFactory:
    """Sandboxes named `<prefix>-<run id>-<role>`, all removed by `cleanup()`.

    The run id keeps parallel runs (and a crashed earlier one) apart: cleanup removes
    only what this factory made.
    """

    def __init__(self, prefix: str) -> None:
        self.run_id = secrets.token_hex(3)
        self.prefix = f"{prefix}-{self.run_id}"
        self.made: list[Sandbox] = []

    def __call__(self, role: str) -> Sandbox:
        sandbox = Sandbox(f"{self.prefix}-{role}")
        self.made.append(sandbox)
        return sandbox

    def cleanup(self) -> None:
        """Delete the sandboxes, newest first; one that fails does not stop the rest,
        and the first failure is raised at the end rather than hidden."""
        failed: list[LabError] = []
        while self.made:
            sandbox = self.made.pop()
            try:
                sandbox.delete()
            except LabError as exc:
                failed.append(exc)
        if failed:
            raise failed[0]

    def __enter__(self) -> SandboxFactory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


def cable_vm(
    host: Sandbox, host_if: str, vm: Sandbox, mac: str, cidr: str, mtu: int = 1500
) -> None:
    """A VM's cable: `eth0` in `vm` (MAC, address, MTU), its peer `host_if` in `host`,
    both up; the host end is what a datapath attaches to."""
    host.ip("link", "add", host_if, "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
            "netns", vm.name)  # fmt: skip
    vm.ip("link", "set", "eth0", "address", mac, "mtu", str(mtu))
    vm.ip("addr", "add", cidr, "dev", "eth0")
    vm.ip("link", "set", "eth0", "up")
    host.ip("link", "set", host_if, "up")
