"""The lab with its Neutron API: `tessera lab up` serves it (printed, shown by `lab
status`), the real `openstack` CLI makes a network, a subnet and two ports bound to
two hosts, `tessera lab vm add --port <neutron port id>` (no --mac) gives each VM its
port's fixed IP by DHCP, the VMs ping each other, and deleting the Neutron objects
leaves the NSDB as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lab_helpers import Lab, lab_up, root_missing

from tessera.model import KINDS
from tessera.nsdb.connect import open_nsdb

pytest.importorskip("openstackclient", reason="python-openstackclient is a test extra")
pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

OPENSTACK = str(Path(sys.executable).parent / "openstack")
FIXED = {"h1": "10.0.0.11", "h2": "10.0.0.12"}


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, str]]:
    """The lab and its `lab up` output."""
    with lab_up("--hosts", "2") as lab:
        yield lab, lab.up().stdout  # a second `up` checks and prints it all again


def openstack(url: str, home: Path, *args: str) -> Any:
    """`openstack ARGS` against the lab's Neutron API, without Keystone or user config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = str(home)
    # actions that print nothing take no `-f json` (`router add subnet`, `... delete`)
    wants_json = not {"delete", "add", "remove", "set", "unset"} & set(args[:4])
    argv = [OPENSTACK, "--os-auth-type", "none", "--os-endpoint", url, *args]
    argv += ["-f", "json"] if wants_json else []
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return json.loads(done.stdout) if done.stdout.strip() else None


