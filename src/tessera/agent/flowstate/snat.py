"""Dynamic SNAT ports: blocks of 64 leased per agent from the NSDB, ports handed out locally.

Two agents must never translate two connections to one (address, port), yet asking the
NSDB per connection would put it on every new connection's path. So an agent leases a
*block* (64 consecutive ports of one external address) by creating an ephemeral entry in
`snat_blocks/<address>` (`nsdb.tables`); creation is exclusive (`state_create`), so of
two agents racing for a block one gets `AlreadyExists` and moves on to the next. Ports
are then allocated from the agent's own blocks with no NSDB traffic; a new block is
leased only when every leased block usable for the request is full, and a block with no
binding for `release_after` seconds is given back. A dead agent's leases vanish with its
NSDB session, returning its blocks.

Leases name this run of the agent (a random token), so a restarted agent does not take
its predecessor's still-live leases for its own; they return when the old session ends.

Exhaustion (every block of every address in the range leased and full) is not an error:
`allocate` returns None, the caller drops the packet with `EXHAUSTED` as its reason,
`tessera_agent_snat_exhausted_total` counts it and a (rate-limited) warning says which
range ran out.

In the agent the allocator serves simulations as their `NatAllocator`
(`allocate_snat`): pure, it picks a port of an already leased block that neither this
agent holds nor the simulation's `taken` refuses; when no leased block can serve, it
raises `NotYetLoaded("nat_block", id)` and the upcall handler leases (`lease_for`, the
NSDB call, outside the simulation) and simulates again. The chosen port is held only when
the result's reverse binding is installed (`reserve`) and freed when that binding leaves
the table (`release`), so a simulation run twice or abandoned takes nothing.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

from tessera.agent.metrics import AgentMetrics
from tessera.nsdb.base import Nsdb
from tessera.nsdb.errors import AlreadyExists, NsdbError
from tessera.nsdb.tables import SNAT_BLOCK_SIZE, SnatLease, decode_snat, snat_key, snat_table
from tessera.packet.addr import ip_to_str
from tessera.simulation.errors import NotYetLoaded
from tessera.simulation.flowstate import NatBinding, NatRange, SnatRequest

log = logging.getLogger(__name__)

EXHAUSTED = "SNAT ports exhausted"
RELEASE_AFTER = 60.0  # seconds a block stays leased with no binding
VERIFY_INTERVAL = 30.0  # how often leases are checked to still be ours
LOG_INTERVAL = 10.0  # at most one exhaustion warning per this many seconds
DRY_FOR = 1.0  # seconds a range found exhausted answers None without asking the NSDB
# Seconds a released port rests before it is handed out again. The hosts this binding was
# pushed to keep their copy, and the reply flow translating to the old client, until
# their own sweep (2 s) after our removal reaches them, and longer while that flow is
# used (RELEASED_TIMEOUT, 5 s idle): a port reused sooner finds the old connection's
# kernel flow still installed there, which sends the new connection's first reply to
# the old client (measured: ~1 % of connections stalled 1 s on a SYN retransmit).
REUSE_AFTER = 10.0
FAST_TRIES = 4  # blocks tried after our last one before the address's leases are read
NAT_BLOCK = "nat_block"  # the NotYetLoaded kind: lease a block, then simulate again

Range = tuple[int, int]  # inclusive


@dataclass
class Lease:
    ip: int
    block: int
    used: set[int] = field(default_factory=set)
    cursor: int = 0  # the next port tried: a released port is not reused at once
    idle_since: float = 0.0
    resting: dict[int, float] = field(default_factory=dict)  # port -> when released

    def full(self, now: float) -> bool:
        """Every port in use or resting (the first-rested of `resting` is its oldest):
        the agent holds many blocks at high connection rates, and scanning each full
        one port by port cost milliseconds per new connection."""
        if len(self.used) + len(self.resting) < SNAT_BLOCK_SIZE:
            return False
        oldest = next(iter(self.resting.values()), None)
        return oldest is None or now - oldest < REUSE_AFTER

    def _free(self, port: int, now: float) -> bool:
        if port in self.used:
            return False
        since = self.resting.get(port)
        return since is None or now - since >= REUSE_AFTER

    @property
    def first(self) -> int:
        return self.block * SNAT_BLOCK_SIZE

    def take(self, ports: Range, now: float) -> int | None:
        if self.full(now):
            return None
        lo = max(ports[0], self.first)
        hi = min(ports[1], self.first + SNAT_BLOCK_SIZE - 1)
        if lo > hi:
            return None
        span = hi - lo + 1
        for i in range(span):
            port = lo + (self.cursor - lo + i) % span
            if self._free(port, now):
                self.hold(port)
                return port
        return None

    def peek(self, ports: Range, taken: Callable[[int], bool], now: float) -> int | None:
        """The port `take` would choose among those `taken` does not refuse, unchanged."""
        if self.full(now):
            return None
        lo = max(ports[0], self.first)
        hi = min(ports[1], self.first + SNAT_BLOCK_SIZE - 1)
        span = hi - lo + 1
        for i in range(max(0, span)):
            port = lo + (self.cursor - lo + i) % span
            if self._free(port, now) and not taken(port):
                return port
        return None

    def hold(self, port: int) -> None:
        self.used.add(port)
        self.resting.pop(port, None)
        self.cursor = port + 1

    def rest(self, port: int, now: float) -> None:
        """`port` is released: free again after REUSE_AFTER."""
        self.used.discard(port)
        self.resting[port] = now  # one key per port of the block at most


def _ports(target: NatRange, sport: int) -> Range:
    """The ports a target offers (an ICMP echo's new id too): the packet's own for 0-0."""
    if target.port_from == 0 and target.port_to == 0:
        return sport, sport
    return max(target.port_from, 1), target.port_to


class SnatAllocator:
    def __init__(
        self,
        nsdb: Nsdb,
        host_id: str,
        metrics: AgentMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        release_after: float = RELEASE_AFTER,
    ) -> None:
        self.nsdb = nsdb
        self.host_id = host_id
        self.metrics = metrics
        self.clock = clock
        self.wall_clock = wall_clock
        self.release_after = release_after
        self.token = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._leases: dict[tuple[int, int], Lease] = {}
        self._bindings: dict[Hashable, tuple[int, int]] = {}
        self._owner: dict[tuple[int, int], Hashable] = {}
        self._wanted: dict[str, SnatRequest] = {}
        self._dry: dict[tuple[NatRange, ...], float] = {}
        self._hint: Lease | None = None  # the block that served last
        self._cursor: dict[int, int] = {}  # address -> next block index `_lease` tries
        self._next_verify = 0.0
        self._next_log = 0.0
        self._unlogged = 0
        self.last_failure = ""

    def allocate(self, ips: Range, ports: Range, key: Hashable) -> tuple[int, int] | None:
        """An (address, port) for the connection `key`, the same one for a key asked
        again; None when none is free (see the module docstring)."""
        with self._lock:
            bound = self._bindings.get(key)
            if bound is not None and _within(bound, ips, ports):
                return bound
            got = self._from_leases(ips, ports) or self._lease(ips, ports)
            if got is None:
                self._exhausted(ips, ports)
                return None
            if bound is not None:
                self._unbind(key)
            self._bindings[key] = got
            self._owner[got] = key
            return got

    def adopt(self, ip: int, port: int, key: Hashable) -> bool | None:
        """Take over a binding made before a restart (restored from the state file), so
        the connection keeps its port: its block is leased again if free. False while
        the block is held by this host's previous run (its session has not ended yet:
        ask again later) or the port is bound already; None when another host holds the
        block (the binding is that host's, received from it: nothing to hold here)."""
        with self._lock:
            if self._bindings.get(key) == (ip, port):
                return True
            if (ip, port) in self._owner:
                return False
            block = port // SNAT_BLOCK_SIZE
            lease = self._leases.get((ip, block))
            if lease is None:
                table, row = snat_table(ip_to_str(ip)), snat_key(block)
                value = SnatLease(self.host_id, self.token, self.wall_clock()).encode()
                try:
                    self.nsdb.state_create(table, row, value, ephemeral=True)
                except AlreadyExists:
                    try:
                        held = self.nsdb.state_get(table).get(row)
                        holder = decode_snat(held).host_id if held is not None else None
                    except (NsdbError, ValueError, KeyError):
                        return False
                    return False if holder in (None, self.host_id) else None
                except NsdbError:
                    return False
                lease = Lease(ip, block, idle_since=self.clock())
                self._leases[(ip, block)] = lease
            lease.used.add(port)
            lease.resting.pop(port, None)
            self._bindings[key] = (ip, port)
            self._owner[(ip, port)] = key
            return True

    def release(self, key: Hashable) -> bool:
        """The connection ended: its port is free again (its block may be given back)."""
        with self._lock:
            return self._unbind(key)

    def binding(self, key: Hashable) -> tuple[int, int] | None:
        with self._lock:
            return self._bindings.get(key)

    # -- the simulation's NatAllocator -------------------------------------------------------

    def allocate_snat(
        self, request: SnatRequest, taken: Callable[[int, int], bool]
    ) -> NatBinding | None:
        """A free (address, port) of a block already leased, changing nothing; raises
        NotYetLoaded("nat_block") when a block must be leased first (see the module
        docstring), None when the targets were found exhausted a moment ago."""
        with self._lock:
            now = self.clock()
            hint = self._hint
            for t in request.targets:
                ports = _ports(t, request.sport)
                # The block that served last first: at high connection rates the agent
                # holds many blocks (ports in use or resting), most of them full.
                leases = self._leases.values()
                if hint is not None:
                    leases = itertools.chain((hint,), leases)  # type: ignore[assignment]
                for lease in leases:
                    if not t.ip_from <= lease.ip <= t.ip_to:
                        continue
                    port = lease.peek(ports, functools.partial(taken, lease.ip), now)
                    if port is not None:
                        return NatBinding(lease.ip, port)
            if self.clock() < self._dry.get(request.targets, 0.0):
                first = request.targets[0]
                self._exhausted(
                    (first.ip_from, request.targets[-1].ip_to), _ports(first, request.sport)
                )
                return None
            ident = f"{request.device}:{len(self._wanted)}:{request.src}:{request.sport}"
            self._wanted[ident] = request
        raise NotYetLoaded(NAT_BLOCK, ident)

    def lease_for(self, ident: str) -> bool:
        """Lease a block for the request `allocate_snat` could not serve (NSDB I/O, on the
        caller's thread, outside any simulation). False when none is left: the targets
        answer None for `DRY_FOR` seconds, so the packet is dropped as exhausted."""
        with self._lock:
            request = self._wanted.pop(ident, None)
            if request is None:
                return False
            for t in request.targets:
                ports = _ports(t, request.sport)
                if self._lease((t.ip_from, t.ip_to), ports, take=False) is not None:
                    return True
            # Exhausted, or the NSDB cannot be asked: the packet is dropped on the next
            # simulation (counted there when exhausted) and so is the range's next second.
            self._dry[request.targets] = self.clock() + DRY_FOR
            return False

    def reserve(self, key: Hashable, ip: int, port: int) -> bool:
        """Hold (ip, port) for `key` (an installed reverse binding) until `release(key)`;
        False if it is not in a block of ours (a peer's binding: its lease, not ours)."""
        with self._lock:
            lease = self._leases.get((ip, port // SNAT_BLOCK_SIZE))
            if lease is None:
                return False
            lease.hold(port)
            self._hint = lease
            self._bindings[key] = (ip, port)
            self._owner[(ip, port)] = key
            return True

    def leases(self) -> list[tuple[int, int, int]]:
        """(address, block, ports in use) of every block held."""
        with self._lock:
            return [(lease.ip, lease.block, len(lease.used)) for lease in self._leases.values()]

    def maintain(self) -> int:
        """Give back blocks idle for `release_after`; now and then confirm that the NSDB
        still holds our leases (a session that expired may have lost some). Returns
        how many blocks were given back or lost."""
        now = self.clock()
        with self._lock:
            idle = [
                lease for lease in self._leases.values()
                if not lease.used and now - lease.idle_since >= self.release_after
            ]  # fmt: skip
            for lease in idle:
                self._give_back(lease)
            lost = self._verify(now) if now >= self._next_verify else 0
            return len(idle) + lost

    def close(self) -> None:
        """Give back every block (a graceful stop; a crash leaves it to the session)."""
        with self._lock:
            for lease in list(self._leases.values()):
                self._give_back(lease)
            self._bindings.clear()
            self._owner.clear()

    # -- internals (lock held) ----------------------------------------------------------

    def _from_leases(self, ips: Range, ports: Range) -> tuple[int, int] | None:
        for lease in self._leases.values():
            if ips[0] <= lease.ip <= ips[1]:
                port = lease.take(ports, self.clock())
                if port is not None:
                    return lease.ip, port
        return None

    def _lease(self, ips: Range, ports: Range, take: bool = True) -> tuple[int, int] | None:
        """Lease a block with a free port in range. Agents start their search at
        different places (a hash of the host id) so that they rarely race for one."""
        blocks = list(range(ports[0] // SNAT_BLOCK_SIZE, ports[1] // SNAT_BLOCK_SIZE + 1))
        n_ips = ips[1] - ips[0] + 1
        if not blocks or n_ips <= 0:
            self.last_failure = "empty SNAT range"
            return None
        spread = zlib.crc32(self.host_id.encode())
        lease_value = SnatLease(self.host_id, self.token, self.wall_clock()).encode()
        try:
            for i in range(n_ips):
                ip = ips[0] + (spread + i) % n_ips
                table = snat_table(ip_to_str(ip))
                # First the next few blocks after our last one, without reading the
                # table: an agent's blocks follow each other from its own starting
                # place, so these are usually free, and reading every lease of the
                # address (one row per block, hundreds at high rates) cost more than
                # the connections it served.
                start = self._cursor.get(ip, 0)
                fast = range(start, min(start + FAST_TRIES, len(blocks)))
                got = self._claim(ip, table, blocks, spread, fast, {}, lease_value, ports, take)
                if got is None:
                    taken = self.nsdb.state_get(table)
                    every = range(len(blocks))
                    got = self._claim(
                        ip, table, blocks, spread, every, taken, lease_value, ports, take
                    )
                if got is not None:
                    return got
        except NsdbError as exc:
            self.last_failure = f"NSDB unavailable: {exc}"
            log.warning("cannot lease SNAT ports: %s", exc)
            return None
        self.last_failure = EXHAUSTED
        return None

    def _claim(
        self,
        ip: int,
        table: str,
        blocks: list[int],
        spread: int,
        order: range,
        taken: Mapping[str, object],
        lease_value: str,
        ports: Range,
        take: bool,
    ) -> tuple[int, int] | None:
        """Lease the first block of `order` (indices into `blocks` from `spread`) that
        is neither in `taken` nor ours and that no other agent creates first."""
        for j in order:
            block = blocks[(spread + j) % len(blocks)]
            if snat_key(block) in taken or (ip, block) in self._leases:
                continue
            try:
                self.nsdb.state_create(table, snat_key(block), lease_value, ephemeral=True)
            except AlreadyExists:
                continue  # another agent was quicker
            self._cursor[ip] = j + 1
            got = self._leased(ip, block, ports, take)
            if got is not None:
                return got
        return None

    def _leased(self, ip: int, block: int, ports: Range, take: bool) -> tuple[int, int] | None:
        lease = Lease(ip, block, idle_since=self.clock())
        self._leases[(ip, block)] = lease
        self._hint = lease
        log.debug("leased SNAT block %d of %s", block, ip_to_str(ip))
        if not take:
            return ip, lease.first
        port = lease.take(ports, self.clock())
        return (ip, port) if port is not None else None

    def _unbind(self, key: Hashable) -> bool:
        bound = self._bindings.pop(key, None)
        if bound is None:
            return False
        self._owner.pop(bound, None)
        lease = self._leases.get((bound[0], bound[1] // SNAT_BLOCK_SIZE))
        if lease is not None:
            lease.rest(bound[1], self.clock())
            if not lease.used:
                lease.idle_since = self.clock()
        return True

    def _forget(self, lease: Lease) -> None:
        """Drop `lease` and the bindings of its ports (given back, or no longer ours)."""
        del self._leases[(lease.ip, lease.block)]
        if self._hint is lease:
            self._hint = None
        for port in lease.used:
            key = self._owner.pop((lease.ip, port), None)
            if key is not None:
                self._bindings.pop(key, None)

    def _give_back(self, lease: Lease) -> None:
        self._forget(lease)
        try:
            self.nsdb.state_delete(snat_table(ip_to_str(lease.ip)), snat_key(lease.block))
        except NsdbError as exc:  # the session's end will remove it anyway
            log.warning("SNAT block %d of %s not given back: %s", lease.block, lease.ip, exc)

    def _verify(self, now: float) -> int:
        self._next_verify = now + VERIFY_INTERVAL
        lost = 0
        for ip in {lease.ip for lease in self._leases.values()}:
            try:
                held = self.nsdb.state_get(snat_table(ip_to_str(ip)))
            except NsdbError:
                return lost
            for lease in [x for x in self._leases.values() if x.ip == ip]:
                value = held.get(snat_key(lease.block))
                if value is None or _token(value) != self.token:
                    log.warning("SNAT block %d of %s is no longer ours", lease.block, ip)
                    self._forget(lease)
                    lost += 1
        return lost

    def _exhausted(self, ips: Range, ports: Range) -> None:
        if self.last_failure != EXHAUSTED:
            return  # the NSDB could not be asked: logged where it failed
        self.metrics.snat_exhausted.inc()
        self._unlogged += 1
        now = self.clock()
        if now >= self._next_log:
            log.warning(
                "SNAT exhausted: no free port in %s-%s ports %d-%d (%d connection(s) dropped)",
                ip_to_str(ips[0]), ip_to_str(ips[1]), ports[0], ports[1], self._unlogged,
            )  # fmt: skip
            self._next_log = now + LOG_INTERVAL
            self._unlogged = 0


def _within(bound: tuple[int, int], ips: Range, ports: Range) -> bool:
    return ips[0] <= bound[0] <= ips[1] and ports[0] <= bound[1] <= ports[1]


def _token(value: str) -> str:
    try:
        return decode_snat(value).token
    except (ValueError, KeyError, TypeError):
        return ""
