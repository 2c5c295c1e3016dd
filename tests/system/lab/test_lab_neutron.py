"""The lab with its Neutron API: `tessera lab up` serves it (printed, shown by `lab
status`), the real `openstack` CLI makes a network, a subnet and two ports bound to
two hosts, `tessera lab vm add --port <neutron port id>` (no --mac) gives each VM its
port's fixed IP by DHCP, the VMs ping each other, and deleting the Neutron objects
leaves the NSDB as it was.

Then the edge, with real traffic: a router with its gateway on an external network
(SNAT) and a floating IP; a VM on that network reaches the floating address with no
route of its own (the router answers ARP for it), sees a VM without a floating IP come
from the gateway address, and a security group lets in only what its rules accept,
until a rule is deleted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from lab_helpers import TESSERA, Lab, env, lab_up, root_missing

from support.wait import wait_until
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


# -- the edge: a router with its gateway on an external network, SNAT, a floating IP --

# Accepts on each port argv[3:] and closes at once, writing "PEER PORT" to the file
# argv[2] for every connection, for argv[1] seconds.
SERVER = r"""
import select, socket, sys, time
end = time.monotonic() + float(sys.argv[1])
log = open(sys.argv[2], "a", buffering=1)
socks = []
for port in sys.argv[3:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    s.listen(16)
    socks.append(s)
while time.monotonic() < end:
    for s in select.select(socks, [], [], 0.5)[0]:
        conn, peer = s.accept()
        log.write(f"{peer[0]} {s.getsockname()[1]}\n")
        conn.close()
"""
ALLOWED, CLOSED, OUTER_PORT = 8080, 8081, 7000  # TCP ports of the servers
ADDR = {"inner": "10.0.0.21", "inner2": "10.0.0.22", "outer": "203.0.113.50"}


@dataclass
class Edge:
    """ext (203.0.113.0/24, `router:external`) -- r1 (gateway, SNAT) -- n2 (10.0.0.0/24):
    VM `inner` (h1, 10.0.0.21, group `web`, a floating IP), VM `inner2` (h2, 10.0.0.22,
    the default group), and on ext VM `outer` (h2, 203.0.113.50, no port security). The
    group `web` lets in TCP ALLOWED from anywhere and ICMP from 203.0.113.0/24 only."""

    lab: Lab
    os_: Callable[..., Any]
    fip: str
    gateway_ip: str
    gateway_mac: str
    rules: dict[str, str]  # "tcp", "icmp" -> the web group's rule ids
    log: Path  # what outer's server saw: "PEER PORT" lines

    def connects(self, vm: str, target: str, port: int) -> bool:
        done = self.lab.exec(vm, "nc", "-z", "-n", "-w", "2", target, str(port), check=False)
        return done.returncode == 0

    def pings(self, vm: str, target: str) -> bool:
        done = self.lab.exec(vm, "ping", "-n", "-c", "1", "-W", "2", target, check=False)
        return done.returncode == 0

    def peers_seen(self, vm: str) -> list[str]:
        """The source addresses outer's server sees for new connections from `vm`."""
        before = len(self.log.read_text().splitlines())
        assert self.connects(vm, ADDR["outer"], OUTER_PORT)
        lines = wait_until(
            lambda: self.log.read_text().splitlines()[before:], timeout=5, what="the server's log"
        )
        return [line.split()[0] for line in lines]


@pytest.fixture(scope="module")
def edge(lab: tuple[Lab, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    the_lab, _ = lab
    home = tmp_path_factory.mktemp("edge")
    status = the_lab.status()
    url, nsdb_url = status["neutron"]["url"], status["nsdb"]["url"]

    def os_(*args: str) -> Any:
        return openstack(url, home, *args)

    os_("security", "group", "list")
    # Adding and deleting a rule updates its group (as in Neutron).
    volatile = ("revision_number", "updated_at")
    before = dump(nsdb_url, volatile)
    made: list[tuple[str, ...]] = []  # delete commands, run last-made first
    servers: list[subprocess.Popen[bytes]] = []
    try:
        os_("network", "create", "ext", "--external")
        made.append(("network", "delete", "ext"))  # its subnet with it, as in Neutron
        os_("subnet", "create", "ext-s", "--network", "ext", "--subnet-range", "203.0.113.0/24")
        os_("network", "create", "n2")
        made.append(("network", "delete", "n2"))
        os_("subnet", "create", "s2", "--network", "n2", "--subnet-range", "10.0.0.0/24")
        os_("security", "group", "create", "web")
        made.append(("security", "group", "delete", "web"))
        rules = {
            "tcp": os_("security", "group", "rule", "create", "web", "--protocol", "tcp",
                       "--dst-port", str(ALLOWED), "--remote-ip", "0.0.0.0/0")["id"],
            "icmp": os_("security", "group", "rule", "create", "web", "--protocol", "icmp",
                        "--remote-ip", "203.0.113.0/24")["id"],
        }  # fmt: skip
        ports = {
            "inner": os_("port", "create", "inner", "--network", "n2", "--host", "h1",
                         "--security-group", "web",
                         "--fixed-ip", f"subnet=s2,ip-address={ADDR['inner']}"),
            "inner2": os_("port", "create", "inner2", "--network", "n2", "--host", "h2",
                          "--fixed-ip", f"subnet=s2,ip-address={ADDR['inner2']}"),
            "outer": os_("port", "create", "outer", "--network", "ext", "--host", "h2",
                         "--disable-port-security",
                         "--fixed-ip", f"subnet=ext-s,ip-address={ADDR['outer']}"),
        }  # fmt: skip
        made.append(("port", "delete", *(port["id"] for port in ports.values())))
        router = os_("router", "create", "r1", "--external-gateway", "ext", "--enable-snat")
        made.append(("router", "delete", "r1"))  # its gateway with it
        os_("router", "add", "subnet", "r1", "s2")
        made.append(("router", "remove", "subnet", "r1", "s2"))
        fip = os_("floating", "ip", "create", "ext", "--port", ports["inner"]["id"])
        made.append(("floating", "ip", "delete", fip["id"]))
        (gw_port,) = os_("port", "list", "--router", router["id"],
                         "--device-owner", "network:router_gateway")  # fmt: skip
        (gw_fixed,) = gw_port["Fixed IP Addresses"]

        for vm, port in ports.items():
            host = "h1" if vm == "inner" else "h2"
            the_lab.cmd("vm", "add", vm, "--host", host, "--port", port["id"], "--dhcp")
            made.append(("lab", "vm", "del", vm))
        log = home / "outer.log"
        log.touch()
        for vm, args in (("inner", (str(ALLOWED), str(CLOSED))), ("outer", (str(OUTER_PORT),))):
            log_file = str(home / f"{vm}.log")
            argv = [TESSERA, "lab", "exec", "--name", the_lab.name, vm, "--",
                    sys.executable, "-c", SERVER, "300", log_file, *args]  # fmt: skip
            servers.append(
                subprocess.Popen(
                    argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env()
                )
            )
            wait_until(
                lambda vm=vm, port=args[-1]: f":{port} " in the_lab.exec(vm, "ss", "-Hltn").stdout,
                timeout=15,
                what=f"the server in {vm}",
            )
        yield Edge(
            the_lab, os_, fip["floating_ip_address"],
            gw_fixed["ip_address"], gw_port["MAC Address"], rules, log,
        )  # fmt: skip
    finally:
        for proc in servers:  # our own children, by their pid
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for command in reversed(made):
            if command[0] == "lab":
                the_lab.cmd(*command[1:])
            else:
                os_(*command)
    assert dump(nsdb_url, volatile) == before


def test_a_floating_ip_is_reached_on_its_network_by_arp_alone(edge: Edge) -> None:
    """outer has no route for the floating address but its own subnet's: it asks who
    has it, and the router's gateway port answers with its MAC."""
    route = edge.lab.exec("outer", "ip", "-4", "route", "get", edge.fip).stdout
    assert " via " not in route, route
    assert wait_until(lambda: edge.pings("outer", edge.fip), timeout=15, what="a ping to the FIP")
    neighbours = edge.lab.exec("outer", "ip", "neigh", "show", edge.fip).stdout
    assert f"lladdr {edge.gateway_mac} " in neighbours, neighbours
    assert edge.connects("outer", edge.fip, ALLOWED)


def test_a_vm_without_a_floating_ip_goes_out_by_snat_to_the_gateway_address(
    edge: Edge,
) -> None:
    """outer's server sees inner2's connection come from the router's gateway address,
    and inner's (which has a floating IP) from its floating address."""
    assert edge.peers_seen("inner2") == [edge.gateway_ip]
    assert edge.peers_seen("inner") == [edge.fip]
    assert edge.pings("inner2", ADDR["outer"])


def test_the_security_group_lets_in_only_what_its_rules_accept(edge: Edge) -> None:
    inner = ADDR["inner"]
    assert edge.connects("outer", edge.fip, ALLOWED)  # TCP ALLOWED from anywhere
    assert edge.connects("inner2", inner, ALLOWED)
    assert not edge.connects("outer", edge.fip, CLOSED)  # the server listens, the group refuses
    assert not edge.connects("inner2", inner, CLOSED)
    assert edge.pings("outer", edge.fip)  # ICMP from 203.0.113.0/24
    assert not edge.pings("inner2", inner)  # 10.0.0.22 is outside that prefix
    # the group's egress rule: inner's own connections out, and their replies, pass.
    assert edge.connects("inner", ADDR["outer"], OUTER_PORT)


def test_deleting_a_rule_stops_what_it_let_in(edge: Edge) -> None:
    """New connections, once the rule is gone (the agents re-simulate what it accepted)."""
    edge.os_("security", "group", "rule", "delete", edge.rules["icmp"])
    wait_until(lambda: not edge.pings("outer", edge.fip), timeout=15, what="pings refused")
    assert edge.connects("outer", edge.fip, ALLOWED)  # the other rule still holds
    edge.os_("security", "group", "rule", "delete", edge.rules["tcp"])
    wait_until(
        lambda: not edge.connects("outer", edge.fip, ALLOWED), timeout=15, what="TCP refused"
    )
    assert not edge.connects("inner2", ADDR["inner"], ALLOWED)
