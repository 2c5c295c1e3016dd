"""Floods wider than a flow's action list (ACT_FLOOD + the ``flood_sets`` map).

A real namespace test first: a frame enters a bound port and a copy must come
out of every one of 20 devices (more than FLOW_MAX_ACTIONS = 12), the last one
included -- BPF_PROG_TEST_RUN cannot show that one, a real redirect can.
Then BPF_PROG_TEST_RUN runs for what only the probe can see (tunnel keys,
counters of the failure paths).
"""

from __future__ import annotations

import ctypes
import ipaddress
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.ebpf import DEVICES, remove_pins
from support.rawframes import eth, ipv4, udp
from tessera.datapath.base import Action, Output, OutputTunnel, SetEthSrc
from tessera.datapath.ebpf.layout import FLOW_MAX_ACTIONS, FlowKey, Stat
from tessera.datapath.ebpf.loader import EbpfFastPath
from tessera.datapath.ebpf.netns import run_in_netns
from tessera.lab.sandbox import Sandbox, SandboxFactory
from tessera.packet.addr import ip_from_str, mac_from_str

from .conftest import BPFFS, TEST_PORT, Probe

pytestmark = pytest.mark.root

TC_ACT_SHOT, TC_ACT_REDIRECT = 2, 7
ETH_P_ALL = 0x0003
ETH_P_TEST = 0x88B5  # local experimental EtherType: no stack in the namespace reacts to it
VM_A, ROUTER, BROADCAST = "02:00:00:00:00:0a", "02:00:00:00:ee:01", "ff:ff:ff:ff:ff:ff"
N_OUT = 20
L2 = FlowKey.mask_of(["in_port", "eth_dst"])


class FloodLab:
    """One namespace: a bound port fed from its veth peer, and N_OUT veth pairs
    whose far ends are listened to with AF_PACKET."""

    def __init__(self, ns: Sandbox, fp: EbpfFastPath) -> None:
        self.ns, self.fp = ns, fp
        self.sockets: list[socket.socket] = []
        ns.ip("link", "add", "in0", "type", "veth", "peer", "name", "in1")
        for i in range(N_OUT):
            ns.ip("link", "add", f"o{i}a", "type", "veth", "peer", "name", f"o{i}b")
        for dev in ["in0", "in1"] + [f"o{i}{e}" for i in range(N_OUT) for e in "ab"]:
            ns.ip("link", "set", dev, "up")
        self.outputs = [ns.ifindex(f"o{i}a") for i in range(N_OUT)]
        for i in range(N_OUT):
            self.sockets.append(self._listen(f"o{i}b"))
        self.sender = self._listen("in1")
        fp.bind_port("in0", 1)

    def _listen(self, ifname: str) -> socket.socket:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((ifname, 0))
            s.setblocking(False)
            return s

        return run_in_netns(self.ns.path, make)

    def received(self, marker: bytes, timeout: float = 2.0) -> dict[int, bytes]:
        """Output index -> the frame carrying ``marker`` that came out there."""
        got: dict[int, bytes] = {}
        deadline = time.monotonic() + timeout
        while len(got) < N_OUT and time.monotonic() < deadline:
            for i, s in enumerate(self.sockets):
                try:
                    while True:
                        frame = s.recv(2048)
                        if marker in frame:
                            got[i] = frame
                except BlockingIOError:
                    pass
            time.sleep(0.01)
        return got

    def close(self) -> None:
        for s in [*self.sockets, self.sender]:
            s.close()


@pytest.fixture
def flood_lab(netns_factory: SandboxFactory, obj_cache: Path) -> Iterator[FloodLab]:
    ns = netns_factory("flood")
    fp = EbpfFastPath(BPFFS / f"tst-{secrets.token_hex(4)}", ns.path, cache_dir=obj_cache)
    lab: FloodLab | None = None
    try:
        fp.load()
        lab = FloodLab(ns, fp)
        yield lab
    finally:
        if lab is not None:
            lab.close()
        fp.close()
        netns_factory.cleanup()  # the devices and their filters go with the namespace
        remove_pins(fp.pin_dir)


