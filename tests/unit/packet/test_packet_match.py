"""FlowMatch: the recorded mask is what makes cached megaflows correct."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packet_vectors import ARP_REQUEST, ICMP_ECHO, TCP_SYN, VLAN_UDP

from support.packet_strategies import ethernets
from tessera.packet import (
    ALL_FIELDS,
    ETH_TYPE_IPV4,
    Ethernet,
    Field,
    FlowMatch,
    IpFrag,
    IPv4,
    PacketError,
    Tcp,
    ip_from_str,
)
from tessera.packet.match import FIELD_NAMES

PORT = "6f1e9d2c-9a51-4e2b-8a44-1c2d3e4f5a6b"
IP_NEEDS = Field.ETH_TYPE
TP_NEEDS = Field.ETH_TYPE | Field.IP_PROTO | Field.IP_FRAG
# What reading each field records: itself plus the fields its meaning depends on.
RECORDS = {
    "in_port": Field.IN_PORT,
    "eth_src": Field.ETH_SRC,
    "eth_dst": Field.ETH_DST,
    "vlan_id": Field.VLAN_ID,
    "eth_type": Field.ETH_TYPE,
    "ip_src": Field.IP_SRC | IP_NEEDS,
    "ip_dst": Field.IP_DST | IP_NEEDS,
    "ip_proto": Field.IP_PROTO | IP_NEEDS,
    "ip_tos": Field.IP_TOS | IP_NEEDS,
    "ip_ttl": Field.IP_TTL | IP_NEEDS,
    "ip_frag": Field.IP_FRAG | IP_NEEDS,
    "tp_src": Field.TP_SRC | TP_NEEDS,
    "tp_dst": Field.TP_DST | TP_NEEDS,
    "icmp_id": Field.ICMP_ID | Field.TP_SRC | TP_NEEDS,
    "ct_state": Field.CT_STATE,
}
SETTABLE = ["eth_src", "eth_dst", "vlan_id", "ip_src", "ip_dst", "ip_tos", "ip_ttl", "tp_src",
            "tp_dst"]  # fmt: skip


def tcp_match() -> FlowMatch:
    return FlowMatch.from_frame(PORT, TCP_SYN)


def test_fields_of_a_tcp_frame() -> None:
    m = tcp_match()
    assert m.original() == {
        "in_port": PORT,
        "eth_src": 0x02000000000A,
        "eth_dst": 0x020000000014,
        "vlan_id": 0,
        "eth_type": ETH_TYPE_IPV4,
        "ip_src": ip_from_str("192.168.0.10"),
        "ip_dst": ip_from_str("192.168.0.20"),
        "ip_proto": 6,
        "ip_tos": 0,
        "ip_ttl": 64,
        "ip_frag": IpFrag.NO,
        "tp_src": 43210,
        "tp_dst": 22,
        "icmp_id": 0,
        "ct_state": 0,
    }
    assert m.mask == Field(0)


def test_arp_icmp_and_vlan_field_meanings() -> None:
    arp = FlowMatch.from_frame(None, ARP_REQUEST).original()
    assert (arp["eth_type"], arp["ip_proto"]) == (0x0806, 1)  # opcode: request
    assert (arp["ip_src"], arp["ip_dst"]) == (
        ip_from_str("192.168.0.1"),
        ip_from_str("192.168.0.2"),
    )
    ping = FlowMatch.from_frame(None, ICMP_ECHO).original()
    assert (ping["tp_src"], ping["tp_dst"]) == (8, 0)  # type, code
    tagged = FlowMatch.from_frame(None, VLAN_UDP).original()
    assert (tagged["vlan_id"], tagged["eth_type"], tagged["tp_src"]) == (100, 0x0800, 5353)


def test_fragment_kinds() -> None:
    tcp = Tcp(1, 2, payload=b"x" * 40)
    first = IPv4(1, 2, 6, tcp, more_fragments=True)
    later = IPv4(1, 2, 6, b"y" * 16, frag_offset=6)
    for packet, kind, ports in [(first, IpFrag.FIRST, (1, 2)), (later, IpFrag.LATER, (0, 0))]:
        frame = Ethernet(1, 2, ETH_TYPE_IPV4, packet).build()
        values = FlowMatch.from_frame(None, frame).original()
        assert (values["ip_frag"], values["tp_src"], values["tp_dst"]) == (kind, *ports)


@pytest.mark.parametrize(
    ("packet", "ports"),
    [
        (IPv4(1, 2, 132, bytes.fromhex("0b5904d2") + bytes(8)), (2905, 1234)),  # SCTP
        (IPv4(1, 2, 6, bytes.fromhex("1f900050"), more_fragments=True), (8080, 80)),
        (IPv4(1, 2, 1, bytes.fromhex("0303"), more_fragments=True), (3, 3)),
        (IPv4(1, 2, 17, bytes.fromhex("0035"), more_fragments=True), (0, 0)),
    ],
)
def test_ports_are_extracted_as_the_ebpf_program_does(packet: IPv4, ports: tuple[int, int]) -> None:
    """Ports from 4 bytes, ICMP type/code from 2: otherwise kernel keys would differ."""
    frame = Ethernet(1, 2, ETH_TYPE_IPV4, packet).build()
    m = FlowMatch.from_frame(None, frame)
    assert m == FlowMatch.from_packet(None, Ethernet.parse(frame))
    assert (m.tp_src, m.tp_dst) == ports


@pytest.mark.parametrize("cut", [0, 13, 17, 30, 40, 53])
def test_malformed_frames_raise_packet_error(cut: int) -> None:
    with pytest.raises(PacketError):
        FlowMatch.from_frame(None, TCP_SYN[:cut])


@pytest.mark.parametrize("name", FIELD_NAMES)
def test_reading_a_field_records_it_and_its_prerequisites(name: str) -> None:
    m = tcp_match()
    value = getattr(m, name)
    assert value == m.original()[name]
    assert m.mask == RECORDS[name]


def test_writes_do_not_widen_the_mask_but_are_recorded_as_rewrites() -> None:
    m = tcp_match()
    m.set_eth_dst(0x0200000000FF)
    m.set_ip_ttl(63)
    m.set_tp_dst(2222)
    assert m.mask == Field(0)
    assert m.modified == Field.ETH_DST | Field.IP_TTL | Field.TP_DST
    assert m.rewrites() == {Field.ETH_DST: 0x0200000000FF, Field.IP_TTL: 63, Field.TP_DST: 2222}
    # A rewritten value comes from the simulation: reading it depends on nothing.
    assert (m.eth_dst, m.ip_ttl, m.tp_dst) == (0x0200000000FF, 63, 2222)
    assert m.mask == Field(0)


def test_ttl_decrement_records_the_read_before_the_write() -> None:
    m = tcp_match()
    m.set_ip_ttl(m.ip_ttl - 1)
    assert m.mask == Field.IP_TTL | Field.ETH_TYPE
    assert m.rewrites() == {Field.IP_TTL: 63}
    assert m.masked_key() == (ETH_TYPE_IPV4, 64)  # keys use the value the packet came with


def test_ttl_above_records_a_bound_when_yes_and_the_field_when_no() -> None:
    m = tcp_match()  # TTL 64
    assert m.ip_ttl_above(1)
    assert m.mask == Field.ETH_TYPE and m.ttl_floor == 1
    m.decrement_ip_ttl()
    assert m.rewrites() == {Field.IP_TTL: 63} and m.mask == Field.ETH_TYPE
    # A second router asks of the rewritten TTL: on arrival it had to be above 2.
    branch = m.copy()
    assert branch.ip_ttl_above(1)
    assert m.ttl_floor == branch.ttl_floor == 2, "one bound, shared like the mask"
    assert "ip_ttl>2" in repr(m)
    # A "no" decided on the exact value: the field is keyed, and the bound says no more.
    assert not branch.ip_ttl_above(63)
    assert m.mask == Field.ETH_TYPE | Field.IP_TTL and m.ttl_floor == 0
    assert m.masked_key() == (ETH_TYPE_IPV4, 64)


@pytest.mark.parametrize("ttl", [0, 1])
def test_ttl_not_above_keys_the_ttl(ttl: int) -> None:
    m = FlowMatch.from_packet(
        PORT, Ethernet(1, 2, ETH_TYPE_IPV4, IPv4(1, 2, 6, Tcp(1, 2), ttl=ttl))
    )
    assert not m.ip_ttl_above(1)
    assert m.mask == RECORDS["ip_ttl"] and m.ttl_floor == 0


def test_ttl_bound_survives_merge_pickle_and_counts_in_equality() -> None:
    a, b = tcp_match(), tcp_match()
    assert b.ip_ttl_above(5)
    assert a != b
    a.merge_mask(b)
    assert a.ttl_floor == 5 and a == b
    assert pickle.loads(pickle.dumps(a)).ttl_floor == 5


def test_writing_back_the_original_value_is_no_rewrite() -> None:
    m = tcp_match()
    m.set_ip_src(ip_from_str("10.9.9.9"))
    m.set_ip_src(ip_from_str("192.168.0.10"))
    assert m.modified == Field.IP_SRC
    assert m.rewrites() == {}


@pytest.mark.parametrize("name", SETTABLE)
def test_setters_refuse_out_of_range_values(name: str) -> None:
    m = tcp_match()
    setter = getattr(m, f"set_{name}")
    for bad in (-1, 1 << 48, "1"):
        with pytest.raises(PacketError):
            setter(bad)
    assert m.modified == Field(0)


def test_copies_share_one_mask_but_keep_their_own_values() -> None:
    m = tcp_match()
    assert m.eth_dst
    left, right = m.copy(), m.copy()
    left.set_eth_dst(1)
    assert left.ip_dst
    right.set_eth_dst(2)
    assert right.tp_dst
    grandchild = right.copy()
    assert grandchild.vlan_id == 0
    expected = Field.ETH_DST | RECORDS["ip_dst"] | RECORDS["tp_dst"] | Field.VLAN_ID
    for branch in (m, left, right, grandchild):
        assert branch.mask == expected
    assert (left.rewrites(), right.rewrites()) == ({Field.ETH_DST: 1}, {Field.ETH_DST: 2})
    assert m.rewrites() == {} and grandchild.rewrites() == {Field.ETH_DST: 2}


def test_merge_and_record() -> None:
    a, b = tcp_match(), tcp_match()
    assert b.ip_src
    a.merge_mask(b)
    a.record(Field.IN_PORT)
    assert a.mask == RECORDS["ip_src"] | Field.IN_PORT
    assert b.mask == RECORDS["ip_src"]


def test_masked_key_and_matches() -> None:
    flow = tcp_match()
    assert flow.in_port == PORT and flow.tp_dst == 22
    assert flow.masked_key() == (PORT, ETH_TYPE_IPV4, 6, 0, 22)
    other_source = IPv4(ip_from_str("192.168.0.77"), ip_from_str("192.168.0.20"), 6, Tcp(999, 22))
    packet = FlowMatch.from_packet(PORT, Ethernet(5, 6, ETH_TYPE_IPV4, other_source))
    assert flow.matches(packet)
    assert packet.masked_key(flow.mask) == flow.masked_key()
    assert packet.mask == Field(0)  # looking a packet up records nothing on it
    elsewhere = FlowMatch.from_packet("another-port", Ethernet(5, 6, ETH_TYPE_IPV4, other_source))
    assert not flow.matches(elsewhere)


@given(ethernets(), ethernets(), st.integers(0, int(ALL_FIELDS)))
def test_matches_iff_every_read_field_is_equal(a: Ethernet, b: Ethernet, bits: int) -> None:
    flow = FlowMatch.from_packet("p", a)
    packet = FlowMatch.from_packet("p", b)
    for name in FIELD_NAMES:
        if bits & RECORDS[name] == RECORDS[name] and bits & (1 << FIELD_NAMES.index(name)):
            getattr(flow, name)
    mask = flow.mask
    expected = all(
        flow.original()[n] == packet.original()[n]
        for i, n in enumerate(FIELD_NAMES)
        if mask & (1 << i)
    )
    assert flow.matches(packet) == expected
    assert (packet.masked_key(mask) == flow.masked_key()) == expected
    assert flow.matches(FlowMatch.from_packet("p", a))


@given(ethernets(), st.lists(st.sampled_from(SETTABLE), max_size=5))
def test_rewrites_never_change_keys(frame: Ethernet, written: list[str]) -> None:
    m = FlowMatch.from_packet("p", frame)
    for name in FIELD_NAMES:
        getattr(m, name)
    key = m.masked_key()
    for name in written:
        getattr(m, f"set_{name}")(0)
    assert m.masked_key() == key
    assert m.mask == ALL_FIELDS


def test_pickle_keeps_values_mask_rewrites_and_sharing() -> None:
    m = tcp_match()
    assert m.tp_src
    branch = m.copy()
    branch.set_ip_dst(7)
    m2, branch2 = pickle.loads(pickle.dumps((m, branch)))
    assert (m2, branch2) == (m, branch)
    assert branch2.rewrites() == {Field.IP_DST: 7}
    assert branch2.ip_proto == 6
    assert m2.mask == branch2.mask == RECORDS["tp_src"]  # still one shared mask


def test_equality_and_repr() -> None:
    a, b = tcp_match(), tcp_match()
    assert a == b
    assert a.eth_src
    assert a != b
    text = repr(a)
    assert "ip_src=192.168.0.10" in text and "eth_src=02:00:00:00:00:0a" in text
    assert "mask=eth_src" in text
    with pytest.raises(TypeError):
        hash(a)


def test_the_icmp_echo_id_is_a_key_field_read_like_a_port() -> None:
    m = FlowMatch.from_frame(PORT, ICMP_ECHO)
    assert FlowMatch.from_packet(PORT, Ethernet.parse(ICMP_ECHO)).icmp_id == 0x1234
    assert m.masked_key(ALL_FIELDS)[13] == 0x1234 and m.mask == Field(0)
    copy = m.copy()
    assert copy.icmp_id == 0x1234
    # The id means nothing without the type: both join the one shared mask.
    assert m.mask == Field.ICMP_ID | Field.TP_SRC | TP_NEEDS
    m.set_icmp_id(0x4321)
    assert m.icmp_id == 0x4321 and m.rewrites() == {Field.ICMP_ID: 0x4321}
    assert m.masked_key(Field.ICMP_ID) == (0x1234,)  # keys keep the arrival value
    assert m.arrival(Field.ICMP_ID) == (0x1234,)
    other = FlowMatch.from_frame(PORT, TCP_SYN)
    assert other.icmp_id == 0  # not an echo
    with pytest.raises(PacketError):
        m.set_icmp_id(1 << 16)


def test_arrival_values_are_recorded_even_after_a_rewrite() -> None:
    m = FlowMatch.from_frame(PORT, TCP_SYN)
    src = m.original()["ip_src"]
    m.set_ip_src(ip_from_str("192.0.2.1"))
    assert m.ip_src == ip_from_str("192.0.2.1") and Field.IP_SRC not in m.mask
    assert m.arrival(Field.IP_SRC | Field.TP_DST) == (src, m.original()["tp_dst"])
    assert m.mask == Field.IP_SRC | Field.TP_DST | TP_NEEDS
