"""A cloud in one process: an in-memory NSDB, agents on fake datapaths, one clock.

Agents run their real code (cache, simulation, upcall, flow table) against
`FakeDatapath`s joined by a `FakeFabric`, so a test sends a frame into a VM's port and
asks where it came out. `settle()` runs every agent until no event, subscription or miss
is left anywhere: tests are deterministic and take milliseconds.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tessera.agent.agent import Agent
from tessera.datapath.base import Match
from tessera.datapath.fake import FakeDatapath, FakeFabric, Sent
from tessera.model import Bridge, Port, Router, TunnelZone
from tessera.nsdb.memory import MemoryNsdb, MemoryStore
from tessera.nsdb.store.topology import TopologyStore
from tessera.packet import ETH_TYPE_ARP, ETH_TYPE_IPV4, Arp, Ethernet, Icmp, IPv4, Udp
from tessera.packet.addr import ip_from_str, mac_from_str

BROADCAST = 0xFFFF_FFFF_FFFF


class Clock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Host:
    name: str
    host_id: str
    underlay: str
    nsdb: MemoryNsdb
    dp: FakeDatapath
    agent: Agent

    def number(self, port_id: str) -> int:
        n = self.agent.ports.number_of(port_id)
        assert n is not None, f"port {port_id} is not attached on {self.name}"
        return n

    def flows(self) -> set[Match]:
        return {d.match for d in self.agent.flows.snapshot()}


@dataclass
class Vm:
    """A VM's identity: the port it is bound to and its addresses."""

    port_id: str
    mac: int
    ip: int
    host: Host

    def frame(self, dst: Vm | int, payload: bytes = b"data", sport: int = 1000) -> bytes:
        dst_mac = dst if isinstance(dst, int) else dst.mac
        dst_ip = dst.ip if isinstance(dst, Vm) else 0
        udp = Udp(sport, 2000, payload)
        return Ethernet(dst_mac, self.mac, ETH_TYPE_IPV4, IPv4(self.ip, dst_ip, 17, udp)).build()

    def udp_to(self, dst_mac: int, dst_ip: int, *, sport: int = 1000, ttl: int = 64) -> bytes:
        packet = IPv4(self.ip, dst_ip, 17, Udp(sport, 2000, b"data"), ttl=ttl)
        return Ethernet(dst_mac, self.mac, ETH_TYPE_IPV4, packet).build()

    def ping_to(self, dst_mac: int, dst_ip: int, seq: int = 1) -> bytes:
        packet = IPv4(self.ip, dst_ip, 1, Icmp(8, 0, 7, seq, b"ping"))
        return Ethernet(dst_mac, self.mac, ETH_TYPE_IPV4, packet).build()

    def arp_request(self, target_ip: int) -> bytes:
        return Ethernet(
            BROADCAST, self.mac, ETH_TYPE_ARP, Arp(1, self.mac, self.ip, 0, target_ip)
        ).build()

    def arp_reply(self, to_mac: int, to_ip: int) -> bytes:
        return Ethernet(
            to_mac, self.mac, ETH_TYPE_ARP, Arp(2, self.mac, self.ip, to_mac, to_ip)
        ).build()


