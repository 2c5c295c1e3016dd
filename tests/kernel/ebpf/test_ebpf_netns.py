"""The fast path on real devices: two VM namespaces behind a "host" namespace.

    ns A: eth0 10.0.0.1 --veth-- tap-a \\                    / miss0 --veth-- miss1
                                       host ns (programs)                 (agent's AF_PACKET)
    ns B: eth0 10.0.0.2 --veth-- tap-b /

Flows are installed from Python exactly as the agent will; ICMP and TCP go
through the kernel stacks of A and B.
"""

from __future__ import annotations

import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.ebpf import remove_pins
from support.rawframes import eth, untag
from tessera.datapath.base import Output
from tessera.datapath.ebpf.actions import Device
from tessera.datapath.ebpf.layout import FlowKey, Stat
from tessera.datapath.ebpf.loader import EbpfFastPath
from tessera.datapath.ebpf.netns import run_in_netns
from tessera.datapath.ebpf.upcall import MissChannel
from tessera.lab.sandbox import Sandbox, SandboxFactory, cable_vm

from .conftest import BPFFS
from .nets import ping, tcp_echo_server, tcp_roundtrip

pytestmark = [pytest.mark.root, pytest.mark.system]

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
IP_A, IP_B = "10.0.0.1", "10.0.0.2"
PORT_A, PORT_B = 1, 2
L2 = FlowKey.mask_of(["in_port", "eth_dst"])


@dataclass
class Lab:
    host: Sandbox
    a: Sandbox
    b: Sandbox
    fp: EbpfFastPath
    tap_a: int
    tap_b: int

    @property
    def devices(self) -> dict[int, Device]:
        """Port B is delivered by redirect_peer, port A by a plain redirect: both
        flavours of OUTPUT_LOCAL."""
        return {PORT_A: (self.tap_a, False), PORT_B: (self.tap_b, True)}

    def install_l2(self) -> None:
        """What a simulation of one bridge would produce."""
        flows = self.fp.maps.flows
        flows.install(
            FlowKey.make(in_port=PORT_A, eth_dst=MAC_B), L2, [Output(PORT_B)], self.devices
        )
        flows.install(
            FlowKey.make(in_port=PORT_B, eth_dst=MAC_A), L2, [Output(PORT_A)], self.devices
        )


@pytest.fixture
def lab(netns_factory: SandboxFactory, obj_cache: Path) -> Iterator[Lab]:
    host, a, b = netns_factory("h"), netns_factory("a"), netns_factory("b")
    cable_vm(host, "tap-a", a, MAC_A, f"{IP_A}/24")
    cable_vm(host, "tap-b", b, MAC_B, f"{IP_B}/24")
    host.ip("link", "add", "miss0", "type", "veth", "peer", "name", "miss1")
    host.ip("link", "set", "miss0", "up")
    host.ip("link", "set", "miss1", "up")
    # Static neighbours: these tests are about the fast path, not ARP.
    a.ip("neigh", "replace", IP_B, "lladdr", MAC_B, "dev", "eth0", "nud", "permanent")
    b.ip("neigh", "replace", IP_A, "lladdr", MAC_A, "dev", "eth0", "nud", "permanent")
    pin = BPFFS / f"tst-{secrets.token_hex(4)}"
    fp = EbpfFastPath(pin, host.path, cache_dir=obj_cache)
    try:
        fp.load()
        tap_a = fp.bind_port("tap-a", PORT_A)
        tap_b = fp.bind_port("tap-b", PORT_B)
        fp.set_miss_device("miss0")
        yield Lab(host, a, b, fp, tap_a, tap_b)
    finally:
        fp.close()
        netns_factory.cleanup()  # devices (and their filters) go with the namespaces
        remove_pins(pin)


def test_ping_passes_only_once_flows_are_installed(lab: Lab) -> None:
    assert ping(lab.a, IP_B, timeout=0.3) is None
    assert lab.fp.maps.stats.read()[Stat.MISS] >= 1  # went to the (idle) miss device
    lab.install_l2()
    rtts = [ping(lab.a, IP_B, timeout=1.0) for _ in range(3)]
    assert all(r is not None for r in rtts), rtts
    entries = {e.key.in_port: e for e in lab.fp.maps.flows.entries()}
    assert entries[PORT_A].packets >= 3 and entries[PORT_B].packets >= 3
    # Deleting the flows stops the traffic again (no stale kernel state).
    lab.fp.maps.flows.clear()
    assert ping(lab.a, IP_B, timeout=0.3) is None


def test_first_packet_goes_through_the_miss_path_and_is_reinjected(lab: Lab) -> None:
    result: list[float | None] = []
    with MissChannel("miss1", lab.host.path) as chan:
        pinger = threading.Thread(target=lambda: result.append(ping(lab.a, IP_B, timeout=2.0)))
        pinger.start()
        miss = chan.recv(timeout=2.0)
        assert miss is not None, "no miss arrived on the miss veth"
        assert miss.port == PORT_A  # the tag arrived out of band (vlan offload)
        assert miss.frame[:6] == bytes.fromhex(MAC_B.replace(":", ""))
        assert struct.unpack_from("!H", miss.frame, 12)[0] == 0x0800 and miss.frame[23] == 1  # ICMP
        lab.install_l2()  # the "simulation" result
        chan.reinject(miss)
        pinger.join(timeout=3)
    assert result and result[0] is not None, "the reinjected echo request got no reply"
    stats = lab.fp.maps.stats.read()
    assert stats[Stat.INJECT_HIT] == 1 and stats[Stat.INJECT_MISS] == 0
    steady = min(r for r in (ping(lab.a, IP_B) for _ in range(5)) if r is not None)
    print(
        f"\nfirst packet via miss path: {result[0] * 1e3:.2f} ms, steady RTT {steady * 1e3:.3f} ms"
    )


