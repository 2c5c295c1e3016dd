"""`tessera lab` as a user drives it: up, status, exec, vm add/del, agent and NSDB
faults, idempotent up and repair. One lab for the module (made once: seconds)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from lab_helpers import Lab, Snapshot, agent_status, require_agent, root_missing, tessera

from support.wait import wait_until
from tessera.lab import names, procs

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_agent()
    before = Snapshot.take()
    made = Lab()
    try:
        made.up("--hosts", "2")
        yield made
    finally:
        made.down()
        made.assert_gone(before)


def _hosts(lab: Lab) -> dict[str, dict[str, Any]]:
    return {h["name"]: h for h in lab.status()["hosts"]}


def _bridge_port(lab: Lab) -> str:
    bridge = lab.create("/bridges", {"name": "lifecycle"})
    return str(lab.create(f"/bridges/{bridge['id']}/ports")["id"])


def test_up_brings_every_host_alive_in_one_tunnel_zone(lab: Lab) -> None:
    status = lab.status()
    hosts = status["hosts"]
    assert [h["name"] for h in hosts] == ["h1", "h2"]
    assert all(h["alive"] is True and h["agent_pid"] for h in hosts)
    api_hosts = {h["id"]: h for h in lab.get("/hosts")}
    for host in hosts:
        assert api_hosts[host["host_id"]]["alive"] is True
        assert api_hosts[host["host_id"]]["addresses"] == [host["underlay_ip"]]
    zone = lab.get(f"/tunnel_zones/{status['tunnel_zone_id']}")
    assert zone["type"] == "vxlan"
    assert {(m["host_id"], m["ip_address"]) for m in zone["hosts"]} == {
        (h["host_id"], h["underlay_ip"]) for h in hosts
    }
    assert status["api"]["url"] == lab.api_url


def test_hosts_share_an_underlay_with_mtu_1600(lab: Lab) -> None:
    h1, h2 = _hosts(lab)["h1"], _hosts(lab)["h2"]
    link = lab.exec("h1", "ip", "-o", "link", "show", "dev", names.HOST_UPLINK).stdout
    assert f"mtu {names.UNDERLAY_MTU} " in link
    assert h1["underlay_ip"].startswith("198.18.") and h2["underlay_ip"].startswith("198.18.")
    ping = lab.exec("h1", "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1572", h2["underlay_ip"])
    assert "1 received" in ping.stdout  # 1600-byte packets, not fragmented


def test_a_second_up_changes_nothing_that_works(lab: Lab) -> None:
    before = lab.status()
    proc = lab.up()
    after = lab.status()
    assert lab.api_url == before["api"]["url"]
    assert "started" not in proc.stdout
    for key in ("api", "nsdb"):
        assert after[key]["pid"] == before[key]["pid"]
    assert after["relay_pid"] == before["relay_pid"]
    assert [h["agent_pid"] for h in after["hosts"]] == [h["agent_pid"] for h in before["hosts"]]


def test_up_repairs_what_died(lab: Lab) -> None:
    before = lab.status()
    relay, agent = before["relay_pid"], before["hosts"][1]["agent_pid"]
    os.kill(relay, signal.SIGKILL)
    os.kill(agent, signal.SIGKILL)
    wait_until(lambda: procs.start_time(agent) is None, what="the killed processes to go")
    proc = lab.up()
    assert "started h2=" in proc.stdout
    after = lab.status()
    assert after["relay_pid"] not in (None, relay)
    assert after["hosts"][1]["agent_pid"] not in (None, agent)
    assert all(h["alive"] for h in after["hosts"])


def test_exec_output_and_status_are_the_commands_own(lab: Lab) -> None:
    proc = lab.exec("h1", "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "out\n", "err\n")
    options = lab.exec("h2", "ip", "-o", "-4", "addr", "show", "dev", names.HOST_UPLINK)
    assert _hosts(lab)["h2"]["underlay_ip"] in options.stdout  # `-o` went to ip, not to us
    missing = lab.exec("h1", "no-such-command-here", check=False)
    assert missing.returncode == 127
    unknown = lab.exec("nosuchvm", "true", check=False)
    assert unknown.returncode != 0
    assert unknown.stderr.startswith("error: ") and unknown.stderr.count("\n") == 1


def test_vm_add_cables_addresses_and_binds_then_vm_del_undoes_it(lab: Lab) -> None:
    port = _bridge_port(lab)
    host = _hosts(lab)["h1"]
    added = lab.cmd(
        "vm", "add", "vma", "--host", "h1", "--port", port, "--ip", "10.20.0.5/24",
        "--gw", "10.20.0.1", "--mac", "02:00:00:00:0a:05", "--mtu", "1400",
    )  # fmt: skip
    assert "vma on h1" in added.stdout
    addr = lab.exec("vma", "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    assert "10.20.0.5/24" in addr
    link = lab.exec("vma", "ip", "-o", "link", "show", "dev", "eth0").stdout
    assert "02:00:00:00:0a:05" in link and "mtu 1400 " in link
    route = lab.exec("vma", "ip", "-4", "route", "show", "default").stdout
    assert "via 10.20.0.1 dev eth0" in route
    host_side = lab.exec("h1", "ip", "-o", "link", "show", "dev", "vm-vma").stdout
    assert "mtu 1400 " in host_side
    bindings = lab.get(f"/hosts/{host['host_id']}/ports")
    assert {"host_id": host["host_id"], "port_id": port, "interface_name": "vm-vma"} in bindings
    # `vm add` returned only once the agent served the port.
    assert port in agent_status(host["host_id"])["ports"]
    (vm,) = [v for v in lab.status()["vms"] if v["name"] == "vma"]
    assert vm["host"] == "h1" and vm["port_id"] == port and vm["addresses"] == ["10.20.0.5/24"]
    assert vm["port"] == port

    lab.cmd("vm", "del", "vma")
    assert lab.get(f"/ports/{port}")["host_id"] is None
    assert lab.exec("h1", "ip", "link", "show", "dev", "vm-vma", check=False).returncode != 0
    assert lab.exec("vma", "true", check=False).returncode != 0
    assert not [v for v in lab.status()["vms"] if v["name"] == "vma"]


def test_vm_add_refuses_bad_requests_and_leaves_nothing(lab: Lab) -> None:
    port = _bridge_port(lab)
    netns_before = lab.namespaces()
    missing = lab.cmd(
        "vm", "add", "vmb", "--host", "h1", "--port", "00000000-0000-4000-8000-000000000001",
        check=False,
    )  # fmt: skip
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    no_host = lab.cmd("vm", "add", "vmb", "--host", "h9", "--port", port, check=False)
    assert no_host.returncode != 0 and "no host 'h9'" in no_host.stderr
    bad_name = lab.cmd("vm", "add", "h2", "--host", "h1", "--port", port, check=False)
    assert bad_name.returncode != 0 and "invalid VM name" in bad_name.stderr
    for proc in (missing, no_host, bad_name):
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert lab.namespaces() == netns_before
    lab.cmd("vm", "add", "vmb", "--host", "h2", "--port", port)
    again = lab.cmd("vm", "add", "vmb", "--host", "h1", "--port", port, check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    lab.cmd("vm", "del", "vmb")
    gone = lab.cmd("vm", "del", "vmb", check=False)
    assert gone.returncode != 0 and "no VM 'vmb'" in gone.stderr


def test_agent_stop_and_start(lab: Lab) -> None:
    port = _bridge_port(lab)
    lab.cmd("vm", "add", "vmc", "--host", "h2", "--port", port, "--ip", "10.30.0.2/24")
    try:
        assert "stopped" in lab.cmd("agent", "stop", "h2").stdout
        h2 = _hosts(lab)["h2"]
        assert h2["agent_pid"] is None
        wait_until(
            lambda: _hosts(lab)["h2"]["alive"] is False, timeout=15, what="h2 to read as dead"
        )
        # VM and binding stay in place while the agent is away.
        assert lab.get(f"/ports/{port}")["host_id"] == h2["host_id"]
        assert "10.30.0.2/24" in lab.exec("vmc", "ip", "-o", "-4", "addr").stdout
        assert "was not running" in lab.cmd("agent", "stop", "h2").stdout
        started = lab.cmd("agent", "start", "h2")
        assert "host alive" in started.stdout
        assert _hosts(lab)["h2"]["alive"] is True
    finally:
        lab.cmd("vm", "del", "vmc")


def test_nsdb_stop_and_start(lab: Lab) -> None:
    before = lab.status()
    assert "stopped" in lab.cmd("nsdb", "stop").stdout
    assert lab.status()["nsdb"]["pid"] is None
    assert lab.health() == 503
    started = lab.cmd("nsdb", "start")
    assert before["nsdb"]["url"].split("/")[2] in started.stdout  # same address
    wait_until(lambda: lab.health() == 200, timeout=30, what="the API to reach ZooKeeper again")
    wait_until(
        lambda: all(h["alive"] for h in lab.status()["hosts"]),
        timeout=60,
        interval=0.5,
        what="every host alive again",
    )


def test_commands_find_the_only_lab_without_a_name(lab: Lab) -> None:
    others = [n for n in os.listdir("/run/netns") if n.endswith("-underlay") and lab.name not in n]
    if any(n.startswith(names.NS_PREFIX) for n in others):
        pytest.skip("another lab runs on this machine")
    status = json.loads(tessera("lab", "status", "--json").stdout)
    assert status["name"] == lab.name


def test_up_grows_a_lab_but_never_shrinks_it(lab: Lab) -> None:
    # Last in this module: the lab has three hosts afterwards.
    grown = lab.up("--hosts", "3")
    assert "started h3=" in grown.stdout
    hosts = _hosts(lab)
    assert set(hosts) == {"h1", "h2", "h3"} and hosts["h3"]["alive"] is True
    assert hosts["h3"]["underlay_ip"].rsplit(".", 1)[1] == "3"
    zone = lab.get(f"/tunnel_zones/{lab.status()['tunnel_zone_id']}")
    assert len(zone["hosts"]) == 3
    shrink = tessera("lab", "up", "--name", lab.name, "--hosts", "2", check=False)
    assert shrink.returncode != 0 and "cannot shrink" in shrink.stderr
    assert len(lab.status()["hosts"]) == 3
