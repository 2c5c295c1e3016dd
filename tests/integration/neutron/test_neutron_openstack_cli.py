"""The real `openstack` CLI (python-openstackclient) against the Neutron API served by
uvicorn: create a network, a subnet and ports, list and show them by name, delete
everything, and the NSDB is exactly as before. Each of the three documented ways to
point the client at tessera without Keystone is used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from neutron_helpers import dump

from tessera.model import Bridge, DhcpSubnet, Port, Router
from tessera.neutron.serve import NeutronServer, serve_neutron
from tessera.nsdb.memory import MemoryNsdb
from tessera.nsdb.store import TopologyStore

pytest.importorskip("openstackclient", reason="python-openstackclient is a test extra")
pytestmark = pytest.mark.slow

OPENSTACK = str(Path(sys.executable).parent / "openstack")


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[MemoryNsdb, NeutronServer]]:
    nsdb = MemoryNsdb()
    server = serve_neutron(nsdb, "127.0.0.1", 0)
    try:
        yield nsdb, server
    finally:
        server.stop()
        nsdb.close()


class Cli:
    """Runs `openstack` with a clean environment (no user clouds.yaml, no OS_*)."""

    def __init__(self, url: str, home: Path) -> None:
        self.url = url
        self.home = home
        (home / ".config" / "openstack").mkdir(parents=True)
        (home / ".config" / "openstack" / "clouds.yaml").write_text(
            f"clouds:\n  tessera:\n    auth_type: none\n    endpoint: {url}\n"
        )

    def run(self, *args: str, how: str = "flags", ok: bool = True) -> Any:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env["HOME"] = str(self.home)
        argv = [OPENSTACK]
        if how == "flags":
            argv += ["--os-auth-type", "none", "--os-endpoint", self.url]
        elif how == "env":
            env |= {"OS_AUTH_TYPE": "none", "OS_ENDPOINT": self.url}
        else:
            argv += ["--os-cloud", "tessera"]
        # actions that print nothing take no `-f json` (`router add subnet`, `floating ip set`)
        wants_json = not {"delete", "add", "remove", "set", "unset"} & set(args[:3])
        argv += [*args, *(["-f", "json"] if ok and wants_json else [])]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        if not ok:
            assert done.returncode != 0, done.stdout
            return done.stderr
        assert done.returncode == 0, f"{argv}: {done.stderr}"
        return json.loads(done.stdout) if done.stdout.strip() else None


def test_openstack_cli_round_trip(served: tuple[MemoryNsdb, NeutronServer], tmp_path: Path) -> None:
    nsdb, server = served
    cli = Cli(server.url, tmp_path)
    store = TopologyStore(nsdb)
    # The first listing makes the project's default group, which stays (as in Neutron).
    (default,) = cli.run("security", "group", "list")
    assert default["Name"] == "default"
    (other,) = cli.run("security", "group", "list", "--project", "proj1")  # p2's project
    assert other["Name"] == "default" and other["ID"] != default["ID"]
    before = dump(nsdb)

    net = cli.run("network", "create", "n1", "--mtu", "1400")
    assert net["mtu"] == 1400 and net["name"] == "n1"
    assert store.get(Bridge, net["id"]).name == "n1"

    sub = cli.run(
        "subnet", "create", "s1", "--network", "n1", "--subnet-range", "10.0.0.0/24",
        "--dns-nameserver", "8.8.8.8", how="env",
    )  # fmt: skip
    assert sub["cidr"] == "10.0.0.0/24" and sub["gateway_ip"] == "10.0.0.1"
    assert sub["allocation_pools"] == [{"start": "10.0.0.2", "end": "10.0.0.254"}]

    p1 = cli.run(
        "port", "create", "p1", "--network", "n1", "--fixed-ip",
        "subnet=s1,ip-address=10.0.0.10", how="cloud",
    )  # fmt: skip
    assert p1["fixed_ips"] == [{"subnet_id": sub["id"], "ip_address": "10.0.0.10"}]
    p2 = cli.run("port", "create", "p2", "--network", "n1", "--project", "proj1")
    assert p2["project_id"] == "proj1" and p2["fixed_ips"][0]["ip_address"] == "10.0.0.2"
    assert store.get(Port, p2["id"]).device_id == net["id"]
    hosts = store.get(DhcpSubnet, sub["tessera:dhcp_subnet_id"]).hosts
    assert {(h.mac_addr, h.ip_addr) for h in hosts} == {
        (p1["mac_address"], "10.0.0.10"),
        (p2["mac_address"], "10.0.0.2"),
    }

    listed = cli.run("port", "list", "--long")
    assert sorted(p["Name"] for p in listed) == ["p1", "p2"]
    assert {p["ID"] for p in listed} == {p1["id"], p2["id"]}
    assert cli.run("port", "show", "p1")["id"] == p1["id"]
    assert cli.run("network", "show", "n1")["subnets"] == [sub["id"]]

    assert "in use" in cli.run("network", "delete", "n1", ok=False)

    cli.run("port", "delete", "p1", "p2")
    cli.run("subnet", "delete", "s1")
    cli.run("network", "delete", "n1")
    assert dump(nsdb) == before


def test_openstack_cli_router_gateway_and_floating_ip(
    served: tuple[MemoryNsdb, NeutronServer], tmp_path: Path
) -> None:
    """`router create/add subnet/set --external-gateway`, `floating ip create/set
    --port`, then every removal: the NSDB is exactly as before."""
    nsdb, server = served
    cli = Cli(server.url, tmp_path)
    before = dump(nsdb)

    cli.run("network", "create", "public", "--external")
    cli.run("subnet", "create", "public-v4", "--network", "public",
            "--subnet-range", "203.0.113.0/24", "--gateway", "203.0.113.1")  # fmt: skip
    cli.run("network", "create", "lan")
    lan_sub = cli.run("subnet", "create", "lan-v4", "--network", "lan",
                      "--subnet-range", "10.0.0.0/24")  # fmt: skip
    router = cli.run("router", "create", "r1")
    assert router["name"] == "r1" and TopologyStore(nsdb).get(Router, router["id"]).name == "r1"
    cli.run("router", "add", "subnet", "r1", "lan-v4")
    cli.run("router", "set", "r1", "--external-gateway", "public")
    shown = cli.run("router", "show", "r1")
    info = shown["external_gateway_info"]
    assert info["enable_snat"] is True and info["external_fixed_ips"][0]["ip_address"]
    owned = cli.run("port", "list", "--router", "r1")
    assert len(owned) == 2  # the interface and the gateway

    vm = cli.run("port", "create", "vm", "--network", "lan")
    fip = cli.run("floating", "ip", "create", "public")
    cli.run("floating", "ip", "set", "--port", "vm", fip["id"])
    fip = cli.run("floating", "ip", "show", fip["id"])
    assert fip["port_id"] == vm["id"] and fip["router_id"] == router["id"]
    assert fip["fixed_ip_address"] == vm["fixed_ips"][0]["ip_address"]
    assert lan_sub["gateway_ip"] == "10.0.0.1"

    cli.run("floating", "ip", "unset", "--port", fip["id"])
    cli.run("floating", "ip", "delete", fip["id"])
    cli.run("port", "delete", "vm")
    cli.run("router", "unset", "--external-gateway", "r1")
    cli.run("router", "remove", "subnet", "r1", "lan-v4")
    cli.run("router", "delete", "r1")
    cli.run("subnet", "delete", "lan-v4", "public-v4")
    cli.run("network", "delete", "lan", "public")
    assert dump(nsdb) == before
