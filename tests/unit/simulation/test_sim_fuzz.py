"""Random and hostile frames through every parser and a full simulation.

Frames come from untrusted VMs: whatever bytes arrive, every parser of `tessera.packet`
either parses them or raises `PacketError` (its one documented error), and the
simulation of a frame that parses returns a well-formed `SimulationResult` — never
another exception. The topology has what makes the simulation read deep into a
packet: a bridge with a DHCP server (static host, DNS servers, classless routes), a
router with DNAT/SNAT and reverse NAT rules, nested chains (jump three levels down,
`return` and `continue`), connection tracking, a port group and an IP address group.

The frames are, in equal shares: random bytes; valid frames of every kind (TCP, UDP,
ICMP echo and errors quoting a packet, ARP, DHCP, fragments, VLAN-tagged) truncated at
a random point; the same with random bytes overwritten; and valid frames with hostile
header fields (IHL, total length, options, DHCP option lengths).

30,000 cases in CI (about 5 s: a fixed seed draws the same ones every run, so more
would only repeat them), 300,000 under `HYPOTHESIS_PROFILE=explore`, whose seed is
fresh (printed). A failure names the case number and the seed,
which reproduce it.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable

import pytest
from hypothesis import settings
from sim_topo import NOW, Topo, arp_req, dhcp_request, eth, ip, mac, ping, tcp, udp

from tessera.model import NatTarget, PortRange
from tessera.packet import (
    ETH_TYPE_IPV4,
    PROTO_ICMP,
    Arp,
    Dhcp,
    Ethernet,
    FlowMatch,
    Icmp,
    IPv4,
    Tcp,
    Udp,
)
from tessera.packet.dhcp import decode_classless_routes
from tessera.packet.errors import PacketError
from tessera.packet.icmp import parse_quoted
from tessera.simulation import SimulationResult, Snapshot, Verdict, simulate

CASES = 30_000 if settings().derandomize else 300_000
SEED = 20261203 if settings().derandomize else random.SystemRandom().randrange(1 << 32)

PARSERS: tuple[tuple[str, Callable[[bytes], object]], ...] = (
    ("Ethernet", Ethernet.parse),
    ("Arp", Arp.parse),
    ("IPv4", IPv4.parse),
    ("IPv4.parse_quoted", IPv4.parse_quoted),
    ("Tcp", Tcp.parse),
    ("Udp", Udp.parse),
    ("Udp fragment", lambda data: Udp.parse(data, fragment=True)),
    ("Icmp", Icmp.parse),
    ("icmp.parse_quoted", parse_quoted),
    ("Dhcp", Dhcp.parse),
    ("decode_classless_routes", decode_classless_routes),
)


def _topology() -> tuple[Snapshot, list[str]]:
    """VMs on a bridge with DHCP, a router with NAT and nested chains to an uplink."""
    t = Topo()
    lan = t.bridge("lan")
    vm1, vm2 = t.bridge_port(lan), t.bridge_port(lan)
    t.dhcp_subnet(
        lan,
        "10.0.0.0/24",
        default_gateway="10.0.0.1",
        server_addr="10.0.0.2",
        dns_server_addrs=["10.0.0.53", "192.0.2.53"],
        interface_mtu=1400,
        opt121_routes=[
            {
                "destination_prefix": "172.16.0.0",
                "destination_length": 12,
                "gateway_addr": "10.0.0.1",
            }
        ],
    )
    rt = t.router("edge")
    inside = t.router_port(rt, "10.0.0.1/24")
    lan_uplink = t.bridge_port(lan)
    t.link(inside, lan_uplink)
    outside = t.router_port(rt, "203.0.113.1/24")
    t.route(rt, "203.0.113.0/24", outside)
    t.route(rt, "0.0.0.0/0", outside, gw="203.0.113.254")
    t.route(rt, "10.0.0.0/24", inside)
    t.learn_arp(rt, "203.0.113.254", mac(0xFE))
    t.learn_arp(rt, "10.0.0.10", mac(1))
    t.learn_mac(lan, mac(1), vm1)
    t.learn_mac(lan, mac(2), vm2)

    group = t.port_group(vm1, vm2)
    addrs = t.ip_group("10.0.0.10", "10.0.0.11")
    deepest = t.chain("deepest")
    t.rule(deepest, "drop", nw_proto=17, tp_dst=PortRange(start=9, end=9))
    t.rule(deepest, "return", nw_proto=1)
    middle = t.chain("middle")
    t.rule(middle, "jump", jump_chain_id=deepest.id, ip_addr_group_src=addrs.id)
    t.rule(middle, "continue", port_group=group.id)
    top = t.chain("top")
    t.rule(top, "jump", jump_chain_id=middle.id, inv_nw_dst=True, nw_dst_address="10.9.9.9",
           nw_dst_length=32)  # fmt: skip
    t.rule(top, "jump", jump_chain_id=deepest.id, tp_src=PortRange(start=1000, end=2000))
    t.rule(top, "accept", match_return_flow=True)
    nat_in = t.chain("nat-in")
    t.rule(nat_in, "jump", jump_chain_id=top.id)
    t.rule(nat_in, "dnat", nw_dst_address="203.0.113.1", nw_dst_length=32, nw_proto=6,
           tp_dst=PortRange(start=80, end=80), flow_action="accept",
           nat_targets=[NatTarget(address_from="10.0.0.10", address_to="10.0.0.10",
                                  port_from=8080, port_to=8080)])  # fmt: skip
    t.rule(nat_in, "rev_snat", nw_dst_address="203.0.113.1", nw_dst_length=32)
    nat_out = t.chain("nat-out")
    t.rule(nat_out, "rev_dnat", nw_src_address="10.0.0.10", nw_src_length=32)
    t.rule(nat_out, "snat", nw_src_address="10.0.0.0", nw_src_length=24, flow_action="accept",
           nat_targets=[NatTarget(address_from="203.0.113.1", address_to="203.0.113.1",
                                  port_from=20000, port_to=30000)])  # fmt: skip
    t.set(rt, inbound_filter_id=nat_in.id, outbound_filter_id=nat_out.id)
    t.set(vm1, inbound_filter_id=top.id)
    return t.snapshot(), [vm1.id, vm2.id, outside.id, inside.id]


VM1, VM2, GW = mac(1), mac(2), mac(0xFE)


def _valid_frames() -> list[bytes]:
    inner = IPv4(ip("10.0.0.10"), ip("198.51.100.7"), 6, Tcp(40000, 443))
    quoting = Icmp(3, 1, 0, 0, inner.build()[:28])
    return [
        tcp(VM1, 0x02_7E_55_00_00_01, "10.0.0.10", "198.51.100.7", 40000, 443),
        tcp(GW, 0x02_7E_55_00_00_02, "198.51.100.7", "203.0.113.1", 443, 80),
        udp(VM1, VM2, "10.0.0.10", "10.0.0.11", 5353, 9),
        udp(VM2, 0x02_7E_55_00_00_01, "10.0.0.11", "8.8.8.8", 1500, 53),
        ping(VM1, 0x02_7E_55_00_00_01, "10.0.0.10", "10.0.0.1"),
        ping(VM1, 0x02_7E_55_00_00_01, "10.0.0.10", "198.51.100.7", ttl=1),
        eth(
            GW,
            0x02_7E_55_00_00_02,
            IPv4(ip("198.51.100.7"), ip("203.0.113.1"), PROTO_ICMP, quoting),
        ),
        arp_req(VM1, "10.0.0.10", "10.0.0.1"),
        arp_req(VM2, "10.0.0.11", "10.0.0.10"),
        dhcp_request(VM1),
        dhcp_request(mac(9), requested_ip=ip("10.0.0.77")),
        eth(VM1, VM2, IPv4(ip("10.0.0.10"), ip("10.0.0.11"), 6, b"\x00" * 16, frag_offset=3)),
        eth(VM1, VM2, IPv4(ip("10.0.0.10"), ip("10.0.0.11"), 6, Tcp(1, 2), more_fragments=True)),
        Ethernet(
            VM2,
            VM1,
            ETH_TYPE_IPV4,
            IPv4(ip("10.0.0.10"), ip("10.0.0.11"), 17, Udp(1, 2, b"v")),
            vlan_id=7,
        ).build(),
    ]


def _hostile(rng: random.Random, frame: bytes) -> bytes:
    """A valid frame with one header field set to something no sender should send."""
    data = bytearray(frame)
    ip_at = 18 if data[12:14] == b"\x81\x00" else 14
    if len(data) < ip_at + 20:
        return bytes(data)
    choice = rng.randrange(6)
    if choice == 0:  # IHL below 5 or past the end
        data[ip_at] = 0x40 | rng.choice((0, 1, 4, 15))
    elif choice == 1:  # total length shorter or longer than the bytes
        struct.pack_into("!H", data, ip_at + 2, rng.choice((0, 19, 20, 21, 65535)))
    elif choice == 2:  # options of random bytes
        data[ip_at] = 0x40 | rng.randrange(6, 16)
        data[ip_at + 20 :] = rng.randbytes(rng.randrange(0, 60))
    elif choice == 3:  # DHCP-looking options with lengths past the end
        data += bytes((99, 130, 83, 99, 53, 200, 1, 55, 255))
    elif choice == 4:  # a protocol the frame does not carry
        data[ip_at + 9] = rng.choice((1, 6, 17, 0, 255))
    else:  # fragment fields
        struct.pack_into("!H", data, ip_at + 6, rng.randrange(0, 65536))
    return bytes(data)


def _frame(rng: random.Random, valid: list[bytes]) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 200))
    frame = rng.choice(valid)
    if kind == 1:
        return frame[: rng.randrange(0, len(frame) + 1)]
    if kind == 2:
        data = bytearray(frame)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    return _hostile(rng, frame)


def _check(snapshot: Snapshot, in_port: str, frame: bytes) -> SimulationResult | None:
    for name, parse in PARSERS:
        for offset in (0, 14, 18, 34, 42):
            try:
                parse(frame[offset:])
            except PacketError:
                pass
            except Exception as exc:
                raise AssertionError(f"{name} at offset {offset}: {exc!r}") from exc
    try:
        match = FlowMatch.from_frame(in_port, frame)
    except PacketError:
        return None
    result = simulate(snapshot, match, frame, NOW, trace=True)
    assert isinstance(result, SimulationResult)
    assert result.verdict in Verdict
    assert (result.verdict == Verdict.FORWARD) == bool(result.outputs), result
    assert result.trace is not None
    return result


@pytest.mark.slow
def test_random_and_hostile_frames_never_crash_a_parser_or_the_simulation() -> None:
    snapshot, ports = _topology()
    valid = _valid_frames()
    for frame in valid:  # the base frames themselves parse and simulate
        FlowMatch.from_frame(ports[0], frame)
    rng = random.Random(SEED)
    start = time.monotonic()
    verdicts: dict[Verdict, int] = dict.fromkeys(Verdict, 0)
    nat = 0
    for case in range(CASES):
        frame = _frame(rng, valid)
        in_port = rng.choice(ports)
        try:
            result = _check(snapshot, in_port, frame)
        except Exception as exc:
            raise AssertionError(f"case {case} (seed {SEED}): frame {frame.hex()}") from exc
        if result is not None:
            verdicts[result.verdict] += 1
            nat += bool(result.flow_state)
    elapsed = time.monotonic() - start
    # Not vacuous: the frames reached forwarding, drops, answers (DHCP, ARP, ping) and NAT.
    assert all(verdicts[v] for v in (Verdict.FORWARD, Verdict.DROP, Verdict.CONSUMED)), verdicts
    assert nat, "no frame created connection or NAT state"
    print(f"{CASES} cases in {elapsed:.1f}s: {verdicts}, {nat} with flow state")