@dataclass
class Cloud:
    clock: Clock = field(default_factory=Clock)
    backend: MemoryStore = field(default_factory=MemoryStore)
    fabric: FakeFabric = field(default_factory=FakeFabric)
    hosts: list[Host] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.admin = MemoryNsdb(self.backend)
        self.topo = TopologyStore(self.admin)
        self.zone = self.topo.create(TunnelZone(name="zone"))

    # -- topology --
    def bridge(self, name: str = "br") -> Bridge:
        return self.topo.create(Bridge(name=name))

    def router(self, name: str = "rt") -> Router:
        return self.topo.create(Router(name=name))

    def bridge_port(self, bridge: Bridge, **fields: object) -> Port:
        return self.topo.create(Port(device_id=bridge.id, type="Bridge", **fields))  # type: ignore[arg-type]

    def router_port(self, router: Router, cidr: str, mac: str) -> Port:
        address, length = cidr.split("/")
        return self.topo.create(
            Port(
                device_id=router.id, type="Router", port_address=address,
                network_address=address, network_length=int(length), port_mac=mac,
            )
        )  # fmt: skip

    def vm(self, host: Host, bridge: Bridge, ifname: str, mac: str, ip: str) -> Vm:
        port = self.bridge_port(bridge)
        self.topo.bind(host.host_id, port.id, ifname)
        return Vm(port.id, mac_from_str(mac), ip_from_str(ip), host)

    # -- hosts --
    def host(
        self,
        name: str,
        underlay: str,
        host_id: str | None = None,
        flowstate_port: int | None = None,
        flowstate_durable: Any = None,
    ) -> Host:
        """`flowstate_port`: exchange flow state over real UDP on `underlay` (a loopback
        address then) at that port; None: the agents keep their state to themselves.
        `flowstate_durable`: a `DurableFlowState` (flow state kept in Cassandra)."""
        host_id = host_id or str(uuid.uuid4())
        dp = FakeDatapath(clock=self.clock, fabric=self.fabric, underlay_ip=ip_from_str(underlay))
        return self.start_agent(name, host_id, underlay, dp, flowstate_port, flowstate_durable)

    def start_agent(
        self,
        name: str,
        host_id: str,
        underlay: str,
        dp: FakeDatapath,
        flowstate_port: int | None = None,
        flowstate_durable: Any = None,
    ) -> Host:
        nsdb = MemoryNsdb(self.backend)
        agent = Agent(
            host_id, nsdb, dp, name=name, underlay_ip=underlay, tunnel_zone=self.zone.id,
            clock=self.clock, wall_clock=lambda: 1_700_000_000 + self.clock.now,
            flowstate_port=flowstate_port, flowstate_durable=flowstate_durable,
        )  # fmt: skip
        agent.start()
        host = Host(name, host_id, underlay, nsdb, dp, agent)
        self.hosts.append(host)
        self.settle()
        return host

    def stop(self, host: Host) -> None:
        host.agent.stop()
        host.nsdb.close()
        self.hosts.remove(host)

    def close(self) -> None:
        for host in list(self.hosts):
            self.stop(host)
        self.admin.close()

    # -- running --
    def settle(self, rounds: int = 200, seconds: float = 10.0) -> None:
        """Run every agent until nothing is left to do anywhere: at least `rounds`
        rounds, and for up to `seconds` while a state writer still has queued writes
        (it retries after a failed one on its own, real-time backoff)."""
        quiet = 0
        deadline = time.monotonic() + seconds
        done = 0
        while done < rounds or time.monotonic() < deadline:
            done += 1
            busy = writing = False
            for host in self.hosts:
                host.nsdb.notifier.run_sync(lambda: None, timeout=5)
                host.agent.cache._jobs.join()
                host.nsdb.notifier.run_sync(lambda: None, timeout=5)
                if host.agent.process_events():
                    busy = True
                if host.dp.pending_misses():
                    busy = True
                    host.agent.run_once(0)
                if host.agent.writer is not None and host.agent.writer.pending():
                    busy = writing = True
            if busy:
                quiet = 0
                if done >= rounds and not writing:
                    break  # busy with something else than waiting writes: give up
                if writing:
                    time.sleep(0.005)
            else:
                quiet += 1
                if quiet >= 2:
                    return
        raise AssertionError("the cloud did not settle")

    def tick(self, seconds: float) -> None:
        """Let time pass, running every agent's timers."""
        self.clock.advance(seconds)
        for host in self.hosts:
            host.agent.run_once(0)
        self.settle()

    def send(self, vm: Vm, frame: bytes) -> None:
        """`vm` transmits `frame`; everything it causes happens before this returns."""
        for host in self.hosts:
            host.dp.take_sent()
        vm.host.dp.receive(vm.host.number(vm.port_id), frame)
        self.settle()

    def received(self, vm: Vm) -> list[bytes]:
        """Frames delivered to `vm` since the last `send` (on its host's port)."""
        n = vm.host.number(vm.port_id)
        return [s.frame for s in vm.host.dp.sent if s.port == n]

    def sent_on(self, host: Host) -> list[Sent]:
        return list(host.dp.sent)