def dump(nsdb_url: str, ignore: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    """Every object of the lab's NSDB, by kind and id, as its JSON without the `ignore`
    fields."""
    nsdb = open_nsdb(nsdb_url)
    try:
        return {
            kind: {
                s.value.id: s.value.model_dump_json(exclude=set(ignore) or None)
                for s in nsdb.list(kind)
            }
            for kind in KINDS
        }
    finally:
        nsdb.close()


def test_lab_up_serves_and_shows_the_neutron_api(lab: tuple[Lab, str]) -> None:
    the_lab, output = lab
    lines = output.strip().splitlines()
    assert lines[-1] == f"TESSERA_API={the_lab.api_url}"  # still the last line
    # Each line but the last reads `lab NAME: WHAT ...`.
    said = [line.partition(": ")[2] for line in lines[:-1]]
    (neutron_line,) = [line for line in said if line.startswith("Neutron ")]
    assert said[said.index(neutron_line) - 1].startswith("API ")  # next to the API's
    url = neutron_line.split()[1]
    assert url.startswith("http://127.0.0.1:")
    status = the_lab.status()
    assert status["neutron"]["url"] == url
    assert f"Neutron {url}" in the_lab.cmd("status").stdout
    versions = httpx.get(url + "/", timeout=10).json()
    assert versions["versions"][0]["id"] == "v2.0"


def test_vms_on_neutron_ports_get_their_fixed_ips_by_dhcp(
    lab: tuple[Lab, str], tmp_path: Path
) -> None:
    the_lab, _ = lab
    status = the_lab.status()
    url, nsdb_url = status["neutron"]["url"], status["nsdb"]["url"]
    # The first listing makes the project's default group, which stays (as in Neutron).
    openstack(url, tmp_path, "security", "group", "list")
    before = dump(nsdb_url)

    net = openstack(url, tmp_path, "network", "create", "n1")
    openstack(
        url, tmp_path, "subnet", "create", "s1", "--network", "n1",
        "--subnet-range", "10.0.0.0/24",
    )  # fmt: skip
    ports: dict[str, dict[str, Any]] = {}
    for host, address in FIXED.items():
        ports[host] = openstack(
            url, tmp_path, "port", "create", f"p-{host}", "--network", "n1",
            "--host", host, "--fixed-ip", f"subnet=s1,ip-address={address}",
        )  # fmt: skip
        assert ports[host]["binding_host_id"] == host
    try:
        for host, port in ports.items():
            the_lab.cmd("vm", "add", f"vm-{host}", "--host", host, "--port", port["id"], "--dhcp")
        shown = {vm["name"]: vm for vm in the_lab.status()["vms"]}
        for host, address in FIXED.items():
            vm = f"vm-{host}"
            assert shown[vm]["mac"] == ports[host]["mac_address"]  # taken from the port
            addresses = the_lab.exec(vm, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
            assert f"inet {address}/24 " in addresses, addresses
        ping = the_lab.exec("vm-h1", "ping", "-n", "-c", "2", "-W", "2", FIXED["h2"], check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        ping = the_lab.exec("vm-h2", "ping", "-n", "-c", "1", "-W", "2", FIXED["h1"], check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        for host in FIXED:
            if f"vm-{host}" in {vm["name"] for vm in the_lab.status()["vms"]}:
                the_lab.cmd("vm", "del", f"vm-{host}")
        for port in ports.values():
            openstack(url, tmp_path, "port", "delete", port["id"])
        openstack(url, tmp_path, "subnet", "delete", "s1")
        openstack(url, tmp_path, "network", "delete", net["id"])
    assert dump(nsdb_url) == before


def test_a_floating_ip_is_reached_from_the_external_network(
    lab: tuple[Lab, str], tmp_path: Path
) -> None:
    """A router with an interface on s1 and its gateway on an external network
    (203.0.113.0/24, inside the lab's namespaces only); a VM there reaches the floating
    address of vm-h1 by a route via the router's gateway address (tessera answers ARP
    for its router's port addresses only, docs/neutron.md)."""
    the_lab, _ = lab
    status = the_lab.status()
    url, nsdb_url = status["neutron"]["url"], status["nsdb"]["url"]
    openstack(url, tmp_path, "security", "group", "list")
    # Adding and deleting a rule updates the default group (as in Neutron).
    volatile = ("revision_number", "updated_at")
    before = dump(nsdb_url, volatile)

    def os_(*args: str) -> Any:
        return openstack(url, tmp_path, *args)

    made: list[tuple[str, ...]] = []  # delete commands, run last-made first
    try:
        os_("network", "create", "ext", "--external")
        made.append(("network", "delete", "ext"))
        os_("subnet", "create", "ext-s", "--network", "ext", "--subnet-range", "203.0.113.0/24")
        made.append(("subnet", "delete", "ext-s"))
        os_("network", "create", "n2")
        made.append(("network", "delete", "n2"))
        os_("subnet", "create", "s2", "--network", "n2", "--subnet-range", "10.0.0.0/24")
        made.append(("subnet", "delete", "s2"))
        rule = os_("security", "group", "rule", "create", "default", "--protocol", "icmp")
        made.append(("security", "group", "rule", "delete", rule["id"]))
        inner = os_("port", "create", "fip-inner", "--network", "n2", "--host", "h1",
                    "--fixed-ip", "subnet=s2,ip-address=10.0.0.21")  # fmt: skip
        made.append(("port", "delete", inner["id"]))
        outer = os_("port", "create", "fip-outer", "--network", "ext", "--host", "h2",
                    "--fixed-ip", "subnet=ext-s,ip-address=203.0.113.50")  # fmt: skip
        made.append(("port", "delete", outer["id"]))
        os_("router", "create", "r1")
        made.append(("router", "delete", "r1"))
        os_("router", "set", "r1", "--external-gateway", "ext")
        made.append(("router", "unset", "r1", "--external-gateway"))
        os_("router", "add", "subnet", "r1", "s2")
        made.append(("router", "remove", "subnet", "r1", "s2"))
        fip = os_("floating", "ip", "create", "ext", "--port", inner["id"])
        made.append(("floating", "ip", "delete", fip["id"]))
        gateway = os_("router", "show", "r1")["external_gateway_info"]
        gateway_ip = gateway["external_fixed_ips"][0]["ip_address"]

        the_lab.cmd("vm", "add", "inner", "--host", "h1", "--port", inner["id"], "--dhcp")
        made.append(("lab", "vm", "del", "inner"))
        the_lab.cmd("vm", "add", "outer", "--host", "h2", "--port", outer["id"], "--dhcp")
        made.append(("lab", "vm", "del", "outer"))
        address = fip["floating_ip_address"]
        the_lab.exec("outer", "ip", "route", "add", f"{address}/32", "via", gateway_ip)
        ping = the_lab.exec("outer", "ping", "-n", "-c", "2", "-W", "2", address, check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        for command in reversed(made):
            if command[0] == "lab":
                the_lab.cmd(*command[1:])
            else:
                os_(*command)
    assert dump(nsdb_url, volatile) == before
