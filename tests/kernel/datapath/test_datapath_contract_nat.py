"""The datapath contract for the NAT rewrites: SetIpSrc, SetIpDst, SetTpSrc, SetTpDst.

Same harness and rules as test_datapath_contract.py: every backend, frame for frame, and
expected frames built rewritten by tessera.packet (checksums computed from scratch), never
computed by `run_actions`. Every rewritten frame is also checked by recomputing its
checksums, and on the kernel backends a real network stack behind local port 4 must
accept what the datapath rewrote (a UDP socket receives it; a TCP listener answers a
rewritten SYN; the ICMP echo reply carries the rewritten identifier).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import socket
from collections.abc import Iterator

import pytest
from kdp_harness import Harness, KernelHarness, at_port, seen
from test_datapath_contract import IP1, IP2, MAC1, MAC2, ROUTER, arp_request, to_port_2

from tessera.datapath.base import (
    Action,
    Flow,
    Match,
    Output,
    SetEthDst,
    SetIpDst,
    SetIpSrc,
    SetTpDst,
    SetTpSrc,
    action_from_json,
    action_to_json,
)
from tessera.packet import (
    ETH_TYPE_IPV4,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    Ethernet,
    Icmp,
    IPv4,
    Tcp,
    Udp,
    internet_checksum,
    ip_from_str,
    l4_checksum,
    mac_from_str,
)
from tessera.packet.checksum import ones_complement_sum, pseudo_header

pytestmark = pytest.mark.root

PUBLIC = ip_from_str("203.0.113.5")
INSIDE = ip_from_str("10.12.0.9")
ECHO_REQUEST, ECHO_REPLY, DEST_UNREACHABLE = 8, 0, 3
SYN, ACK = 0x02, 0x10


def frame(l4: Tcp | Udp | Icmp | bytes, *, src: int = IP1, dst: int = IP2, proto: int = 0,
          vlan: int | None = None, **ip: object) -> bytes:  # fmt: skip
    """An IPv4 frame from MAC1 to MAC2 carrying `l4`."""
    proto = proto or {Tcp: PROTO_TCP, Udp: PROTO_UDP, Icmp: PROTO_ICMP}[type(l4)]  # type: ignore[index]
    packet = IPv4(src, dst, proto, l4, **ip)  # type: ignore[arg-type]
    return Ethernet(MAC2, MAC1, ETH_TYPE_IPV4, packet, vlan_id=vlan).build()


def udp_offset(data: bytes) -> int:
    """Where the UDP header of an untagged IPv4 frame starts."""
    return 14 + (data[14] & 0x0F) * 4


def without_udp_checksum(data: bytes) -> bytes:
    at = udp_offset(data) + 6
    return data[:at] + b"\0\0" + data[at + 2 :]


def checksums_ok(data: bytes) -> bool:
    """Recompute every checksum of an (untagged or 802.1Q) IPv4 frame: the IPv4 header's,
    and for a whole TCP/UDP/ICMP packet the L4 one (UDP 0 means none)."""
    ip = 18 if data[12:14] == b"\x81\x00" else 14
    ihl = (data[ip] & 0x0F) * 4
    if internet_checksum(data[ip : ip + ihl]) != 0:
        return False
    total = int.from_bytes(data[ip + 2 : ip + 4], "big")
    flags = int.from_bytes(data[ip + 6 : ip + 8], "big")
    if flags & 0x3FFF:  # a fragment: its checksum covers bytes it does not hold
        return True
    proto, segment = data[ip + 9], data[ip + ihl : ip + total]
    src, dst = (int.from_bytes(data[ip + o : ip + o + 4], "big") for o in (12, 16))
    if proto == PROTO_ICMP:
        return internet_checksum(segment) == 0
    if proto == PROTO_UDP and segment[6:8] == b"\0\0":
        return True
    if proto in (PROTO_TCP, PROTO_UDP):
        return l4_checksum(src, dst, proto, segment) == 0
    return True


def forwards(harness: Harness, actions: tuple[Action, ...], sent: bytes, want: bytes) -> None:
    """Through a flow with `actions` (then Output(2)), `sent` leaves port 2 as `want`."""
    harness.dp.install(Flow(to_port_2(), (*actions, Output(2))))
    assert harness.exchange(1, sent, expect=1) == seen([(at_port(2), want)])
    assert checksums_ok(want)


# -- TCP and UDP -------------------------------------------------------------------------


def test_snat_and_dnat_of_tcp(harness: Harness) -> None:
    tcp = Tcp(4000, 80, seq=7, flags=SYN, payload=b"hello")
    rewritten = dataclasses.replace(tcp, src_port=40000, dst_port=8080)
    actions = (SetIpSrc(PUBLIC), SetTpSrc(40000), SetIpDst(INSIDE), SetTpDst(8080))
    forwards(harness, actions, frame(tcp), frame(rewritten, src=PUBLIC, dst=INSIDE))


@pytest.mark.parametrize("vlan", [None, 42])
def test_snat_and_dnat_of_udp(harness: Harness, vlan: int | None) -> None:
    udp = Udp(4000, 53, b"query")
    actions = (SetIpSrc(PUBLIC), SetTpSrc(1), SetIpDst(INSIDE), SetTpDst(5353))
    want = frame(Udp(1, 5353, b"query"), src=PUBLIC, dst=INSIDE, vlan=vlan)
    forwards(harness, actions, frame(udp, vlan=vlan), want)


def test_a_udp_checksum_of_zero_stays_zero(harness: Harness) -> None:
    """0 means "no checksum" in UDP: no rewrite may make one up."""
    sent = without_udp_checksum(frame(Udp(4000, 53, b"no checksum")))
    want = without_udp_checksum(frame(Udp(4001, 54, b"no checksum"), src=PUBLIC, dst=INSIDE))
    actions = (SetIpSrc(PUBLIC), SetIpDst(INSIDE), SetTpSrc(4001), SetTpDst(54))
    forwards(harness, actions, sent, want)


def test_a_udp_checksum_computing_to_zero_is_sent_as_all_ones(harness: Harness) -> None:
    """A rewrite whose checksum comes out 0 must send 0xffff, or the receiver would take
    the datagram for one without a checksum."""
    body = b"mangled"
    # The source port that makes the one's complement sum 0xffff, i.e. the checksum 0.
    rest = ones_complement_sum(
        pseudo_header(IP1, IP2, PROTO_UDP, 8 + len(body)) + bytes(2) + (53).to_bytes(2, "big")
        + (8 + len(body)).to_bytes(2, "big") + bytes(2) + body
    )  # fmt: skip
    port = 0xFFFF - rest
    want = frame(Udp(port, 53, body))
    assert want[udp_offset(want) + 6 : udp_offset(want) + 8] == b"\xff\xff"
    forwards(harness, (SetTpSrc(port),), frame(Udp(1234, 53, body)), want)


def test_a_rewrite_to_the_same_value_changes_nothing(harness: Harness) -> None:
    sent = frame(Tcp(4000, 80, payload=b"same"))
    forwards(harness, (SetIpSrc(IP1), SetTpSrc(4000), SetIpDst(IP2), SetTpDst(80)), sent, sent)


# -- ICMP --------------------------------------------------------------------------------


@pytest.mark.parametrize("icmp_type", [ECHO_REQUEST, ECHO_REPLY])
def test_icmp_echo_is_translated_by_its_identifier(harness: Harness, icmp_type: int) -> None:
    """SetTpSrc rewrites the echo id; SetTpDst leaves ICMP alone; an address rewrite
    leaves the ICMP checksum alone (no pseudo-header)."""
    echo = Icmp(icmp_type, 0, ident=0x1234, seq=9, payload=b"ping")
    want = frame(dataclasses.replace(echo, ident=0x4321), src=PUBLIC, dst=INSIDE)
    actions = (SetIpSrc(PUBLIC), SetTpSrc(0x4321), SetTpDst(7), SetIpDst(INSIDE))
    forwards(harness, actions, frame(echo), want)


def test_a_flow_keyed_by_the_echo_id_serves_that_id_only(harness: Harness) -> None:
    """Pings through NAT are cached per echo id: the id is a key field, read from echo
    requests and replies only (another type's same bytes are no id)."""
    match = Match.of(in_port=1, eth_type=ETH_TYPE_IPV4, ip_proto=PROTO_ICMP, ip_frag=0,
                     tp_src=ECHO_REQUEST, icmp_id=0x1234)  # fmt: skip
    harness.dp.install(Flow(match, (SetTpSrc(0x4321), Output(2))))
    echo = Icmp(ECHO_REQUEST, 0, ident=0x1234, seq=1, payload=b"ping")
    for seq in (1, 2):
        sent = frame(dataclasses.replace(echo, seq=seq))
        want = frame(dataclasses.replace(echo, seq=seq, ident=0x4321))
        assert harness.exchange(1, sent, expect=1) == seen([(at_port(2), want)])
    other_id = frame(dataclasses.replace(echo, ident=0x1235))
    assert harness.exchange(1, other_id, expect=1) == seen(misses=[(1, other_id)])
    installed = harness.dp.stats(match)
    assert installed is not None and installed.packets == 2
    # A timestamp request has the same bytes where an echo has its id: its key has 0.
    stamp = Match.of(in_port=1, eth_type=ETH_TYPE_IPV4, ip_proto=PROTO_ICMP, ip_frag=0,
                     tp_src=13, mask_fields=["icmp_id"])  # fmt: skip
    harness.dp.install(Flow(stamp, (Output(3),)))
    sent = frame(Icmp(13, 0, ident=0x1234, seq=1, payload=bytes(12)))
    assert harness.exchange(1, sent, expect=1) == seen([(at_port(3), sent)])


def test_an_icmp_error_has_only_its_addresses_rewritten(harness: Harness) -> None:
    """The quoted packet of an ICMP error is rewritten by the agent, not the datapath."""
    error = Icmp(DEST_UNREACHABLE, 3, ident=0x1234, seq=0x5678, payload=b"quoted header")
    want = frame(error, src=PUBLIC)
    forwards(harness, (SetIpSrc(PUBLIC), SetTpSrc(1), SetTpDst(2)), frame(error), want)


# -- fragments, other protocols, not IPv4 --------------------------------------------------


def test_a_first_fragment_gets_its_checksum_fixed_for_the_whole_datagram(
    harness: Harness,
) -> None:
    """The TCP checksum of a first fragment covers the reassembled datagram: it is fixed
    incrementally, and the receiver's reassembly must find it right."""
    tcp = Tcp(4000, 80, payload=b"x" * 40)
    full = tcp.build(IP1, IP2)
    natted = dataclasses.replace(tcp, src_port=5555).build(PUBLIC, IP2)
    sent = frame(full[:24], proto=PROTO_TCP, more_fragments=True, ident=77)
    want = frame(natted[:24], src=PUBLIC, proto=PROTO_TCP, more_fragments=True, ident=77)
    forwards(harness, (SetIpSrc(PUBLIC), SetTpSrc(5555)), sent, want)


def test_a_later_fragment_has_no_ports_to_rewrite(harness: Harness) -> None:
    """Bytes where a port would be are payload: a no-op; the address still changes."""
    sent = frame(b"\x0f\xa0\x00\x50" + b"y" * 12, proto=PROTO_TCP, frag_offset=3, ident=77)
    want = frame(b"\x0f\xa0\x00\x50" + b"y" * 12, src=PUBLIC, dst=INSIDE, proto=PROTO_TCP,
                 frag_offset=3, ident=77)  # fmt: skip
    forwards(harness, (SetTpSrc(1), SetIpSrc(PUBLIC), SetTpDst(2), SetIpDst(INSIDE)), sent, want)


def test_a_transport_header_cut_short_is_left_alone(harness: Harness) -> None:
    """A first fragment shorter than its TCP header: the ports are there, its checksum
    is not, so nothing of the L4 header is rewritten."""
    head = Tcp(4000, 80).build(IP1, IP2)[:8]
    sent = frame(head, proto=PROTO_TCP, more_fragments=True)
    want = frame(head, src=PUBLIC, proto=PROTO_TCP, more_fragments=True)
    forwards(harness, (SetTpSrc(1), SetIpSrc(PUBLIC)), sent, want)


def test_ports_of_another_protocol_are_left_alone(harness: Harness) -> None:
    sctp = b"\x0f\xa0\x00\x50" + bytes(8)
    sent = frame(sctp, proto=132)
    forwards(harness, (SetTpSrc(1), SetTpDst(2), SetIpDst(INSIDE)), sent,
             frame(sctp, proto=132, dst=INSIDE))  # fmt: skip


def test_a_nat_rewrite_of_a_frame_without_ipv4_drops_it(harness: Harness) -> None:
    """A broken flow; what an output before the rewrite sent has left."""
    harness.dp.install(Flow(Match.of(in_port=1), (Output(3), SetIpSrc(PUBLIC), Output(2))))
    arp = arp_request()
    assert harness.exchange(1, arp, expect=1) == seen([(at_port(3), arp)])
    harness.dp.install(Flow(Match.of(in_port=1), (SetTpDst(1), Output(2))))
    assert harness.exchange(1, arp, expect=0) == seen()


def test_each_output_takes_the_nat_rewrites_so_far(harness: Harness) -> None:
    udp = Udp(4000, 53, b"fork")
    harness.dp.install(Flow(to_port_2(), (SetIpSrc(PUBLIC), Output(3), SetTpDst(54),
                                          SetEthDst(ROUTER), Output(2))))  # fmt: skip
    got = harness.exchange(1, frame(udp), expect=2)
    routed = Ethernet.parse(frame(Udp(4000, 54, b"fork"), src=PUBLIC))
    assert got == seen([
        (at_port(3), frame(udp, src=PUBLIC)),
        (at_port(2), dataclasses.replace(routed, dst=ROUTER).build()),
    ])  # fmt: skip


def test_nat_actions_come_back_from_dump_and_json(harness: Harness) -> None:
    actions = (SetIpSrc(PUBLIC), SetIpDst(INSIDE), SetTpSrc(0), SetTpDst(65535), Output(2))
    match = Match.of(in_port=1, eth_type=ETH_TYPE_IPV4, ip_dst=IP2)
    harness.dp.install(Flow(match, actions))
    assert harness.dp.dump()[match].flow.actions == actions
    assert tuple(action_from_json(action_to_json(a)) for a in actions) == actions
    assert " ".join(map(str, actions)) == (
        "set_ip_src(203.0.113.5) set_ip_dst(10.12.0.9) set_tp_src(0) set_tp_dst(65535) output(2)"
    )


@pytest.mark.parametrize(
    ("action", "value"),
    [(SetIpSrc, -1), (SetIpDst, 1 << 32), (SetTpSrc, 65536), (SetTpDst, -1)],
)
def test_nat_values_out_of_range_are_refused(action: type, value: int) -> None:
    with pytest.raises(ValueError):
        action(value)


# -- a real receiver behind local port 4 (kernel backends) -------------------------------

RX_PORT = 4
RX_IP = ip_from_str("10.12.0.4")
RX_MAC = mac_from_str("02:00:00:00:0c:04")
NAT_IP = ip_from_str("10.12.0.77")  # the translated source, on the receiver's subnet


@dataclasses.dataclass
class Receiver:
    harness: KernelHarness
    udp: socket.socket
    tcp: socket.socket


@pytest.fixture(scope="module")
def module_receiver(module_harness: Harness) -> Iterator[Receiver]:
    """A namespace with a network stack at 10.12.0.4 behind local port 4: what it
    answers leaves through port 4 and reaches the agent as a miss."""
    if not isinstance(module_harness, KernelHarness):
        pytest.skip("no network stack behind the fake's ports")
    h = module_harness
    rx = h.factory("rx")
    h.host.ip("link", "add", "t4", "type", "veth", "peer", "name", "r4", "netns", rx.name)
    h.host.ip("link", "set", "t4", "up")
    rx.ip("link", "set", "r4", "address", "02:00:00:00:0c:04", "up")
    rx.ip("addr", "add", "10.12.0.4/24", "dev", "r4")
    rx.ip("neigh", "add", "10.12.0.77", "lladdr", "02:00:00:00:0c:01", "dev", "r4",
          "nud", "permanent")  # fmt: skip

    def sockets() -> tuple[socket.socket, socket.socket]:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("10.12.0.4", 5300))
        u.settimeout(3)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("10.12.0.4", 8080))
        t.listen(8)
        return u, t

    udp, tcp = rx.call(sockets)
    h.host.call(functools.partial(h.dp.add_port, RX_PORT, "t4", None))
    try:
        yield Receiver(h, udp, tcp)
    finally:
        udp.close()
        tcp.close()
        with contextlib.suppress(Exception):
            h.host.call(functools.partial(h.dp.remove_port, RX_PORT))


