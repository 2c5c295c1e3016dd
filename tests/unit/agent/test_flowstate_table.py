"""The connection table over the simulation's own entries: the live view a simulation
reads, expiry that follows the kernel flows, FIN/RST, one tag per entry; and the table
kept on disk across a restart."""

from __future__ import annotations

import json
from collections.abc import Hashable
from pathlib import Path

from tessera.agent.flowstate import persist
from tessera.agent.flowstate.entry import (
    PROTO_TCP,
    PROTO_UDP,
    TCP_FIN,
    TCP_FIN_TIMEOUT,
    TCP_RST,
    TCP_RST_TIMEOUT,
    tag_of,
)
from tessera.agent.flowstate.service import apply_updates
from tessera.agent.flowstate.table import ConnTable
from tessera.agent.metrics import AgentMetrics
from tessera.datapath.base import FlowStats
from tessera.packet.addr import ip_from_str as ip
from tessera.simulation.flowstate import (
    ConnKey,
    ConntrackEntry,
    FlowStateEntry,
    NatBinding,
    NatEntry,
    NatKey,
    nat_return,
)
from tessera.simulation.tags import conntrack_tag, nat_tag

ZONE = "7f3c1a52-0000-4000-8000-000000000001"
VM = ip("10.0.0.5")
SERVER = ip("203.0.113.10")
PUBLIC = ip("198.51.100.1")


def tcp(sport: int = 40000, dport: int = 80) -> ConnKey:
    return ConnKey(PROTO_TCP, VM, SERVER, sport, dport, ZONE)


def ct(key: ConnKey) -> ConntrackEntry:
    return ConntrackEntry(key)


def snat(sport: int = 40000) -> tuple[NatEntry, NatEntry]:
    fwd = NatEntry(
        NatKey("fwd_snat", PROTO_TCP, VM, sport, SERVER, 80, ZONE), NatBinding(PUBLIC, 61000)
    )
    return fwd, nat_return(fwd.key, fwd.binding)


def test_the_view_follows_the_table_without_a_copy() -> None:
    table = ConnTable()
    view = table.view
    key = tcp()
    assert key not in view.conntrack
    table.add(ct(key), now=0.0)
    assert key in view.conntrack and key.reversed() not in view.conntrack
    fwd, rev = snat()
    table.add(fwd, now=0.0)
    table.add(rev, now=0.0)
    assert view.nat.get(rev.key) == NatBinding(VM, 40000)  # the reply is translated back
    assert table.view is view  # one view for the table's life
    table.remove(key)
    table.remove(rev.key)
    assert key not in view.conntrack and rev.key not in view.nat
    assert table.lookup(fwd.key) == fwd and table.lookup_return(key.reversed()) is None


def test_an_entry_expires_when_idle_but_never_while_its_flows_are_used() -> None:
    table = ConnTable()
    key = tcp()
    table.add(ct(key), now=0.0, flows=["flow-a"], timeout=30.0)
    table.attach_flow(key, "flow-b")  # the reply's flow read it
    used: dict[Hashable, float | None] = {"flow-a": None, "flow-b": 0.0}
    for t in range(10, 500, 10):  # the reply flow forwards in the kernel all along
        used["flow-b"] = float(t)
        assert table.sweep(float(t), used.get) == set()
    assert table.lookup(key) is not None
    # The flows stop: 30 s after their last use the entry goes, with its tag.
    assert table.sweep(520.0, used.get) == set()
    assert table.sweep(521.0, used.get) == {conntrack_tag(key)}
    assert table.lookup(key) is None and key not in table.view.conntrack
    assert len(table) == 0


def test_a_removed_flow_no_longer_keeps_an_entry_alive() -> None:
    table = ConnTable()
    key = tcp()
    table.add(ct(key), now=0.0, flows=["f"], timeout=5.0)
    table.detach_flow("f")
    assert table.sweep(6.0, lambda m: 6.0) != set()


