"""The connection table: lookups both ways, NAT return keys, expiry that follows the
kernel flows, FIN/RST, tags; and the table kept on disk across a restart."""

from __future__ import annotations

import json
from collections.abc import Hashable
from pathlib import Path

from tessera.agent.flowstate import persist
from tessera.agent.flowstate.entry import PROTO_ICMP, PROTO_TCP, PROTO_UDP, ConnKey, StateEntry
from tessera.agent.flowstate.table import TCP_CLOSING_TIMEOUT, TCP_FIN, TCP_RST, ConnTable, key_tag
from tessera.packet.addr import ip_from_str as ip

ZONE = "7f3c1a52-0000-4000-8000-000000000001"
VM = ip("10.0.0.5")
SERVER = ip("203.0.113.10")
PUBLIC = ip("198.51.100.1")


def tcp(sport: int = 40000, dport: int = 80) -> ConnKey:
    return ConnKey(PROTO_TCP, VM, SERVER, sport, dport, ZONE)


def ct(key: ConnKey, timeout: float = 60.0) -> StateEntry:
    return StateEntry("conntrack", key, created=0.0, expiry=timeout)


def test_a_reply_is_found_by_the_reversed_key_and_a_later_packet_by_the_key() -> None:
    table = ConnTable()
    key = tcp()
    table.add(ct(key), now=0.0)
    assert table.lookup(key) == ct(key)
    assert table.lookup_return(key.reversed()) == ct(key)
    assert table.lookup_return(key) is None  # the first direction is not a reply
    assert table.lookup(key.reversed()) is None
    assert key.reversed().reversed() == key
    other_zone = ConnKey(PROTO_TCP, SERVER, VM, 80, 40000, "another-device")
    assert table.lookup_return(other_zone) is None  # state is per tracking device


def test_nat_return_keys_are_addressed_to_the_translation() -> None:
    snat = StateEntry("nat", tcp(), nat_ip=PUBLIC, nat_port=61000, nat_side="src")
    assert snat.return_key() == ConnKey(PROTO_TCP, SERVER, PUBLIC, 80, 61000, ZONE)
    dnat = StateEntry(
        "nat", ConnKey(PROTO_TCP, SERVER, PUBLIC, 5555, 80, ZONE), nat_ip=VM, nat_port=8080,
        nat_side="dst",
    )  # fmt: skip
    assert dnat.return_key() == ConnKey(PROTO_TCP, VM, SERVER, 8080, 5555, ZONE)
    floating = StateEntry("nat", tcp(), nat_ip=PUBLIC, nat_side="src")  # 1:1, port kept
    assert floating.return_key() == ConnKey(PROTO_TCP, SERVER, PUBLIC, 80, 40000, ZONE)
    echo = StateEntry(
        "nat", ConnKey(PROTO_ICMP, VM, SERVER, 7, 7, ZONE), nat_ip=PUBLIC, nat_port=900
    )
    assert echo.return_key() == ConnKey(PROTO_ICMP, SERVER, PUBLIC, 900, 900, ZONE)
    table = ConnTable()
    table.add(snat, now=0.0)
    assert table.lookup_return(snat.return_key()) == snat
    assert table.lookup_return(tcp().reversed()) is None  # untranslated reply: not ours
    assert snat.translation() == "src→198.51.100.1:61000"


def test_an_entry_expires_when_idle_but_never_while_its_flows_are_used() -> None:
    table = ConnTable()
    key = tcp()
    table.add(ct(key, timeout=30.0), now=0.0, flows=["flow-a"])
    table.attach_flow(key.reversed(), "flow-b")  # the reply's flow, found by return key
    used: dict[Hashable, float | None] = {"flow-a": None, "flow-b": 0.0}
    for t in range(10, 500, 10):  # the reply flow forwards in the kernel all along
        used["flow-b"] = float(t)
        assert table.sweep(float(t), used.get) == set()
    assert table.lookup(key) is not None
    # The flows stop: 30 s after their last use the entry goes, with both keys' tags.
    assert table.sweep(520.0, used.get) == set()
    tags = table.sweep(521.0, used.get)
    assert tags == {key_tag(key), key_tag(key.reversed())}
    assert table.lookup(key) is None and table.lookup_return(key.reversed()) is None
    assert len(table) == 0


def test_a_removed_flow_no_longer_keeps_an_entry_alive() -> None:
    table = ConnTable()
    key = tcp()
    table.add(ct(key, timeout=5.0), now=0.0, flows=["f"])
    table.detach_flow("f")
    assert table.sweep(6.0, lambda m: 6.0) != set()