@pytest.fixture
def receiver(module_receiver: Receiver, harness: Harness) -> Receiver:
    return module_receiver


TO_RX: tuple[Action, ...] = (SetEthDst(RX_MAC), SetIpSrc(NAT_IP), SetIpDst(RX_IP))


def test_a_receiver_accepts_a_natted_udp_datagram(receiver: Receiver) -> None:
    h = receiver.harness
    for zero in (False, True):
        sent = frame(Udp(4000, 53, b"to the receiver %d" % zero), dst=ip_from_str("10.12.9.9"))
        if zero:
            sent = without_udp_checksum(sent)
        h.dp.install(Flow(to_port_2(), (*TO_RX, SetTpSrc(5555), SetTpDst(5300), Output(RX_PORT))))
        h.exchange(1, sent, expect=0)
        data, addr = receiver.udp.recvfrom(2048)
        assert (data, addr) == (b"to the receiver %d" % zero, ("10.12.0.77", 5555))


def test_a_receiver_answers_a_natted_tcp_syn(receiver: Receiver) -> None:
    h = receiver.harness
    h.dp.install(Flow(to_port_2(), (*TO_RX, SetTpSrc(5556), SetTpDst(8080), Output(RX_PORT))))
    syn = frame(Tcp(4000, 80, seq=1000, flags=SYN), dst=ip_from_str("10.12.9.9"))
    got = h.exchange(1, syn, expect=1)
    assert [p for p, _ in got.misses] == [RX_PORT]
    reply = Ethernet.parse(got.misses[0][1]).payload
    assert isinstance(reply, IPv4) and isinstance(reply.payload, Tcp)
    assert (reply.src, reply.dst) == (RX_IP, NAT_IP)
    tcp = reply.payload
    assert (tcp.src_port, tcp.dst_port, tcp.flags & (SYN | ACK), tcp.ack) == (
        8080, 5556, SYN | ACK, 1001
    )  # fmt: skip


def test_a_receiver_answers_a_natted_echo_with_the_new_identifier(receiver: Receiver) -> None:
    h = receiver.harness
    h.dp.install(Flow(to_port_2(), (*TO_RX, SetTpSrc(0x4321), Output(RX_PORT))))
    echo = frame(Icmp(ECHO_REQUEST, 0, ident=0x1234, seq=3, payload=b"ping"),
                 dst=ip_from_str("10.12.9.9"))  # fmt: skip
    got = h.exchange(1, echo, expect=1)
    assert [p for p, _ in got.misses] == [RX_PORT]
    reply = Ethernet.parse(got.misses[0][1]).payload
    assert isinstance(reply, IPv4) and isinstance(reply.payload, Icmp)
    assert (reply.src, reply.dst) == (RX_IP, NAT_IP)
    assert (reply.payload.type, reply.payload.ident, reply.payload.seq) == (ECHO_REPLY, 0x4321, 3)