def test_fin_or_rst_shortens_the_timeout_and_a_touch_extends_life() -> None:
    table = ConnTable()
    a, b = tcp(1), tcp(2)
    table.add(ct(a), now=0.0, timeout=600.0)
    table.add(ct(b), now=0.0, timeout=600.0)
    table.note_tcp_flags(a.reversed(), TCP_FIN, now=100.0)  # the server closes
    table.note_tcp_flags(b, TCP_RST, now=100.0)
    table.note_tcp_flags(b, 0x10, now=100.0)  # an ACK afterwards does not lengthen it
    assert table.sweep(100.0 + TCP_RST_TIMEOUT - 0.5, lambda m: None) == set()
    assert table.sweep(100.0 + TCP_RST_TIMEOUT + 0.5, lambda m: None) == {conntrack_tag(b)}
    assert table.sweep(100.0 + TCP_FIN_TIMEOUT - 0.5, lambda m: None) == set()
    assert table.sweep(100.0 + TCP_FIN_TIMEOUT + 0.5, lambda m: None) == {conntrack_tag(a)}
    assert len(table) == 0
    assert not table.shorten(a, 1.0)  # gone: nothing to shorten


def test_one_tag_per_entry_the_simulation_s_and_a_rebinding_invalidates() -> None:
    table = ConnTable()
    removed: list[FlowStateEntry] = []
    table.on_remove = removed.append
    key = tcp()
    assert table.add(ct(key), now=0.0) == {conntrack_tag(key)}
    assert tag_of(key) == conntrack_tag(key)
    assert conntrack_tag(key) == f"ct:{ZONE}:6:10.0.0.5:40000:203.0.113.10:80"
    assert table.add(ct(key), now=1.0) == set()  # the same state again: nothing changes
    fwd, _rev = snat()
    assert table.add(fwd, now=0.0) == {nat_tag(fwd.key)}
    other = NatEntry(fwd.key, NatBinding(PUBLIC, 61001))
    assert table.add(other, now=1.0) == {nat_tag(fwd.key)}  # rebound: decided anew
    assert removed == [fwd]
    assert table.remove(fwd.key) == {nat_tag(fwd.key)}
    assert table.remove(fwd.key) == set()


def test_the_table_survives_a_restart_aged_by_the_downtime(tmp_path: Path) -> None:
    path = tmp_path / "state" / persist.FILE_NAME
    table = ConnTable()
    live = ct(tcp(1))
    short = ct(ConnKey(PROTO_UDP, VM, SERVER, 5000, 53, ZONE))
    fwd, rev = snat(2)
    table.add(live, now=1000.0, timeout=600.0)
    table.add(short, now=1000.0, timeout=12.0)
    table.add(fwd, now=1000.0, timeout=600.0)
    table.add(rev, now=1000.0, timeout=600.0)
    table.note_tcp_flags(tcp(1), TCP_RST, now=1000.0)  # no effect on the NAT entries
    table.shorten(rev.key, 10.0)
    table.touch(rev.key, 1009.5)
    assert persist.save(path, table, now=1010.0, wall_now=5_000.0) == 4
    restarted = ConnTable()
    # 5 s later (on another monotonic clock): the UDP entry (idle 10 + 5 > 12) is gone,
    # and so is the TCP conntrack entry whose RST shortened it (idle 15 s > 5 s).
    assert persist.load(path, restarted, now=3.0, wall_now=5_005.0) == 2
    assert restarted.lookup(fwd.key) == fwd and restarted.lookup(rev.key) == rev
    (kept_rev,) = [t for t in restarted.snapshot() if t.entry == rev]
    assert kept_rev.timeout == 10.0  # the short timeout is kept
    assert restarted.lookup(short.key) is None and restarted.lookup(live.key) is None
    assert rev.key in restarted.view.nat
    # Idle time carries over: the forward binding (idle 15 s) expires 585 s later.
    assert restarted.sweep(3.0 + 584.0, lambda m: None) == {nat_tag(rev.key)}
    assert restarted.sweep(3.0 + 586.0, lambda m: None) == {nat_tag(fwd.key)}


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


