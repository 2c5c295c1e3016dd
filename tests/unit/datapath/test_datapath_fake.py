"""The datapath interface through the fake: megaflow semantics and action execution."""

from __future__ import annotations

import pytest

from support.frames import IP2, MAC1, MAC2, arp_request, tcp, udp
from tessera.datapath.base import (
    DecTtl,
    Drop,
    Flow,
    Match,
    Miss,
    Output,
    OutputTunnel,
    SetEthDst,
    SetEthSrc,
    ToUserspace,
    action_from_json,
    action_to_json,
    packet_key,
)
from tessera.datapath.fake import FakeDatapath, FakeFabric
from tessera.packet import Ethernet, IPv4, Udp
from tessera.packet.addr import ip_from_str, mac_from_str


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dp() -> FakeDatapath:
    d = FakeDatapath(clock=Clock())
    d.start()
    d.add_port(1, "vm1", tunnel_key=101)
    d.add_port(2, "vm2", tunnel_key=102)
    d.add_port(3, "vm3", tunnel_key=103)
    return d


def test_a_packet_without_a_flow_is_a_miss_with_its_port(dp: FakeDatapath) -> None:
    frame = udp()
    dp.receive(1, frame)
    assert dp.recv_misses(0) == [Miss(1, frame)]
    assert dp.take_sent() == []


def test_a_megaflow_serves_every_packet_agreeing_on_its_masked_fields(dp: FakeDatapath) -> None:
    dp.install(Flow(Match.of(in_port=1, eth_dst=MAC2), (Output(2),)))
    dp.receive(1, udp(1000, 2000))
    dp.receive(1, udp(3000, 4000))  # other ports: not in the mask, same flow
    dp.receive(2, udp())  # another in_port: a miss
    assert [s.port for s in dp.take_sent()] == [2, 2]
    assert [m.port for m in dp.recv_misses(0)] == [2]
    stats = dp.stats(Match.of(in_port=1, eth_dst=MAC2))
    assert stats is not None and stats.packets == 2 and stats.last_used == 100.0


def test_the_first_matching_mask_wins_in_install_order(dp: FakeDatapath) -> None:
    dp.install(Flow(Match.of(in_port=1, eth_dst=MAC2), (Output(2),)))
    dp.install(Flow(Match.of(in_port=1, tp_dst=2000), (Output(3),)))
    dp.receive(1, udp(1000, 2000))
    assert [s.port for s in dp.take_sent()] == [2]


def test_rewrites_apply_before_each_output_and_ttl_checksum_stays_valid(
    dp: FakeDatapath,
) -> None:
    new_src, new_dst = mac_from_str("02:aa:00:00:00:01"), mac_from_str("02:bb:00:00:00:02")
    actions = (SetEthSrc(new_src), SetEthDst(new_dst), DecTtl(1), Output(2), Output(3))
    dp.install(Flow(Match.of(in_port=1), actions))
    dp.receive(1, udp(ttl=64))
    sent = dp.take_sent()
    assert [s.port for s in sent] == [2, 3]
    for s in sent:
        eth = Ethernet.parse(s.frame)
        assert (eth.src, eth.dst) == (new_src, new_dst)
        assert isinstance(eth.payload, IPv4)
        assert eth.payload.ttl == 63
        # Re-building recomputes the checksum: the incremental update must agree.
        assert s.frame == eth.build()


def test_ttl_that_would_reach_zero_goes_to_the_agent(dp: FakeDatapath) -> None:
    dp.install(Flow(Match.of(in_port=1), (DecTtl(1), Output(2))))
    dp.receive(1, udp(ttl=1))
    assert dp.take_sent() == []
    assert [m.port for m in dp.recv_misses(0)] == [1]


def test_drop_userspace_and_empty_actions(dp: FakeDatapath) -> None:
    dp.install(Flow(Match.of(in_port=1), (Drop(),)))
    dp.install(Flow(Match.of(in_port=2), ()))
    dp.install(Flow(Match.of(in_port=3), (ToUserspace(),)))
    for port in (1, 2, 3):
        dp.receive(port, udp())
    assert dp.take_sent() == []
    assert [m.port for m in dp.recv_misses(0)] == [3]


