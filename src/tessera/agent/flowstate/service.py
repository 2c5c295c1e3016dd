"""The agent's flow-state service: the table, SNAT leases, the exchange and the file,
started and stopped with the agent and driven by its loop.

The upcall handler installs the state a simulation creates (`track`: the table, the
SNAT port reserved), attaches the flows that read or created it, and pushes it to the
egress and port-group hosts (`share`) before the first packet is reinjected; entries
received from peers land in the same table, their tags invalidated on the agent thread
(`drain_tags`). Simulations read the table through `view` and allocate SNAT ports
through `snat` (the `NatAllocator`). The table expires entries against the kernel
flows' last use and TCP flags at each sweep; SNAT leases are maintained; the table is
saved periodically and on stop and loaded at start; `tessera conntrack` reads `report`.

Removals: when an entry this host created expires (idle, or closed by FIN/RST; a port
unbound deletes its flows, so its connections go idle and follow), the hosts it was
pushed to get a removal record (`wire` op remove, in the same authenticated,
replay-checked messages) and end their copies (`ConnTable.release`: at once when no
flow there carries it, else as soon as those flows stop). Copies still age on their own
meanwhile, so a dead owner or a lost datagram leaves nothing behind for long. The
other way, a host whose flows see a copy's FIN or RST first tells the owner (op fin /
rst), whose own flows may never see it, and the owner shortens its entry as if they had.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tessera.agent.flowstate import persist
from tessera.agent.flowstate.durable import DurableFlowState
from tessera.agent.flowstate.entry import TCP_FIN, TCP_RST, entry_timeout, is_sticky
from tessera.agent.flowstate.report import conntrack_report
from tessera.agent.flowstate.snat import SnatAllocator
from tessera.agent.flowstate.table import ConnTable, LastUsed, Tracked
from tessera.agent.flowstate.transport import (
    PORT,
    FlowStateReceiver,
    FlowStateSender,
    zone_peer,
)
from tessera.agent.flowstate.wire import Op, Update
from tessera.agent.metrics import AgentMetrics
from tessera.model import TunnelZone
from tessera.nsdb.base import Nsdb
from tessera.simulation.flowstate import FlowStateEntry, FlowStateView, NatEntry, NatKey

log = logging.getLogger(__name__)


def apply_updates(
    table: ConnTable,
    metrics: AgentMetrics,
    sender: str,
    updates: Sequence[Update],
    now: float,
    address: str | None = None,
) -> set[str]:
    """What a peer's accepted message does to the table: adds become copies held for
    `sender` (never replacing a different entry of ours: counted, refused), removals
    end `sender`'s copies (`ConnTable.release`), fin/rst shorten our entries pushed to
    `sender`'s underlay `address` (`ConnTable.note_close`); the last two counted by
    result. Returns the tags to invalidate."""
    tags: set[str] = set()
    for op, entry, timeout in updates:
        if op == "add":
            if table.contradicts(entry):
                metrics.flowstate_conflicts.inc()
                continue
            tags |= table.add(entry, now, timeout=timeout, origin=sender)
        elif op == "remove":
            result = table.release(entry, sender, now)
            metrics.flowstate_removals.labels(result=result).inc()
        else:
            flags = TCP_RST if op == "rst" else TCP_FIN
            result = table.note_close(entry, address, flags) if address else "refused"
            metrics.flowstate_closes.labels(result=result).inc()
    return tags | table.take_released_tags()


class FlowStateService:
    def __init__(
        self,
        host_id: str,
        nsdb: Nsdb,
        metrics: AgentMetrics,
        zones: Callable[[], Iterable[TunnelZone]],
        *,
        underlay_ip: str | None = None,
        port: int | None = None,
        state_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        durable: DurableFlowState | None = None,
    ) -> None:
        """`port` None: no exchange with peers (tests, a host without an underlay);
        `state_file` None: nothing kept across restarts; `durable`: entries also kept in
        Cassandra (`--flow-state cassandra`, see `durable`)."""
        self.host_id = host_id
        self.metrics = metrics
        self.zones = zones
        self.clock = clock
        self.wall_clock = wall_clock
        self.state_file = state_file
        self.durable = durable
        self.table = ConnTable(on_miss=durable.want if durable is not None else None)
        if durable is not None:
            durable.on_found = self._found
        metrics.conntrack_entries.set_function(self.table.__len__)
        self.snat = SnatAllocator(nsdb, host_id, metrics, clock=clock, wall_clock=wall_clock)
        self.table.on_remove = self._removed
        self.receiver: FlowStateReceiver | None = None
        self.sender: FlowStateSender | None = None
        if port is not None and underlay_ip is not None:
            self.receiver = FlowStateReceiver(
                self.authorize, self._deliver, metrics, address=underlay_ip, port=port,
                clock=clock,
            )  # fmt: skip
            self.sender = FlowStateSender(host_id, metrics, address=underlay_ip, port=port)
        self._tags: collections.deque[set[str]] = collections.deque()
        self.on_received: Callable[[], None] | None = None  # state arrived (any thread)
        self._next_save = 0.0
        self._loaded = False  # never save over a file this run has not read
        self._save_lock = threading.Lock()  # one writer of the file at a time
        self._saver: threading.Thread | None = None
        self._unadopted: list[NatKey] = []  # restored SNAT bindings whose port is not held
        self._refound: collections.deque[NatKey] = collections.deque()  # ours, from Cassandra

    def start(self) -> None:
        local = False
        if self.state_file is not None:
            local = self.state_file.exists()
            n = persist.load(self.state_file, self.table, self.clock(), self.wall_clock())
            if n:
                log.info("restored %d connection entries from %s", n, self.state_file)
        if self.durable is not None:
            self._start_durable(restore=not local)
        if self.state_file is not None or self.durable is not None:
            # Restored dynamic SNAT ports are held again, or a new connection could be
            # given one of them; a block still held by our previous run's session is
            # retried at each sweep until that session ends.
            self._unadopted = [
                t.entry.key for t in self.table.snapshot()
                if isinstance(t.entry, NatEntry) and t.entry.key.kind == "rev_snat"
            ]  # fmt: skip
            self._adopt_restored()
        self._loaded = True
        self._next_save = self.clock() + persist.SAVE_INTERVAL
        if self.receiver is not None:
            try:
                self.receiver.start()
            except OSError as exc:  # forwarding still works; peers' state will not arrive
                log.error(
                    "flow-state receiver cannot bind %s:%d: %s",
                    self.receiver.address, self.receiver.port, exc,
                )  # fmt: skip

    def _start_durable(self, restore: bool) -> None:
        """Connect to Cassandra; with no local state, load this host's rows from it. A
        Cassandra that does not answer leaves the agent forwarding without it."""
        assert self.durable is not None
        try:
            self.durable.start()
            rows = self.durable.restore() if restore else []
        except Exception as exc:  # CassandraError, or the driver's own on a read
            log.error("flow state is not kept in Cassandra: %s", exc)
            self.durable.stop()
            return
        now = self.clock()
        for entry, timeout, remaining in rows:
            self.table.add(entry, now - max(0.0, timeout - remaining), timeout=timeout)
        if rows:
            log.info("restored %d connection entries from Cassandra", len(rows))

    def _found(self, entry: FlowStateEntry, timeout: float, remaining: float, owner: str) -> None:
        """On the durable reader's thread: an entry a simulation missed, found in
        Cassandra; installed like a peer's (a copy of `owner`'s, or ours again)."""
        if self.table.lookup(entry.key) is not None:
            return
        ours = owner == self.host_id
        now = self.clock()
        tags = self.table.add(
            entry, now - max(0.0, timeout - remaining), timeout=timeout,
            origin=None if ours else owner,
        )  # fmt: skip
        if ours and isinstance(entry, NatEntry) and entry.key.kind == "rev_snat":
            self._refound.append(entry.key)
        if tags:
            self._tags.append(tags)
            if self.on_received is not None:
                self.on_received()

    def stop(self) -> None:
        if self.durable is not None:
            self.durable.stop()
        if self.receiver is not None:
            self.receiver.stop()
        if self.sender is not None:
            self.sender.close()
        if self._saver is not None:
            self._saver.join(timeout=30)
        self.save()

    def save(self) -> None:
        if self.state_file is None or not self._loaded:
            return
        with self._save_lock:
            try:
                persist.save(self.state_file, self.table, self.clock(), self.wall_clock())
            except OSError as exc:
                log.warning("connection state not saved to %s: %s", self.state_file, exc)

    def _save_in_background(self) -> None:
        """The periodic save, off the agent thread: a large table takes a while to
        write, and misses must not wait for it."""
        if self.state_file is None or (self._saver is not None and self._saver.is_alive()):
            return
        self._saver = threading.Thread(target=self.save, name="flowstate-save", daemon=True)
        self._saver.start()

    # -- peers ----------------------------------------------------------------------------

    def authorize(self, address: str, sender: str) -> bool:
        return zone_peer(self.zones(), self.host_id, address, sender)

    def _deliver(self, sender: str, updates: Sequence[Update]) -> None:
        """On the receiver's thread: install, and leave the tags to the agent thread."""
        closes = any(op in ("fin", "rst") for op, _e, _t in updates)
        address = self._address_of(sender) if closes else None  # (adds: no zone walk)
        tags = apply_updates(self.table, self.metrics, sender, updates, self.clock(), address)
        if tags:
            self._tags.append(tags)
        # Flows that decided on the old state (a reply flow of a binding just replaced or
        # withdrawn) must go before their next packet: wake the agent thread, which would
        # otherwise notice only after its next miss or tick.
        if (tags or self.table.release_pending) and self.on_received is not None:
            self.on_received()

    def pump(self) -> int:
        """Install the state peers have sent that is still waiting on the socket (see
        `FlowStateReceiver.pump`); the agent calls it before each simulation."""
        return self.receiver.pump() if self.receiver is not None else 0

    def share(self, addresses: Iterable[str], entries: Iterable[FlowStateEntry]) -> int:
        """Send new state to the hosts at `addresses` (underlay) now, before the packet
        that created it is reinjected; returns the datagrams sent (0 without an exchange)."""
        if self.sender is None:
            return 0
        entries = list(entries)
        addresses = list(addresses)
        updates: list[Update] = [("add", e, entry_timeout(e)) for e in entries]
        for e in entries:  # so that they hear of its removal
            self.table.shared_with(e.key, addresses)
        # Sticky entries in messages of their own: a peer that does not know the kind
        # yet (an older agent) refuses the message that carries one, not the others.
        plain = [u for u in updates if not is_sticky(u[1].key)]
        sticky = [u for u in updates if is_sticky(u[1].key)]
        sent = self.sender.send(addresses, plain) if plain else 0
        return sent + (self.sender.send(addresses, sticky) if sticky else 0)

    def _withdraw(self, gone: Iterable[Tracked]) -> int:
        """Tell the hosts each expired entry of ours was pushed to that it is gone."""
        if self.sender is None:
            return 0
        by_hosts: dict[frozenset[str], list[Update]] = {}
        for tracked in gone:
            if tracked.origin is None and tracked.shared:
                update: Update = ("remove", tracked.entry, tracked.timeout)
                by_hosts.setdefault(frozenset(tracked.shared), []).append(update)
        return sum(self.sender.send(sorted(h), u) for h, u in by_hosts.items())

    def _tell_owners(self, closing: Iterable[Tracked]) -> int:
        """Tell the owners of copies whose flows here saw FIN or RST: the owner's own
        flows may never see it (a server's RST enters at the server's host only)."""
        if self.sender is None:
            return 0
        sent = 0
        for tracked in closing:
            address = self._address_of(tracked.origin) if tracked.origin else None
            if address is None:
                continue
            op: Op = "rst" if tracked.tcp_flags & TCP_RST else "fin"
            sent += self.sender.send([address], [(op, tracked.entry, tracked.timeout)])
        return sent

    def _address_of(self, host_id: str) -> str | None:
        """`host_id`'s underlay address in a tunnel zone this host is in too."""
        for zone in self.zones():
            members = {m.host_id: m.ip_address for m in zone.hosts}
            if self.host_id in members and host_id in members:
                return members[host_id]
        return None

    @property
    def view(self) -> FlowStateView:
        """What simulations read: the live table, no copy."""
        return self.table.view

    def track(self, entries: Iterable[FlowStateEntry], flows: Iterable[Hashable] = ()) -> set[str]:
        """Hold locally created entries (their SNAT ports reserved); the tags to invalidate."""
        now = self.clock()
        flows = tuple(flows)
        tags: set[str] = set()
        for entry in entries:
            if isinstance(entry, NatEntry) and entry.key.kind == "rev_snat":
                # Replies are addressed to (dst, dport) of the reverse key: the port held.
                self.snat.reserve(entry.key, entry.key.dst, entry.key.dport)
            tags |= self.table.add(entry, now, flows)
            if self.durable is not None:
                self.durable.put(entry, entry_timeout(entry))
        return tags

    def _adopt_restored(self) -> None:
        pending: list[NatKey] = []
        for key in self._unadopted:
            if self.table.lookup(key) is None:
                continue  # expired meanwhile
            if self.snat.adopt(key.dst, key.dport, key) is False:
                pending.append(key)
        self._unadopted = pending

    def _removed(self, entry: FlowStateEntry) -> None:
        if isinstance(entry, NatEntry) and entry.key.kind == "rev_snat":
            self.snat.release(entry.key)

    def settle_released(self, last_used: LastUsed) -> set[str]:
        """`ConnTable.settle_released` (on the agent thread: `last_used` reads the
        datapath); a cheap check when nothing is pending, as between two misses."""
        if not self.table.release_pending:
            return set()
        return self.table.settle_released(self.clock(), last_used)

    def drain_tags(self) -> set[str]:
        """Tags of state received since the last call (the agent thread invalidates)."""
        tags: set[str] = set()
        while self._tags:
            tags |= self._tags.popleft()
        return tags

    # -- time -----------------------------------------------------------------------------

    def sweep(
        self,
        now: float,
        last_used: Callable[[Hashable], float | None],
        tcp_flags: Callable[[Hashable], int] | None = None,
    ) -> set[str]:
        """Expire entries (`ConnTable.sweep_entries`) and tell peers of ours that went,
        maintain SNAT leases, save now and then; the tags of expired entries."""
        tags: set[str] = set()
        if len(self.table):
            tags, gone, closing = self.table.sweep_entries(now, last_used, tcp_flags)
            self._withdraw(gone)
            self._tell_owners(closing)
            if self.durable is not None:
                for tracked in gone:
                    if tracked.origin is None:
                        self.durable.delete(tracked.entry)
        if self.durable is not None:
            self.durable.refresh(self.table.lookup)
            while self._refound:
                self._unadopted.append(self._refound.popleft())
        if self._unadopted:
            self._adopt_restored()
        self.snat.maintain()
        if now >= self._next_save:
            self._next_save = now + persist.SAVE_INTERVAL
            self._save_in_background()
        return tags

    def report(self, _request: dict[str, Any] | None = None) -> dict[str, Any]:
        out = conntrack_report(self.table, self.snat, self.clock())
        if self.durable is not None:
            out["cassandra"] = {"active": self.durable.active, **self.durable.stats.as_dict()}
        return out


__all__ = ["PORT", "FlowStateService", "apply_updates"]