def test_a_connection_the_kernel_forwards_is_saved_as_active(tmp_path: Path) -> None:
    """The agent never sees the packets of an installed connection: what a sweep read
    from its flows is what the file must say, or a restart would drop it as idle."""
    table = ConnTable()
    table.add(ct(tcp()), now=0.0, flows=["f"], timeout=30.0)
    table.sweep(100.0, lambda m: 99.0)  # the flow forwarded a packet a second ago
    path = tmp_path / persist.FILE_NAME
    persist.save(path, table, now=100.0, wall_now=1000.0)
    restarted = ConnTable()
    assert persist.load(path, restarted, now=0.0, wall_now=1005.0) == 1
    # Removing the entry forgets its flows: a new entry with that flow is not kept alive
    # by the old one's bookkeeping.
    table.remove(tcp())
    table.add(ct(tcp(2)), now=100.0, timeout=5.0)
    table.detach_flow("f")
    assert table.sweep(106.0, lambda m: 106.0) != set()


def test_fin_or_rst_in_a_flow_s_stats_shortens_the_tcp_entries_it_carries() -> None:
    """The kernel forwards a connection's packets after the first: a sweep reads the TCP
    flags its flows saw (`FlowStats.tcp_flags`) along with their last use."""
    table = ConnTable()
    closing, reset, udp = tcp(1), tcp(2), ConnKey(PROTO_UDP, VM, SERVER, 5000, 53, ZONE)
    fwd, rev = snat(1)
    table.add(ct(closing), now=0.0, flows=["fin-flow"])
    table.add(fwd, now=0.0, flows=["fin-flow"])  # the NAT of the same connection
    table.add(ct(reset), now=0.0, flows=["rst-flow"])
    table.add(ct(udp), now=0.0, flows=["rst-flow"], timeout=60.0)  # flags mean nothing
    table.add(rev, now=0.0)
    flags = {"fin-flow": TCP_FIN | 0x10, "rst-flow": TCP_RST}
    used: dict[Hashable, float | None] = {"fin-flow": 10.0, "rst-flow": 10.0}
    assert table.sweep(10.0, used.get, lambda m: flags.get(m, 0)) == set()
    states = {t.entry.key: (t.timeout, t.tcp_flags) for t in table.snapshot()}
    assert states[closing] == states[fwd.key] == (TCP_FIN_TIMEOUT, TCP_FIN | 0x10)
    assert states[reset] == (TCP_RST_TIMEOUT, TCP_RST)
    assert states[udp] == (60.0, 0) and states[rev.key] == (600.0, 0)
    # The reset connection goes a few seconds after its last packet.
    assert table.sweep(10.0 + TCP_RST_TIMEOUT + 1, used.get) == {conntrack_tag(reset)}
    # A closing connection whose flow still forwards (the other side's last data, ACKs)
    # never expires, however long past its short timeout.
    for t in range(20, 400, 20):
        used["fin-flow"] = float(t)
        table.sweep(float(t), used.get)  # (the idle UDP entry goes meanwhile)
        assert table.lookup(closing) is not None and table.lookup(fwd.key) == fwd
    assert table.sweep(380.0 + TCP_FIN_TIMEOUT - 1, used.get) == set()
    assert table.sweep(380.0 + TCP_FIN_TIMEOUT + 1, used.get) == {
        conntrack_tag(closing),
        nat_tag(fwd.key),
    }
    assert [t.entry for t in table.snapshot()] == [rev]  # idle 441 s of its 600