class ToyAgent:
    """Answers every miss with the L2 flows, then reinjects: a stand-in for the
    agent's upcall loop, enough to push real TCP through the miss path."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.chan = MissChannel("miss1", lab.host.path)
        self.stop = threading.Event()
        self.misses = 0
        self.csum_partial = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            miss = self.chan.recv(timeout=0.05)
            if miss is None:
                continue
            self.misses += 1
            self.csum_partial += miss.csum_not_ready
            self.lab.install_l2()
            self.chan.reinject(miss)

    def __enter__(self) -> ToyAgent:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.chan.close()


def test_tcp_through_the_miss_path_keeps_checksums_right(lab: Lab) -> None:
    payload = bytes(range(256)) * 512  # 128 KiB: GSO-sized writes once the flow exists
    with tcp_echo_server(lab.b, IP_B, 5201), ToyAgent(lab) as agent:
        got, connect_time = tcp_roundtrip(lab.a, IP_B, 5201, payload)
        # Flush and reconnect: the SYN takes the miss path again.
        lab.fp.maps.flows.clear()
        got2, connect_time2 = tcp_roundtrip(lab.a, IP_B, 5201, payload)
    assert got == payload and got2 == payload
    assert agent.misses >= 2
    # A SYN reinjected with a broken checksum would be retransmitted after 1 s.
    assert connect_time < 0.5 and connect_time2 < 0.5, (connect_time, connect_time2)
    print(f"\nmisses {agent.misses} (checksum partial: {agent.csum_partial}), "
          f"connect {connect_time * 1e3:.2f} / {connect_time2 * 1e3:.2f} ms")  # fmt: skip


def test_agent_restart_keeps_forwarding(lab: Lab) -> None:
    lab.install_l2()
    assert ping(lab.a, IP_B) is not None
    lab.fp.close()  # the agent goes away: pins and filters stay
    assert ping(lab.a, IP_B) is not None
    again = EbpfFastPath(lab.fp.pin_dir, lab.host.path, cache_dir=lab.fp.cache_dir).load()
    try:
        assert len(again.maps.flows) == 2
        again.bind_port("tap-a", PORT_A)  # re-binding on start is harmless
        assert ping(lab.a, IP_B) is not None
    finally:
        again.close()


def _raw_socket(ns: Sandbox, ifname: str) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        s.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA
        s.bind((ifname, 0x0003))
        return s

    return run_in_netns(ns.path, make)


def _recv_tagged(sock: socket.socket, payload: bytes, timeout: float = 2.0) -> int | None:
    """VID of the first frame carrying ``payload`` (tag in band or in auxdata)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(32))
        except TimeoutError:
            return None
        if payload not in data:
            continue
        for level, kind, raw in anc:
            status, _l, _s, _m, _n, tci = struct.unpack_from("=IIIHHH", raw)
            if level == 263 and kind == 8 and status & (1 << 4):
                return tci & 0xFFF
        vid, _ = untag(data)
        return vid
    return None


def test_tenant_vlan_tag_survives_the_miss_path_and_the_fast_path(lab: Lab) -> None:
    """A tagged frame from a VM: the port tag goes outside, the tenant tag
    stays in the data, and after reinjection B sees the tenant tag again."""
    tx = _raw_socket(lab.a, "eth0")
    rx = _raw_socket(lab.b, "eth0")
    payload = b"tenant-vlan-" + secrets.token_bytes(8)
    frame = eth(MAC_B, MAC_A, 0x88B5, payload.ljust(46, b"\0"), vlan=100)  # local experimental type
    try:
        with MissChannel("miss1", lab.host.path) as chan:
            tx.send(frame)
            miss = chan.recv(timeout=2.0)
            assert miss is not None and miss.port == PORT_A
            assert untag(miss.frame) == (100, frame[:12] + frame[16:])  # tenant tag in band
            key = FlowKey.make(in_port=PORT_A, eth_dst=MAC_B, vlan_id=100)
            mask = FlowKey.mask_of(["in_port", "eth_dst", "vlan_id"])
            lab.fp.maps.flows.install(key, mask, [Output(PORT_B)], lab.devices)
            chan.reinject(miss)
            assert _recv_tagged(rx, payload) == 100
        # Later frames of the flow stay in the kernel, tag and all.
        tx.send(frame)
        assert _recv_tagged(rx, payload) == 100
        entry = lab.fp.maps.flows.get(key, mask)
        assert entry is not None and entry.packets == 2  # the reinjected one counts too
        # The same frame untagged is another flow: a miss.
        before = lab.fp.maps.stats.read()[Stat.MISS]
        tx.send(frame[:12] + frame[16:])
        time.sleep(0.05)
        assert lab.fp.maps.stats.read()[Stat.MISS] == before + 1
    finally:
        tx.close()
        rx.close()
