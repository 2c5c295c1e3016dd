"""Real agents, real namespaces, real traffic — once with the eBPF datapath, once with the
userspace one (which may be slower, never different).

Each datapath gets one cloud (ZooKeeper, two hypervisors, their agents as separate
`tessera agent` processes); every test builds its own bridges, routers and VMs in it.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sysagent_env import Cloud, Vm

from support.local import TESSERA
from support.wait import wait_until
from tessera.lab.sandbox import unavailable
from tessera.model import Chain, DhcpHost, DhcpSubnet, Opt121Route, Port, Route, Rule
from tessera.nsdb import tables

pytestmark = [pytest.mark.root, pytest.mark.system, pytest.mark.slow]

TOOLS = ("ping", "nc", "iperf3", "udhcpc", "java")  # beyond what sandboxes need


def _missing() -> str | None:
    why = unavailable()
    if why is not None:
        return why
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


@pytest.fixture(scope="module", params=["ebpf", "userspace"])
def cloud(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cloud]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    if request.param == "ebpf":
        for tool in ("clang", "bpftool", "tc"):
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} not installed")
    c = Cloud(tmp_path_factory.mktemp(f"cloud-{request.param}"), request.param)
    try:
        c.add_host("h1", 1)
        c.add_host("h2", 2)
        c.start_agent(c.hosts["h1"], wait=False)
        c.start_agent(c.hosts["h2"], wait=False)
        c.wait_alive(c.hosts["h1"])
        c.wait_alive(c.hosts["h2"])
        yield c
    finally:
        c.close()


def _agent_logs_on_failure(cloud: Cloud) -> str:
    return "\n".join(f"--- {h.name}\n{cloud.agent_log(h)}" for h in cloud.hosts.values())


def _flow_for(cloud: Cloud, vm: Vm, **fields: object) -> dict[str, object] | None:
    for f in vm.host.flows(cloud.run_dir):
        match = f["match"]
        if all(match.get(k) == v for k, v in fields.items()):  # type: ignore[union-attr]
            return f
    return None


def test_one_bridge_one_host_and_two_hosts(cloud: Cloud) -> None:
    h1, h2 = cloud.hosts["h1"], cloud.hosts["h2"]
    br = cloud.bridge("b1")
    a1 = cloud.vm("a1", h1, br, "02:00:00:00:a1:01", "10.1.0.1/24")
    a2 = cloud.vm("a2", h1, br, "02:00:00:00:a1:02", "10.1.0.2/24")
    a3 = cloud.vm("a3", h2, br, "02:00:00:00:a1:03", "10.1.0.3/24")
    assert cloud.ping(a1, "10.1.0.2").returncode == 0, _agent_logs_on_failure(cloud)
    assert cloud.ping(a1, "10.1.0.3").returncode == 0, _agent_logs_on_failure(cloud)
    # TCP with nc, both on one host and across the tunnel.
    for server in (a2, a3):
        listener = server.ns.popen("nc", "-l", "-N", "5000")
        time.sleep(0.3)
        sent = a1.ns.run("sh", "-c", f"echo hello-{server.name} | nc -N -w 5 {server.ip} 5000",
                         check=False)  # fmt: skip
        out, _err = listener.communicate(timeout=10)
        assert sent.returncode == 0 and out.strip() == f"hello-{server.name}"
    # Flooding taught the bridge every MAC, and the API's MAC table shows it.
    table = {(e.mac_addr, e.port_id) for e in cloud.topo.mac_table(br.id)}
    assert {(vm.mac, vm.port_id) for vm in (a1, a2, a3)} <= table
    assert all(e.vlan_id == 0 for e in cloud.topo.mac_table(br.id))


def test_flows_are_listed_and_count_without_further_misses(cloud: Cloud) -> None:
    h1, h2 = cloud.hosts["h1"], cloud.hosts["h2"]
    br = cloud.bridge("b2")
    c1 = cloud.vm("c1", h1, br, "02:00:00:00:c2:01", "10.2.0.1/24")
    c2 = cloud.vm("c2", h2, br, "02:00:00:00:c2:02", "10.2.0.2/24")
    assert cloud.ping(c1, "10.2.0.2", 2).returncode == 0
    # The first packets may have flooded (h2's learned MAC reaches h1 a moment later):
    # let that settle, then measure the unicast flow.
    time.sleep(0.5)
    assert cloud.ping(c1, "10.2.0.2", 1).returncode == 0
    flow = _flow_for(cloud, c1, eth_src=c1.mac, eth_dst=c2.mac)
    assert flow is not None, c1.host.flows(cloud.run_dir)
    misses = c1.host.status(cloud.run_dir)["misses"]
    assert cloud.ping(c1, "10.2.0.2", 5).returncode == 0
    later = _flow_for(cloud, c1, eth_src=c1.mac, eth_dst=c2.mac)
    assert later is not None and later["created"] == flow["created"]  # the same flow
    assert later["packets"] >= flow["packets"] + 5  # type: ignore[operator]
    assert later["bytes"] > flow["bytes"]  # type: ignore[operator]
    assert c1.host.status(cloud.run_dir)["misses"] == misses
    assert br.id in later["tags"]  # type: ignore[operator]
    # The same through the command users run.
    out = subprocess.run(
        [TESSERA, "flows", "--host", c1.host.name, "--json"],
        capture_output=True, text=True, timeout=20, check=False,
        env={"TESSERA_RUN_DIR": str(cloud.run_dir), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert any(f["match"].get("eth_dst") == c2.mac for f in json.loads(out.stdout)["flows"])


def test_bridges_are_isolated(cloud: Cloud) -> None:
    h1, h2 = cloud.hosts["h1"], cloud.hosts["h2"]
    red, blue = cloud.bridge("red"), cloud.bridge("blue")
    r1 = cloud.vm("r1", h1, red, "02:00:00:00:e3:01", "10.3.0.1/24")
    cloud.vm("r2", h2, red, "02:00:00:00:e3:02", "10.3.0.2/24")
    cloud.vm("u1", h2, blue, "02:00:00:00:b3:01", "10.3.0.9/24")
    assert cloud.ping(r1, "10.3.0.2", 2).returncode == 0
    assert cloud.ping(r1, "10.3.0.9", 2).returncode != 0


def _routed(cloud: Cloud, tag: str, third: int) -> tuple[Vm, Vm, str]:
    """left 10.<third>.1.0/24 on h1, right 10.<third>.2.0/24 on h2, one router."""
    h1, h2 = cloud.hosts["h1"], cloud.hosts["h2"]
    left, right = cloud.bridge(f"{tag}-l"), cloud.bridge(f"{tag}-r")
    rt = cloud.router(f"{tag}-rt")
    cloud.router_port(rt, f"10.{third}.1.1/24", f"02:7e:00:{third:02x}:01:01", left)
    cloud.router_port(rt, f"10.{third}.2.1/24", f"02:7e:00:{third:02x}:02:01", right)
    v1 = cloud.vm(f"{tag}1", h1, left, f"02:00:00:{third:02x}:01:02", f"10.{third}.1.2/24",
                  gw=f"10.{third}.1.1")  # fmt: skip
    v2 = cloud.vm(f"{tag}2", h2, right, f"02:00:00:{third:02x}:02:02", f"10.{third}.2.2/24",
                  gw=f"10.{third}.2.1")  # fmt: skip
    return v1, v2, rt.id


def test_routing_across_hosts(cloud: Cloud) -> None:
    v1, v2, router_id = _routed(cloud, "rt", 4)
    out = cloud.ping(v1, "10.4.2.2")
    assert out.returncode == 0, out.stdout + _agent_logs_on_failure(cloud)
    assert "ttl=63" in out.stdout  # one router on the way back
    # The router answers ARP and ping on its own address.
    gw = cloud.ping(v1, "10.4.1.1", 2)
    assert gw.returncode == 0 and "ttl=64" in gw.stdout
    neigh = v1.ns.run("ip", "neigh", "show", "10.4.1.1").stdout
    assert "02:7e:00:04:01:01" in neigh
    # TTL 1 through the router: time exceeded, from the router.
    ttl = cloud.ping(v1, "10.4.2.2", 1, "-t", "1")
    assert "Time to live exceeded" in ttl.stdout and "10.4.1.1" in ttl.stdout
    # The router learned v2 by ARP: visible in the ARP table.
    assert any(e.ip_addr == "10.4.2.2" for e in cloud.topo.arp_table(router_id))
    # TCP across the router.
    listener = v2.ns.popen("nc", "-l", "-N", "5001")
    time.sleep(0.3)
    v1.ns.run("sh", "-c", "echo routed | nc -N -w 5 10.4.2.2 5001", check=False)
    out2, _ = listener.communicate(timeout=10)
    assert out2.strip() == "routed"


def test_reject_routes_answer_and_blackhole_routes_are_silent(cloud: Cloud) -> None:
    v1, _v2, router_id = _routed(cloud, "rj", 5)
    for net, kind in (("10.99.0.0", "Reject"), ("10.98.0.0", "BlackHole")):
        cloud.topo.create(
            Route(router_id=router_id, dst_network_addr=net, dst_network_length=16, type=kind)
        )
    time.sleep(0.3)
    reject = cloud.ping(v1, "10.99.0.1", 1)
    assert reject.returncode != 0
    assert re.search(r"[Uu]nreachable|[Pp]rohibited|[Ff]iltered", reject.stdout), reject.stdout
    hole = cloud.ping(v1, "10.98.0.1", 2)
    assert hole.returncode != 0
    assert "From " not in hole.stdout  # no ICMP error of any kind


def test_a_drop_rule_stops_a_running_ping_within_a_second(cloud: Cloud) -> None:
    h1, h2 = cloud.hosts["h1"], cloud.hosts["h2"]
    br = cloud.bridge("b6")
    d1 = cloud.vm("d1", h1, br, "02:00:00:00:d6:01", "10.6.0.1/24")
    d2 = cloud.vm("d2", h2, br, "02:00:00:00:d6:02", "10.6.0.2/24")
    assert cloud.ping(d1, "10.6.0.2", 2).returncode == 0
    chain = cloud.topo.create(Chain(name="deny-icmp"))
    proc = d1.ns.popen("ping", "-n", "-D", "-i", "0.05", "-w", "7", "10.6.0.2")
    time.sleep(1.5)
    port = cloud.topo.get(Port, d2.port_id)
    cloud.topo.update(Port, d2.port_id, {**port.model_dump(), "inbound_filter_id": chain.id})
    added = time.time()
    rule = cloud.topo.create(Rule(chain_id=chain.id, type="drop", nw_proto=1))
    time.sleep(2.5)
    removed = time.time()
    cloud.topo.delete(Rule, rule.id)
    out, _ = proc.communicate(timeout=20)
    replies = [float(m) for m in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]
    assert any(t < added for t in replies)
    blocked = [t for t in replies if added + 1.0 < t < removed]
    assert not blocked, f"replies {len(blocked)} s after the rule: {blocked[:5]}"
    assert any(t > removed + 1.0 for t in replies), "traffic must come back after removal"


def test_a_vm_moved_to_another_host_keeps_working(cloud: Cloud) -> None:
    h1, h2 = cloud.hosts["h1"], cloud.hosts["h2"]
    br = cloud.bridge("b7")
    m1 = cloud.vm("m1", h1, br, "02:00:00:00:f7:01", "10.7.0.1/24")
    m2 = cloud.vm("m2", h1, br, "02:00:00:00:f7:02", "10.7.0.2/24")
    assert cloud.ping(m1, "10.7.0.2", 2).returncode == 0
    cloud.move(m2, h2)
    out = cloud.ping(m1, "10.7.0.2", 3)
    assert out.returncode == 0, out.stdout + _agent_logs_on_failure(cloud)
    entry = {e.mac_addr: e.port_id for e in cloud.topo.mac_table(br.id)}
    assert entry.get(m2.mac) == m2.port_id


UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    echo "ip=$ip mask=$mask router=$router mtu=$mtu staticroutes=$staticroutes" > "$OUT"
    ;;
esac
"""