def test_a_removal_from_the_owner_ends_only_its_own_copy_and_never_a_live_one() -> None:
    owner, other = "host-a", "host-b"
    table = ConnTable(released_timeout=5.0)
    idle, live, mine = ct(tcp(1)), ct(tcp(2)), ct(tcp(3))
    fwd, _rev = snat(4)
    table.add(idle, now=0.0, origin=owner)
    table.add(live, now=0.0, origin=owner, flows=["reply-flow"])
    table.add(mine, now=0.0)  # created here
    table.add(fwd, now=0.0, origin=owner)
    assert table.release(ct(tcp(9)), owner, now=1.0) == "unknown"
    assert table.release(idle, other, now=1.0) == "refused"  # not the sender's copy
    assert table.release(mine, owner, now=1.0) == "refused"  # ours, not a copy
    rebound = NatEntry(fwd.key, NatBinding(PUBLIC, 1))
    assert table.release(rebound, owner, now=1.0) == "refused"  # another binding
    assert table.take_released_tags() == set()
    assert table.release(idle, owner, now=1.0) == "dropped"  # no flow here: at once
    assert table.take_released_tags() == {conntrack_tag(idle.key)}
    assert table.lookup(idle.key) is None and table.lookup(fwd.key) == fwd
    # A copy a flow here still forwards stays while the flow does, then goes.
    assert table.release(live, owner, now=1.0) == "released"
    used: dict[Hashable, float | None] = {"reply-flow": 1.0}
    for t in range(3, 30, 3):
        used["reply-flow"] = float(t)
        assert table.sweep(float(t), used.get) == set()
    assert table.sweep(33.0, used.get) == {conntrack_tag(live.key)}
    # A released copy that its owner pushes again is a new connection: afresh.
    table.add(live, now=40.0, origin=owner, flows=["reply-flow"])
    assert table.release(live, owner, now=41.0) == "released"
    assert table.add(live, now=42.0, origin=owner) == {conntrack_tag(live.key)}
    (again,) = [t for t in table.snapshot() if t.entry == live]
    assert (again.timeout, again.released, again.flows) == (600.0, False, set())
    # Once created here, a pushed entry is ours: its pusher cannot withdraw it.
    table.add(fwd, now=40.0)
    assert table.release(fwd, owner, now=41.0) == "refused"


def test_a_released_copy_whose_flows_are_idle_goes_before_the_sweep() -> None:
    """`settle_released` judges the copies `release` kept, as the sweep would, at once:
    idle past the released timeout they go (their tags returned), in use they stay."""
    owner = "host-a"
    table = ConnTable(released_timeout=5.0)
    idle, live = ct(tcp(1)), ct(tcp(2))
    table.add(idle, now=0.0, origin=owner, flows=["idle-flow"])
    table.add(live, now=0.0, origin=owner, flows=["live-flow"])
    used: dict[Hashable, float | None] = {"idle-flow": 3.0, "live-flow": 9.5}
    assert not table.release_pending
    assert table.release(idle, owner, now=10.0) == "released"
    assert table.release(live, owner, now=10.0) == "released"
    assert table.release_pending
    assert table.settle_released(10.0, used.get) == {conntrack_tag(idle.key)}
    assert not table.release_pending
    assert table.lookup(idle.key) is None and table.lookup(live.key) == live
    assert table.settle_released(20.0, used.get) == set()  # nothing pending: the sweep's
    assert table.sweep(20.0, used.get) == {conntrack_tag(live.key)}


def test_flags_origin_and_pushed_hosts_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / persist.FILE_NAME
    table = ConnTable()
    table.add(ct(tcp(1)), now=0.0, shared=["198.18.0.2"])
    table.shared_with(tcp(1), ["198.18.0.3"])
    table.add(ct(tcp(2)), now=0.0, origin="host-a")
    table.note_tcp_flags(tcp(1), TCP_FIN, now=0.0)
    persist.save(path, table, now=1.0, wall_now=100.0)
    restarted = ConnTable()
    assert persist.load(path, restarted, now=0.0, wall_now=101.0) == 2
    got = {t.entry.key: (t.tcp_flags, t.origin, t.shared, t.timeout) for t in restarted.snapshot()}
    assert got[tcp(1)] == (TCP_FIN, None, {"198.18.0.2", "198.18.0.3"}, TCP_FIN_TIMEOUT)
    assert got[tcp(2)] == (0, "host-a", set(), 600.0)