def test_reinject_runs_the_table_again_and_never_loops(dp: FakeDatapath) -> None:
    frame = udp()
    dp.receive(1, frame)
    (miss,) = dp.recv_misses(0)
    dp.reinject(miss)  # still no flow: dropped, not a second miss
    assert dp.recv_misses(0) == [] and dp.take_sent() == []
    dp.install(Flow(Match.of(in_port=1), (Output(2),)))
    dp.reinject(miss)
    assert [s.port for s in dp.take_sent()] == [2]


def test_delete_and_dump(dp: FakeDatapath) -> None:
    m1, m2 = Match.of(in_port=1), Match.of(in_port=2, ip_dst="10.0.0.2")
    dp.install(Flow(m1, (Output(2),)))
    dp.install(Flow(m2, (Output(1),)))
    assert set(dp.dump()) == {m1, m2}
    assert dp.delete(m1) and not dp.delete(m1)
    assert set(dp.dump()) == {m2}
    dp.receive(1, udp())
    assert dp.take_sent() == [] and len(dp.recv_misses(0)) == 1


def test_tunnel_output_is_delivered_by_vni_on_the_remote_host() -> None:
    fabric = FakeFabric()
    a = FakeDatapath(fabric=fabric, underlay_ip=ip_from_str("198.18.0.1"))
    b = FakeDatapath(fabric=fabric, underlay_ip=ip_from_str("198.18.0.2"))
    a.add_port(1, "vm1", 11)
    b.add_port(7, "vm2", 22)
    a.install(Flow(Match.of(in_port=1), (OutputTunnel(22, ip_from_str("198.18.0.2")),)))
    a.receive(1, udp())
    (out,) = a.take_sent()
    assert out.vni == 22
    assert [s.port for s in b.take_sent()] == [7]


def test_execute_sends_without_installing(dp: FakeDatapath) -> None:
    dp.execute(arp_request(), [Output(3)])
    assert [s.port for s in dp.take_sent()] == [3]
    assert dp.dump() == {}


def test_match_values_outside_the_mask_are_refused() -> None:
    with pytest.raises(ValueError):
        Match(0b1, (1, 5, *([0] * 11)))


def test_match_text_and_covers() -> None:
    m = Match.of(in_port=1, eth_dst=MAC2, ip_dst=IP2)
    assert m.fields() == {"in_port": 1, "eth_dst": "02:00:00:00:00:02", "ip_dst": "10.0.0.2"}
    assert m.covers(packet_key(1, udp()))
    assert not m.covers(packet_key(2, udp()))
    assert not m.covers(packet_key(1, udp(dst=MAC1)))


def test_action_json_round_trips() -> None:
    actions = [
        SetEthSrc(MAC1), SetEthDst(MAC2), DecTtl(2), Output(4), OutputTunnel(9, IP2), Drop(),
        ToUserspace(),
    ]  # fmt: skip
    assert [action_from_json(action_to_json(a)) for a in actions] == actions


def test_packet_key_follows_the_kernel_extraction() -> None:
    key = packet_key(5, tcp())
    names = ("in_port", "ip_proto", "tp_src", "tp_dst")
    assert dict(zip(names, (key[0], key[7], key[11], key[12]), strict=True)) == {
        "in_port": 5, "ip_proto": 6, "tp_src": 40000, "tp_dst": 5201,
    }  # fmt: skip
    arp = packet_key(1, arp_request())
    assert arp[4] == 0x0806 and arp[7] == 1  # opcode's low byte, as the kernel reads it


def test_execute_builds_udp_correctly_after_rewrites(dp: FakeDatapath) -> None:
    frame = Ethernet(MAC2, MAC1, 0x0800, IPv4(1, 2, 17, Udp(1, 2, b"abc"))).build()
    dp.execute(frame, [SetEthDst(MAC1), Output(1)])
    (sent,) = dp.take_sent()
    assert Ethernet.parse(sent.frame).dst == MAC1