def test_a_vm_gets_its_configuration_by_dhcp(cloud: Cloud, tmp_path: Path) -> None:
    h2 = cloud.hosts["h2"]
    br = cloud.bridge("b8")
    mac = "02:00:00:00:08:01"
    subnet = cloud.topo.create(
        DhcpSubnet(
            bridge_id=br.id, subnet_prefix="10.8.0.0", subnet_length=24,
            default_gateway="10.8.0.1", server_addr="10.8.0.254", interface_mtu=1400,
            opt121_routes=[Opt121Route(destination_prefix="172.16.0.0", destination_length=12,
                                       gateway_addr="10.8.0.1")],
        )
    )  # fmt: skip
    cloud.topo.add_dhcp_host(br.id, subnet.key, DhcpHost(mac_addr=mac, ip_addr="10.8.0.42"))
    vm = cloud.vm("dh1", h2, br, mac, "169.254.8.1/16")
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    result = tmp_path / "lease"
    out = vm.ns.run(
        "env", f"OUT={result}", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "1",
        "-O", "staticroutes", "-O", "mtu", "-s", str(script), check=False, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr + _agent_logs_on_failure(cloud)
    lease = result.read_text()
    assert "ip=10.8.0.42" in lease and "router=10.8.0.1" in lease and "mtu=1400" in lease
    assert "172.16.0.0/12 10.8.0.1" in lease
    assert "10.8.0.42" in vm.ns.run("ip", "addr", "show", "eth0").stdout


def test_an_agent_restart_does_not_interrupt_an_iperf3_stream(cloud: Cloud) -> None:
    h1, h2 = cloud.hosts["h1"], cloud.hosts["h2"]
    br = cloud.bridge("b9")
    i1 = cloud.vm("i1", h1, br, "02:00:00:00:09:01", "10.9.0.1/24")
    i2 = cloud.vm("i2", h2, br, "02:00:00:00:09:02", "10.9.0.2/24")
    assert cloud.ping(i1, "10.9.0.2", 2).returncode == 0
    server = i2.ns.popen("iperf3", "-s", "-1", "-B", "10.9.0.2")
    try:
        time.sleep(0.5)
        duration = 8
        client = i1.ns.popen(
            "iperf3", "-c", "10.9.0.2", "-t", str(duration), "-i", "0.5", "--json",
            "--connect-timeout", "3000",
        )  # fmt: skip
        time.sleep(2.0)
        before = {f["match"].get("eth_dst"): f for f in h1.flows(cloud.run_dir)}
        cloud.stop_agent(h1, signal.SIGTERM)
        cloud.start_agent(h1)
        out, err = client.communicate(timeout=duration + 30)
        assert client.returncode == 0, err + out[-2000:]
        report = json.loads(out)
        intervals = [i["sum"]["bits_per_second"] for i in report["intervals"]]
        assert report["end"]["sum_received"]["bytes"] > 0
        if cloud.datapath == "ebpf":
            # Kernel flows forward while no agent runs: not a single empty interval.
            assert min(intervals) > 0, intervals
        # The restarted agent adopted what is still valid and knows its flows.
        wait_until(lambda: h1.status(cloud.run_dir)["adopting"] == 0, 40, what="adoption to finish")
        after = {f["match"].get("eth_dst"): f for f in h1.flows(cloud.run_dir)}
        if cloud.datapath == "ebpf" and i2.mac in before:
            assert i2.mac in after
    finally:
        server.kill()
        server.wait(timeout=5)


def test_stale_flows_are_removed_after_a_restart(cloud: Cloud) -> None:
    h1, h2 = cloud.hosts["h1"], cloud.hosts["h2"]
    br = cloud.bridge("b10")
    s1 = cloud.vm("s1", h1, br, "02:00:00:00:10:01", "10.10.0.1/24")
    s2 = cloud.vm("s2", h2, br, "02:00:00:00:10:02", "10.10.0.2/24")
    assert cloud.ping(s1, "10.10.0.2", 2).returncode == 0
    assert _flow_for(cloud, s1, eth_dst=s2.mac) is not None
    cloud.stop_agent(h1, signal.SIGKILL)  # no clean stop at all
    # While h1's agent is down its VM's traffic becomes forbidden.
    chain = cloud.topo.create(Chain(name="deny-all"))
    cloud.topo.create(Rule(chain_id=chain.id, type="drop"))
    port = cloud.topo.get(Port, s1.port_id)
    cloud.topo.update(Port, s1.port_id, {**port.model_dump(), "inbound_filter_id": chain.id})
    cloud.start_agent(h1)
    wait_until(lambda: h1.status(cloud.run_dir)["adopting"] == 0, 40, what="adoption to finish")
    stale = _flow_for(cloud, s1, eth_dst=s2.mac, eth_type=2048)
    actions = stale["actions"] if stale is not None else []
    assert all(a["type"] == "drop" for a in actions), actions  # type: ignore[attr-defined,index]
    assert cloud.ping(s1, "10.10.0.2", 2).returncode != 0
    # The host registered again: alive in the table the API reads liveness from.
    assert h1.host_id in cloud.admin.state_get(tables.HOST_LIVENESS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("nsdb", "message"),
    [
        ("bogus://x", "error: cannot open the NSDB"),
        ("zk://127.0.0.1:{port}/tessera", "error: the NSDB at zk://127.0.0.1:{port}/tessera is "
         "unreachable: start ZooKeeper there or pass --nsdb zk://HOST:PORT/ROOT"),
    ],
    ids=["typo", "zookeeper-down"],
)  # fmt: skip
def test_a_wrong_or_unreachable_nsdb_fails_before_the_datapath_touches_the_host(
    cloud: Cloud, tmp_path: Path, nsdb: str, message: str
) -> None:
    """A typo in --nsdb, or a ZooKeeper that does not answer, must not leave vxlan0, the
    miss veth or pins on a hypervisor: one line, exit 1, nothing made."""
    port = _free_port()
    nsdb, message = nsdb.format(port=port), message.format(port=port)
    ns = cloud.netns(f"bad{cloud.datapath[:2]}{nsdb[:2]}")
    ns.ip("link", "add", "ul0", "type", "veth", "peer", "name", "ul0p")  # an underlay
    ns.ip("addr", "add", "198.18.0.99/24", "dev", "ul0")
    ns.ip("link", "set", "ul0", "up")
    host_id = "9d1c7e52-4d0f-4c55-9b53-2f6f3b0a1e01"
    before = set(ns.ip("-o", "link", "show").stdout.splitlines())
    proc = ns.run(
        TESSERA, "agent", "--host-id", host_id, "--nsdb", nsdb,
        "--datapath", cloud.datapath, "--underlay-ip", "198.18.0.99",
        "--state-dir", str(tmp_path / "state"),
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in proc.stderr
    assert set(ns.ip("-o", "link", "show").stdout.splitlines()) == before
    assert not (Path("/sys/fs/bpf/tessera") / host_id).exists()
