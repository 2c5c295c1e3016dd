"""A load balancer's sticky entries in the agent's table and exchange: their own long
timeout, untouched by their connections' FIN or RST, and sent in messages of their own."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from tessera.agent.flowstate.entry import TCP_FIN, TCP_RST, entry_timeout, tag_of
from tessera.agent.flowstate.service import FlowStateService
from tessera.agent.flowstate.table import ConnTable
from tessera.agent.flowstate.wire import Update
from tessera.agent.metrics import AgentMetrics
from tessera.nsdb.memory import MemoryNsdb, MemoryStore
from tessera.packet.addr import ip_from_str as ip
from tessera.simulation.flowstate import (
    STICKY_TIMEOUT,
    NatBinding,
    NatEntry,
    NatKey,
    nat_return,
)

LB = "7f3c1a52-0000-4000-8000-00000000000b"
CLIENT, VIP, MEMBER = ip("203.0.113.9"), ip("203.0.113.100"), ip("10.0.0.5")
PROTO_TCP = 6


def entries(sport: int = 40000) -> tuple[NatEntry, NatEntry, NatEntry]:
    fwd = NatEntry(
        NatKey("fwd_dnat", PROTO_TCP, CLIENT, sport, VIP, 80, LB), NatBinding(MEMBER, 8080)
    )
    sticky = NatEntry(
        NatKey("sticky_dnat", PROTO_TCP, CLIENT, 0, VIP, 80, LB), NatBinding(MEMBER, 8080)
    )
    return fwd, nat_return(fwd.key, fwd.binding), sticky


def test_a_sticky_entry_outlives_its_connections_and_their_close() -> None:
    fwd, rev, sticky = entries()
    assert entry_timeout(sticky) == STICKY_TIMEOUT and entry_timeout(fwd) < STICKY_TIMEOUT
    table = ConnTable()
    for e in (fwd, rev, sticky):  # as the agent tracks a new sticky connection's state
        table.add(e, now=0.0, flows=["flow"])
    # The connection's flow saw FIN, then RST: its bindings go soon, the sticky entry stays.
    closed = TCP_FIN | TCP_RST

    def flags(match: Hashable) -> int:
        return closed

    table.sweep(10.0, lambda m: 10.0, flags)
    timeouts = {tag_of(t.entry.key).split(":")[2]: t.timeout for t in table.snapshot()}
    assert timeouts["fwd_dnat"] < 10 and timeouts["rev_dnat"] < 10
    assert timeouts["sticky_dnat"] == STICKY_TIMEOUT
    table.sweep(100.0, lambda m: 10.0, flags)
    assert [t.entry for t in table.snapshot()] == [sticky]
    # An hour after the last use of any flow of the client, it goes too.
    assert table.sweep(10.0 + STICKY_TIMEOUT - 1, lambda m: 10.0) == set()
    assert len(table.sweep(10.0 + STICKY_TIMEOUT + 1, lambda m: 10.0)) == 1
    assert len(table) == 0


class Recorder:
    """Stands for the UDP sender: what each `send` carried."""

    def __init__(self) -> None:
        self.sends: list[list[Update]] = []

    def send(self, hosts: Iterable[str], updates: Iterable[Update]) -> int:
        self.sends.append(list(updates))
        return 1

    def close(self) -> None:
        pass


def test_sticky_entries_travel_with_their_timeout_in_messages_of_their_own() -> None:
    nsdb = MemoryNsdb(MemoryStore())
    try:
        service = FlowStateService("7f3c1a52-0000-4000-8000-000000000009", nsdb,
                                   AgentMetrics(), lambda: [])  # fmt: skip
        recorder = Recorder()
        service.sender = recorder  # type: ignore[assignment]
        fwd, rev, sticky = entries()
        service.track([fwd, rev, sticky])
        assert service.share(["198.18.0.2"], [fwd, rev, sticky]) == 2
        plain, alone = recorder.sends
        assert [e for _op, e, _t in plain] == [fwd, rev]
        assert alone == [("add", sticky, STICKY_TIMEOUT)]
        # The peers are remembered: they will hear of its removal.
        (tracked,) = [t for t in service.table.snapshot() if t.entry == sticky]
        assert tracked.shared == {"198.18.0.2"}
    finally:
        nsdb.close()