def test_a_flood_to_20_ports_delivers_a_copy_to_every_port(flood_lab: FloodLab) -> None:
    actions: list[Action] = [
        SetEthSrc(mac_from_str(ROUTER)),
        *(Output(i) for i in flood_lab.outputs),
    ]
    assert len(actions) > FLOW_MAX_ACTIONS
    flows = flood_lab.fp.maps.flows
    flows.install(FlowKey.make(in_port=1, eth_dst=BROADCAST), L2, actions, DEVICES)
    entry = flows.get(FlowKey.make(in_port=1, eth_dst=BROADCAST), L2)
    assert entry is not None and entry.flood_set is not None

    for round_ in range(2):  # twice: the flow stays usable after its first flood
        marker = secrets.token_bytes(16)
        frame = eth(BROADCAST, VM_A, ETH_P_TEST, marker + bytes(30))
        flood_lab.sender.send(frame)
        got = flood_lab.received(marker)
        assert sorted(got) == list(range(N_OUT)), f"round {round_}: copies only on {sorted(got)}"
        want = frame[:6] + bytes.fromhex(ROUTER.replace(":", "")) + frame[12:]
        assert all(f == want for f in got.values())  # the rewrite reached every copy
    stats = flood_lab.fp.maps.stats.read()
    assert stats[Stat.HIT] == 2 and stats[Stat.ACTION_ERROR] == 0
    entry = flows.get(FlowKey.make(in_port=1, eth_dst=BROADCAST), L2)
    assert entry is not None and entry.packets == 2


# --- BPF_PROG_TEST_RUN (see conftest.probe) ------------------------------------------


def l2_key() -> FlowKey:
    return FlowKey.make(in_port=TEST_PORT, eth_dst=BROADCAST)


def frame() -> bytes:
    return eth(BROADCAST, VM_A, 0x0800, ipv4("10.0.0.1", "10.0.0.255", 17, udp(1000, 2000)))


def test_each_tunnel_output_of_a_flood_sets_its_own_key(probe: Probe) -> None:
    probe.maps.config.set(vxlan_ifindex=probe.dummy_ifindex)  # clones land on the sink veth
    tunnels = [OutputTunnel(7000 + i, ip_from_str(f"198.18.0.{i + 1}")) for i in range(15)]
    probe.maps.flows.install(l2_key(), L2, [Output(probe.dummy_ifindex), *tunnels], DEVICES)
    res = probe.run("probe_port_ingress", frame())
    out = probe.out()
    assert res.retval == TC_ACT_REDIRECT  # the last output redirects the packet itself
    assert out.tunnel_ok and out.tunnel_id == 7014
    assert ipaddress.IPv4Address(out.remote_ipv4) == ipaddress.IPv4Address("198.18.0.15")
    stats = probe.maps.stats.read()
    assert (stats[Stat.HIT], stats[Stat.ACTION_ERROR]) == (1, 0)


def test_a_broken_output_of_a_flood_is_skipped_not_fatal(probe: Probe) -> None:
    # A tunnel output with no VXLAN device configured fails; the others still go.
    sink = Output(probe.dummy_ifindex)
    probe.maps.flows.install(
        l2_key(), L2, [OutputTunnel(1, ip_from_str("198.18.0.1")), *[sink] * 14], DEVICES
    )
    assert probe.run("probe_port_ingress", frame()).retval == TC_ACT_REDIRECT
    assert probe.maps.stats.read()[Stat.ACTION_ERROR] == 1


def test_a_flood_naming_a_missing_set_drops_and_counts(probe: Probe) -> None:
    probe.maps.flows.install(l2_key(), L2, [Output(probe.dummy_ifindex)] * 13, DEVICES)
    entry = probe.maps.flows.get(l2_key(), L2)
    assert entry is not None and entry.flood_set is not None
    probe.maps.flows.floods.map.delete(ctypes.c_uint32(entry.flood_set))
    assert probe.run("probe_port_ingress", frame()).retval == TC_ACT_SHOT
    stats = probe.maps.stats.read()
    assert (stats[Stat.FLOOD_MISSING], stats[Stat.ACTION_ERROR]) == (1, 1)
