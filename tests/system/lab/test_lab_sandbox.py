"""Sandboxes: namespaces a test or benchmark makes, uses and must leave no trace of."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tessera.lab import netns
from tessera.lab.errors import LabError
from tessera.lab.sandbox import Sandbox, SandboxFactory, unavailable

pytestmark = [pytest.mark.root, pytest.mark.system]

if (_why := unavailable()) is not None:
    pytest.skip(_why, allow_module_level=True)


def listed() -> set[str]:
    """What `ip netns list` shows: the names, without their `(id: N)`."""
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_a_sandbox_runs_commands_inside_and_cleanup_leaves_nothing() -> None:
    factory = SandboxFactory("tsb")
    try:
        ns = factory("a")
        assert ns.name == f"{factory.prefix}-a" and ns.name in listed()
        assert ns.path == netns.path(ns.name) and ns.path.exists()
        ns.ip("link", "add", "sbx0", "type", "veth", "peer", "name", "sbx1")
        ns.ip("link", "set", "sbx0", "up")

        # Each way in sees this namespace's devices, not the root namespace's.
        shown = ns.run("ip", "-o", "link", "show").stdout
        assert "sbx0@sbx1" in shown and "sbx1@sbx0" in shown
        index = ns.ifindex("sbx0")
        assert f"{index}: sbx0@sbx1" in ns.ip("-o", "link", "show", "dev", "sbx0").stdout
        assert ns.call(lambda: socket.if_nametoindex("sbx1")) == ns.ifindex("sbx1")
        assert "sbx0" not in {name for _, name in socket.if_nameindex()}  # we stayed outside
        code = "import socket, sys; print(socket.if_nametoindex(sys.argv[1]))"
        assert ns.python(code, "sbx0").stdout.strip() == str(index)
        proc = ns.popen(sys.executable, "-c", "import socket; print(socket.if_nameindex())")
        out, _ = proc.communicate(timeout=30)
        assert "'sbx1'" in out

        # The lab's setup: loopback up, IPv6 off; sysctl acts on this namespace only.
        assert ns.run("cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6").stdout.strip() == "1"
        ns.sysctl("net.ipv4.ip_forward", "1")
        assert ns.run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
        assert "UP" in ns.ip("-o", "link", "show", "dev", "lo").stdout

        # Failures: a result with check=False, one line of LabError without.
        assert ns.run("false", check=False).returncode == 1
        with pytest.raises(LabError, match="nosuch0"):
            ns.ip("link", "show", "dev", "nosuch0")
        with pytest.raises(LabError, match="no device nosuch0"):
            ns.ifindex("nosuch0")

        factory("b")
    finally:
        factory.cleanup()
    assert not any(name.startswith(factory.prefix) for name in listed())
    assert factory.made == []
    factory.cleanup()  # twice is harmless


def test_a_taken_name_is_refused_and_left_alone() -> None:
    with SandboxFactory("tsb") as factory:
        mine = factory("a")
        with pytest.raises(LabError, match="netns add"):
            Sandbox(mine.name)
        assert mine.name in listed()  # the failed attempt did not delete it
        assert mine.ifindex("lo") == 1
    assert mine.name not in listed()


def test_the_factory_cleans_up_when_the_body_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), SandboxFactory("tsb") as factory:
        factory("a")
        factory("b")
        raise RuntimeError("boom")
    assert not any(name.startswith(factory.prefix) for name in listed())