def test_fin_or_rst_shortens_the_timeout_and_a_touch_extends_life() -> None:
    table = ConnTable()
    a, b = tcp(1), tcp(2)
    table.add(ct(a, timeout=600.0), now=0.0)
    table.add(ct(b, timeout=600.0), now=0.0)
    table.note_tcp_flags(a.reversed(), TCP_FIN, now=100.0)  # the server closes
    table.note_tcp_flags(b, TCP_RST, now=100.0)
    table.note_tcp_flags(b, 0x10, now=100.0)  # an ACK afterwards does not lengthen it
    assert table.sweep(100.0 + TCP_CLOSING_TIMEOUT - 0.5, lambda m: None) == set()
    assert len(table.sweep(100.0 + TCP_CLOSING_TIMEOUT + 0.5, lambda m: None)) == 4
    assert len(table) == 0
    assert not table.shorten(a, 1.0)  # gone: nothing to shorten


def test_tags_name_both_keys_and_a_replaced_entry_invalidates_the_old_one() -> None:
    table = ConnTable()
    key = tcp()
    first = table.add(ct(key), now=0.0)
    assert first == {key_tag(key), key_tag(key.reversed())}
    assert key_tag(key).startswith(f"ct:{ZONE}:6:10.0.0.5:40000:203.0.113.10:80")
    nat = StateEntry("nat", key, nat_ip=PUBLIC, nat_port=61000)
    again = table.add(nat, now=1.0)
    assert key_tag(key.reversed()) in again  # the old return key is forgotten
    assert table.lookup_return(key.reversed()) is None
    assert table.lookup_return(nat.return_key()) == nat
    assert table.remove(key) == {key_tag(key), key_tag(nat.return_key())}
    assert table.remove(key) == set()


def test_the_table_survives_a_restart_aged_by_the_downtime(tmp_path: Path) -> None:
    path = tmp_path / "state" / persist.FILE_NAME
    table = ConnTable()
    live = ct(tcp(1), timeout=600.0)
    short = ct(ConnKey(PROTO_UDP, VM, SERVER, 5000, 53, ZONE), timeout=12.0)
    nat = StateEntry("nat", tcp(2), nat_ip=PUBLIC, nat_port=61001, expiry=600.0)
    for e in (live, short, nat):
        table.add(e, now=1000.0)
    table.note_tcp_flags(tcp(2), TCP_FIN, now=1009.5)
    assert persist.save(path, table, now=1010.0, wall_now=5_000.0) == 3
    restarted = ConnTable()
    # 5 s later (on another monotonic clock): the UDP entry (idle 10 + 5 > 12) is gone.
    assert persist.load(path, restarted, now=3.0, wall_now=5_005.0) == 2
    assert restarted.lookup(tcp(1)) == live.stamped(3.0)
    assert restarted.lookup_return(nat.return_key()) is not None
    (kept_nat,) = [t for t in restarted.snapshot() if t.entry.kind == "nat"]
    assert kept_nat.timeout == TCP_CLOSING_TIMEOUT  # the FIN's short timeout is kept
    assert restarted.lookup(short.key) is None
    # Idle time carries over: the TCP entry (idle 15 s) expires 585 s later, not 600.
    assert restarted.sweep(3.0 + 584.0, lambda m: None) == {
        key_tag(nat.key),
        key_tag(nat.return_key()),
    }  # the closing NAT entry went long before
    assert restarted.sweep(3.0 + 586.0, lambda m: None) != set()


def test_a_damaged_state_file_is_ignored_or_its_bad_entries_skipped(tmp_path: Path) -> None:
    path = tmp_path / persist.FILE_NAME
    table = ConnTable()
    assert persist.load(path, table, now=0.0, wall_now=0.0) == 0  # no file yet
    path.write_text("{not json")
    assert persist.load(path, table, now=0.0, wall_now=0.0) == 0
    good = ConnTable()
    good.add(ct(tcp(1)), now=0.0)
    good.add(ct(tcp(2)), now=0.0)
    persist.save(path, good, now=0.0, wall_now=0.0)
    data = json.loads(path.read_text())
    data["entries"][0]["record"] = "AAAA"  # valid base64, not a record
    path.write_text(json.dumps(data))
    assert persist.load(path, table, now=0.0, wall_now=0.0) == 1
    assert len(table) == 1
