"""The lab's DHCP client hook, against busybox's udhcpd: address, MTU, classless routes
(option 121, which overrides the router option) or the default gateway, and nothing
written outside the VM (Debian's default script would rewrite /etc/resolv.conf)."""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_helpers import root_missing, unique_name

from tessera.lab import dhcp, netns
from tessera.lab.errors import LabError

pytestmark = [pytest.mark.system, pytest.mark.root]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)
if shutil.which("busybox") is None or shutil.which("udhcpc") is None:
    pytest.fail("busybox (udhcpc, udhcpd) is needed: apt install udhcpc busybox")


POOL_START, POOL_END = ipaddress.IPv4Address("10.9.0.50"), ipaddress.IPv4Address("10.9.0.60")


class Wire:
    """A server namespace and a VM namespace joined by a veth: srv0 10.9.0.1 -- eth0."""

    def __init__(self) -> None:
        run = unique_name("dhcp")
        self.srv, self.vm = f"tsrt-{run}-srv", f"tsrt-{run}-vm"
        netns.add(self.srv)
        netns.add(self.vm)
        netns.ip(self.srv, "link", "add", "srv0", "type", "veth", "peer", "name", "eth0",
                 "netns", self.vm)  # fmt: skip
        netns.ip(self.srv, "addr", "add", "10.9.0.1/24", "dev", "srv0")
        netns.ip(self.srv, "link", "set", "srv0", "up")
        netns.ip(self.vm, "link", "set", "eth0", "up")
        self.server: subprocess.Popen[bytes] | None = None

    def serve(self, directory: Path, options: list[str]) -> None:
        config = directory / "udhcpd.conf"
        config.write_text(
            "\n".join(
                [
                    f"start {POOL_START}",
                    f"end {POOL_END}",
                    "interface srv0",
                    f"lease_file {directory / 'leases'}",
                    f"pidfile {directory / 'udhcpd.pid'}",
                    "option subnet 255.255.255.0",
                    "option dns 10.9.0.53",
                    *options,
                    "",
                ]
            )
        )
        (directory / "leases").touch()
        self.server = subprocess.Popen(
            [*netns.nsenter(self.srv), "busybox", "udhcpd", "-f", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def close(self) -> None:
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(timeout=5)
        netns.delete(self.vm)
        netns.delete(self.srv)


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire()
    try:
        yield w
    finally:
        w.close()


def _routes(ns: str) -> list[str]:
    out = netns.ip(ns, "-4", "route", "show").stdout
    return [" ".join(line.split()) for line in out.splitlines()]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def test_a_lease_with_classless_routes_configures_address_mtu_and_routes(
    wire: Wire, tmp_path: Path
) -> None:
    resolv = _digest(Path("/etc/resolv.conf"))
    wire.serve(
        tmp_path,
        [
            "option router 10.9.0.1",
            "option mtu 1400",
            "option staticroutes 172.16.0.0/16 10.9.0.254, 0.0.0.0/0 10.9.0.1, "
            "10.77.0.0/16 0.0.0.0",
        ],
    )
    summary = dhcp.run_client(wire.vm, "eth0", dhcp.write_script(tmp_path), "vmx")
    # udhcpd picks the address in its pool from the client's MAC, so any of .50-.60.
    (address,) = netns.ipv4_addresses(wire.vm, "eth0")
    assert summary.startswith(f"bound {address} ")
    interface = ipaddress.IPv4Interface(address)
    assert interface.network == ipaddress.IPv4Network("10.9.0.0/24")
    assert POOL_START <= interface.ip <= POOL_END
    assert netns.link_info(wire.vm, "eth0")[1] == 1400
    routes = _routes(wire.vm)
    assert "172.16.0.0/16 via 10.9.0.254 dev eth0 proto dhcp" in routes
    assert "default via 10.9.0.1 dev eth0 proto dhcp" in routes
    assert "10.77.0.0/16 dev eth0 proto dhcp scope link" in routes
    assert _digest(Path("/etc/resolv.conf")) == resolv  # the machine's resolver untouched
    # The connection to the server really works with that configuration.
    ping = netns.run(
        [*netns.nsenter(wire.vm), "ping", "-c", "1", "-W", "2", "10.9.0.1"], check=False
    )
    assert ping.returncode == 0, ping.stdout


def test_without_classless_routes_the_router_becomes_the_default_gateway(
    wire: Wire, tmp_path: Path
) -> None:
    wire.serve(tmp_path, ["option router 10.9.0.1"])
    dhcp.run_client(wire.vm, "eth0", dhcp.write_script(tmp_path), "vmx")
    assert "default via 10.9.0.1 dev eth0 proto dhcp" in _routes(wire.vm)
    assert netns.link_info(wire.vm, "eth0")[1] == 1500


def test_no_server_means_a_bounded_wait_and_a_clear_error(
    wire: Wire, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dhcp, "DISCOVERS", 2)
    monkeypatch.setattr(dhcp, "DISCOVER_INTERVAL", 1)
    with pytest.raises(LabError, match=r"VM vmx got no DHCP lease within 2s.*vm del vmx"):
        dhcp.run_client(wire.vm, "eth0", dhcp.write_script(tmp_path), "vmx")
