"""A small cloud of namespaces for agent system tests, built and removed by the test.

    tsy-<run>-ctl   br0 198.18.0.254/24 (MTU 1600): the underlay switch, and ZooKeeper
    tsy-<run>-hK    ul0 198.18.0.K/24: a hypervisor, its agent a real `tessera agent`
                    process started with `nsenter --net`
    tsy-<run>-vmN   eth0: a VM, cabled by a veth to its host and bound to a port

ZooKeeper runs inside the ctl namespace, so agents reach it over the underlay and the
root namespace gets no address or route. The test's own NSDB client is made from inside
that namespace too (a socket keeps the namespace it was created in).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.wait import wait_until
from tessera.lab.agents import (
    AgentProcess,
    AgentSpec,
    remove_agent_leftovers,
    remove_pin_root_if_empty,
)
from tessera.lab.sandbox import Sandbox, SandboxFactory
from tessera.model import Bridge, Port, Route, Router, TunnelZone
from tessera.nsdb import tables
from tessera.nsdb.store.topology import TopologyStore
from tessera.nsdb.zkserver import ZookeeperServer
from tessera.nsdb.zookeeper import ZookeeperNsdb

CTL_IP = "198.18.0.254"


@dataclass
class Host:
    name: str
    host_id: str
    ns: Sandbox
    underlay_ip: str
    agent: AgentProcess

    def flows(self, run_dir: Path) -> list[dict[str, Any]]:
        assert run_dir == self.agent.run_dir
        flows: list[dict[str, Any]] = self.agent.request("flows")["flows"]
        return flows

    def status(self, run_dir: Path) -> dict[str, Any]:
        assert run_dir == self.agent.run_dir
        answer: dict[str, Any] = self.agent.request("status")
        return answer


@dataclass
class Vm:
    name: str
    ns: Sandbox
    port_id: str
    mac: str
    ip: str
    host: Host
    ifname: str
    cidr: str
    gw: str | None


class Cloud:
    def __init__(self, workdir: Path, datapath: str) -> None:
        self.workdir = workdir
        self.datapath = datapath
        self.netns = SandboxFactory("tsy")
        self.run_id = self.netns.run_id
        self.hosts: dict[str, Host] = {}
        self.vms: dict[str, Vm] = {}
        self.run_dir = Path("/tmp") / f"tsy-{self.run_id}"  # short: unix socket paths
        self.run_dir.mkdir()
        self.zk = ZookeeperServer(workdir / "zookeeper", host=CTL_IP)
        self.root = f"/tsy-{self.run_id}"
        try:  # the fixture gets no Cloud to close if this fails: close what exists here
            self.ctl = self.netns("ctl")
            self.ctl.ip("link", "add", "br0", "mtu", "1600", "type", "bridge")
            self.ctl.ip("addr", "add", f"{CTL_IP}/24", "dev", "br0")
            self.ctl.ip("link", "set", "br0", "up")
            self.ctl.call(lambda: self.zk.start(timeout=60))
            self.nsdb_url = f"zk://{CTL_IP}:{self.zk.port}{self.root}"
            self.admin = self.ctl.call(lambda: ZookeeperNsdb(f"{CTL_IP}:{self.zk.port}", self.root))
            self.topo = TopologyStore(self.admin)
            self.zone = self.topo.create(TunnelZone(name="zone"))
        except BaseException:
            self.close()
            raise

    # -- hosts and agents --

    def add_host(self, name: str, index: int) -> Host:
        ns = self.netns(name)
        ip = f"198.18.0.{index}"
        peer = f"ul-{name}"
        self.ctl.ip("link", "add", peer, "mtu", "1600", "type", "veth", "peer", "name", "ul0",
                    "netns", ns.name)  # fmt: skip
        self.ctl.ip("link", "set", peer, "master", "br0", "up")
        ns.ip("addr", "add", f"{ip}/24", "dev", "ul0")
        ns.ip("link", "set", "ul0", "mtu", "1600", "up")
        host_id = str(uuid.uuid4())
        spec = AgentSpec(
            host_id=host_id,
            name=name,
            nsdb=self.nsdb_url,
            datapath=self.datapath,
            underlay_ip=ip,
            tunnel_zone=self.zone.id,
            state_dir=self.workdir / "agent",
            log_level="DEBUG",
        )
        agent = AgentProcess(
            spec, lambda argv: ns.argv(*argv), self.run_dir, self.workdir / f"agent-{name}.log"
        )
        host = Host(name, host_id, ns, ip, agent)
        self.hosts[name] = host
        return host

    def start_agent(self, host: Host, *, wait: bool = True) -> None:
        host.agent.start()
        if wait:
            self.wait_alive(host)

    def wait_alive(self, host: Host, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if host.agent.proc is not None and not host.agent.running():
                raise AssertionError(f"agent {host.name} exited:\n{self.agent_log(host)}")
            alive = host.host_id in self.admin.state_get(tables.HOST_LIVENESS)
            return alive and host.agent.serving()

        wait_until(ready, timeout, what=f"agent {host.name} to register")

    def stop_agent(self, host: Host, sig: int = signal.SIGTERM) -> None:
        host.agent.stop(sig)

    def agent_log(self, host: Host) -> str:
        return host.agent.log_tail(60, sep="\n")

    # -- topology --

    def bridge(self, name: str) -> Bridge:
        return self.topo.create(Bridge(name=name))

    def router(self, name: str) -> Router:
        return self.topo.create(Router(name=name))

    def router_port(self, router: Router, cidr: str, mac: str, bridge: Bridge) -> Port:
        address, length = cidr.split("/")
        rp = self.topo.create(
            Port(
                device_id=router.id, type="Router", port_address=address,
                network_address=address, network_length=int(length), port_mac=mac,
            )
        )  # fmt: skip
        bp = self.topo.create(Port(device_id=bridge.id, type="Bridge"))
        self.topo.link(rp.id, bp.id)
        net = ".".join(address.split(".")[:3]) + ".0"
        self.topo.create(
            Route(router_id=router.id, dst_network_addr=net, dst_network_length=int(length),
                  next_hop_port=rp.id)
        )  # fmt: skip
        return rp

    def vm(
        self, name: str, host: Host, bridge: Bridge, mac: str, cidr: str, gw: str | None = None
    ) -> Vm:
        ns = self.netns(name)
        ifname = f"tap-{name}"
        host.ns.ip("link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
        ns.ip("link", "set", "eth0", "address", mac, "up")
        ns.ip("addr", "add", cidr, "dev", "eth0")
        if gw:
            ns.ip("route", "add", "default", "via", gw)
        host.ns.ip("link", "set", ifname, "up")
        port = self.topo.create(Port(device_id=bridge.id, type="Bridge"))
        self.topo.bind(host.host_id, port.id, ifname)
        vm = Vm(name, ns, port.id, mac, cidr.split("/")[0], host, ifname, cidr, gw)
        self.vms[name] = vm
        self.wait_attached(vm)
        return vm

    def wait_attached(self, vm: Vm, timeout: float = 20.0) -> None:
        wait_until(
            lambda: vm.port_id in vm.host.status(self.run_dir)["ports"],
            timeout,
            what=f"{vm.name}'s port to be attached on {vm.host.name}",
        )

    def move(self, vm: Vm, to: Host) -> None:
        """Re-cable the VM to another host and re-bind its port there."""
        self.topo.unbind(vm.host.host_id, vm.port_id)
        vm.host.ns.ip("link", "del", vm.ifname)
        to.ns.ip("link", "add", vm.ifname, "type", "veth", "peer", "name", "eth0",
                 "netns", vm.ns.name)  # fmt: skip
        # Deleting the old cable deleted the VM's eth0 with its address: configure anew.
        vm.ns.ip("link", "set", "eth0", "address", vm.mac, "up")
        vm.ns.ip("addr", "add", vm.cidr, "dev", "eth0")
        if vm.gw:
            vm.ns.ip("route", "add", "default", "via", vm.gw)
        to.ns.ip("link", "set", vm.ifname, "up")
        vm.host = to
        self.topo.bind(to.host_id, vm.port_id, vm.ifname)
        self.wait_attached(vm)

    # -- traffic --

    def ping(
        self, vm: Vm, dst: str, count: int = 3, *extra: str
    ) -> subprocess.CompletedProcess[str]:
        return vm.ns.run(
            "ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", *extra, dst,
            check=False, timeout=30,
        )  # fmt: skip

    # -- teardown --

    def close(self) -> None:
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                self.stop_agent(host)
        with contextlib.suppress(Exception):
            self.admin.close()
        with contextlib.suppress(Exception):
            self.zk.stop()
        try:
            self.netns.cleanup()
        finally:
            for host in self.hosts.values():
                remove_agent_leftovers(host.host_id, self.run_dir)
            remove_pin_root_if_empty()  # other hosts' pins stay
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def report(self) -> str:
        return json.dumps({h.name: self.agent_log(h) for h in self.hosts.values()}, indent=1)