def test_a_copy_s_first_fin_or_rst_is_handed_back_once_for_its_owner() -> None:
    table = ConnTable()
    copy, ours = ct(tcp(1)), ct(tcp(2))
    table.add(copy, now=0.0, origin="host-a", flows=["reply"])
    table.add(ours, now=0.0, flows=["fwd"], shared=["198.18.0.9"])
    flags = {"reply": TCP_RST, "fwd": TCP_FIN}
    _tags, _gone, closing = table.sweep_entries(1.0, lambda m: 1.0, lambda m: flags[m])
    assert [(t.entry, t.origin, t.tcp_flags) for t in closing] == [(copy, "host-a", TCP_RST)]
    assert table.sweep_entries(2.0, lambda m: 2.0, lambda m: flags[m])[2] == []  # not new
    # The owner's side: a notice from a host the entry was pushed to shortens it.
    assert table.note_close(ours, "198.18.0.7", TCP_RST) == "refused"  # not pushed there
    assert table.note_close(ours, "198.18.0.9", TCP_RST) == "noted"
    (t,) = [t for t in table.snapshot() if t.entry == ours]
    assert (t.tcp_flags, t.timeout) == (TCP_FIN | TCP_RST, TCP_RST_TIMEOUT)


def test_a_flow_invalidated_before_a_sweep_hands_over_its_flags_and_last_use() -> None:
    """A flow deleted between sweeps (its tag invalidated) would take the RST it saw
    with it: its entries read it first, and it stops keeping them alive."""
    table = ConnTable()
    copy, ours = ct(tcp(1)), ct(tcp(2))
    table.add(copy, now=0.0, origin="host-a", flows=["reply"])
    table.add(ours, now=0.0, flows=["fwd"])
    assert table.carries("reply") and not table.carries("other")
    table.flow_removed("reply", FlowStats(3, 180, 7.0, TCP_RST | 0x10))
    table.flow_removed("fwd", None)  # already gone from the datapath: nothing to read
    assert not table.carries("reply") and not table.carries("fwd")
    (c,) = [t for t in table.snapshot() if t.entry == copy]
    assert (c.last_seen, c.tcp_flags, c.timeout, c.flows) == (7.0, 0x14, TCP_RST_TIMEOUT, set())
    _tags, _gone, closing = table.sweep_entries(8.0, lambda m: None)
    assert [t.entry for t in closing] == [copy]  # the owner is told at the next sweep
    assert table.sweep(7.0 + TCP_RST_TIMEOUT + 1, lambda m: None) == {conntrack_tag(copy.key)}


def test_a_peer_cannot_rebind_a_key_this_host_owns() -> None:
    """A member pushing another binding for one of our NAT keys (forged or confused)
    would send our connection's replies elsewhere: refused and counted; the same entry
    again, or a key we do not own, is taken as before."""
    metrics = AgentMetrics()
    table = ConnTable()
    fwd, rev = snat(7)
    table.add(rev, now=0.0)  # created here
    forged = NatEntry(rev.key, NatBinding(VM, 41234))
    tags = apply_updates(table, metrics, "host-b", [("add", forged, 60.0)], now=1.0)
    assert tags == set() and table.lookup(rev.key) == rev
    assert metrics.registry.get_sample_value("tessera_agent_flowstate_conflicts_total") == 1.0
    apply_updates(table, metrics, "host-b", [("add", rev, 60.0), ("add", fwd, 60.0)], 2.0)
    assert table.lookup(rev.key) == rev and table.lookup(fwd.key) == fwd
    assert metrics.registry.get_sample_value("tessera_agent_flowstate_conflicts_total") == 1.0
    (ours,) = [t for t in table.snapshot() if t.entry == rev]
    assert ours.origin is None  # a peer's copy of our own entry does not make it theirs
