"""Flow state between agents: UDP on the underlay, members only, never replayed.

Why UDP to the agent (not a reserved VNI through the datapath): the state must be
installed by the receiving *agent* before the data packet it precedes reaches that host,
and the agent reads a socket far more cheaply than it would parse tunnel traffic out of
its miss path. The sender writes the message synchronously before the first packet is
reinjected, so the state leaves the host ahead of the packet on the same underlay path.
Delivery is not acknowledged: a lost message means the peer sees the return traffic as
a new connection (what a restarted peer without state would do); the sender repeats the
state when the connection's flows are simulated again.

Who may speak: a message is accepted only from a source address that is, in a tunnel
zone shared with this host, the underlay address of the host id the message names
(`authorize(source, sender)`). Replays: each message carries the sender's boot `epoch`
and a sequence number per epoch; the receiver keeps, per sender, the latest epoch and a
64-message window of sequence numbers (as IPsec does), so reordered datagrams still
pass while a copy or an older epoch does not. Only authenticated, fully decoded
messages move the window.

The receiver never raises and never creates state from a bad message: every rejection
is counted by reason in `tessera_agent_flowstate_rejected_total{reason}` (`oversize`,
`truncated`, `malformed`, `version`, `forged`, `replayed`).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from tessera.agent.flowstate.wire import (
    MAX_MESSAGE,
    Update,
    WireError,
    batches,
    decode,
    encode,
    encode_record,
)
from tessera.agent.metrics import AgentMetrics
from tessera.model import TunnelZone

log = logging.getLogger(__name__)

PORT = 6677  # UDP, on the underlay address of every agent
WINDOW = 64  # sequence numbers remembered below the highest seen, per sender

Authorize = Callable[[str, str], bool]  # (source address, sender host id) -> allowed
Deliver = Callable[[str, Sequence[Update]], None]


def zone_peer(zones: Iterable[TunnelZone], me: str, address: str, sender: str) -> bool:
    """Whether `address` is `sender`'s underlay address in a tunnel zone `me` is in too:
    the only place another agent's flow state may come from."""
    if sender == me:
        return False
    for zone in zones:
        members = {m.host_id: m.ip_address for m in zone.hosts}
        if me in members and members.get(sender) == address:
            return True
    return False


class ReplayGuard:
    """Per sender: the newest epoch and which of the last `WINDOW` sequence numbers came."""

    def __init__(self) -> None:
        self._peers: dict[str, tuple[int, int, int]] = {}  # sender → (epoch, top, bitmap)

    def accept(self, sender: str, epoch: int, seq: int) -> bool:
        """True (and remembered) for a message never seen; False for a replay."""
        known = self._peers.get(sender)
        if known is None or epoch > known[0]:
            self._peers[sender] = (epoch, seq, 1)
            return True
        known_epoch, top, bitmap = known
        if epoch < known_epoch:
            return False
        if seq > top:
            shift = seq - top
            bitmap = ((bitmap << shift) | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
            self._peers[sender] = (epoch, seq, bitmap)
            return True
        age = top - seq
        if age >= WINDOW or bitmap >> age & 1:
            return False
        self._peers[sender] = (epoch, top, bitmap | 1 << age)
        return True


# The receive buffer of the flow-state socket. A peer's sweep that expires a burst of
# connections sends their removals at once (12,000 SNAT connections: ~1,000 datagrams),
# and the kernel's default buffer (net.core.rmem_default, ~90 datagrams of this size)
# dropped most of them while the receiving thread was busy: the copies then lived on
# until their own timeout, and a new connection given the same SNAT port had its first
# reply translated for the old one (measured: 859 and 2,802 datagrams dropped on the two
# hosts of bench/stateful.py, 12 of 300 first connections stalled 1 s).
RECEIVE_BUFFER = 16 * 1024 * 1024
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; beyond rmem_max, as root


def _grow_receive_buffer(sock: socket.socket) -> None:
    """`RECEIVE_BUFFER` for `sock`: forced as root (the agent), else as large as
    net.core.rmem_max allows."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError as exc:
            log.warning("flow-state receive buffer left at the default: %s", exc)


class FlowStateReceiver:
    """Checks each datagram (`handle`) and hands accepted entries to `deliver`."""

    def __init__(
        self,
        authorize: Authorize,
        deliver: Deliver,
        metrics: AgentMetrics,
        *,
        address: str = "0.0.0.0",
        port: int = PORT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.authorize = authorize
        self.deliver = deliver
        self.metrics = metrics
        self.address = address
        self.port = port
        self.clock = clock
        self.guard = ReplayGuard()
        self._lock = threading.Lock()  # the guard: `handle` may be called from tests too
        self._rx = threading.Lock()  # one reader of the socket at a time (`pump`)
        self._sock: socket.socket | None = None
        self._ready: select.poll | None = None  # POLLIN of _sock, for `pump`
        self._stop = threading.Event()
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None

    def handle(self, data: bytes, source: str) -> bool:
        """Accept or reject one datagram from `source`; True if its state was delivered."""
        try:
            message = decode(data)
        except WireError as exc:
            return self._reject(exc.reason, source, str(exc))
        except Exception as exc:  # a decoder bug must not become a crash either
            return self._reject("malformed", source, repr(exc))
        try:
            allowed = self.authorize(source, message.sender)
        except Exception as exc:
            log.warning("flow-state authorization failed: %r", exc)
            allowed = False
        if not allowed:
            return self._reject("forged", source, f"not a tunnel-zone address of {message.sender}")
        with self._lock:
            fresh = self.guard.accept(message.sender, message.epoch, message.seq)
        if not fresh:
            return self._reject("replayed", source, f"epoch {message.epoch} seq {message.seq}")
        self.metrics.flowstate_received.inc()
        try:
            self.deliver(message.sender, message.updates)
        except Exception:
            log.exception("installing flow state from %s failed", message.sender)
        return True

    def _reject(self, reason: str, source: str, detail: str) -> bool:
        self.metrics.flowstate_rejected.labels(reason=reason).inc()
        log.debug("flow-state message from %s rejected: %s", source, detail)
        return False

    # -- the socket -------------------------------------------------------------------

    def start(self) -> None:
        """Bind (raises OSError if the port is taken) and serve on a thread."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.address, self.port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        _grow_receive_buffer(sock)
        self.port = sock.getsockname()[1]
        ready = select.poll()
        ready.register(sock, select.POLLIN)
        self._ready = ready
        self._sock = sock
        self._stop.clear()
        self._wake = socket.socketpair()  # stop() wakes the thread at once
        self._thread = threading.Thread(target=self._serve, name="flowstate-rx", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._wake is not None:
            with contextlib.suppress(OSError):
                self._wake[1].send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._ready = None
        if self._wake is not None:
            for end in self._wake:
                end.close()
            self._wake = None

    def pump(self) -> int:
        """Handle every datagram waiting on the socket, now; returns how many.

        The agent calls this before each simulation: a peer sends a connection's state
        just before its first packet, so by the time the reply to that packet misses
        here the state is in the socket, but the receiving thread may not have run yet
        (two cores, a busy host). Reading it on the simulating thread closes that race;
        `_rx` also makes it wait for a datagram the thread has already taken.
        """
        sock, ready = self._sock, self._ready
        if sock is None or ready is None:
            return 0
        count = 0
        with self._rx:
            # Asked with poll(2) first: nothing waiting is the usual answer, and a raised
            # EAGAIN costs a cold miss path 10-20 µs.
            while ready.poll(0):
                try:
                    data, (source, _port) = sock.recvfrom(MAX_MESSAGE + 1)
                except (BlockingIOError, InterruptedError):
                    return count
                except OSError:  # closed under us (stop)
                    return count
                count += 1
                self.handle(data, source)
            return count

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None and self._wake is not None
        waker = self._wake[0]
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([sock, waker], [], [])
            except (OSError, ValueError):  # closed by stop
                return
            if sock in readable:
                self.pump()


class FlowStateSender:
    """Sends entries to peers from this host's underlay address (what receivers check)."""

    def __init__(
        self,
        host_id: str,
        metrics: AgentMetrics,
        *,
        address: str = "0.0.0.0",
        port: int = PORT,
        epoch: int | None = None,
    ) -> None:
        self.host_id = host_id
        self.metrics = metrics
        self.port = port
        # A restart must start a newer epoch than any message of the previous run.
        self.epoch = epoch if epoch is not None else int(time.time() * 1000)
        self._seq = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.bind((address, 0))
        except OSError as exc:  # peers will refuse what routing sends from elsewhere
            log.error("flow-state sender cannot bind %s: %s", address, exc)

    def send(self, hosts: Iterable[str], updates: Iterable[Update]) -> int:
        """Send `updates` to each underlay address in `hosts` before returning (the
        datagrams are in the kernel's queue); the number of datagrams sent."""
        targets = list(dict.fromkeys(hosts))
        if not targets:
            return 0
        sent = 0
        for group in batches(self._records(updates)):
            with self._lock:
                self._seq += 1
                data = encode(self.host_id, self.epoch, self._seq, group)
            for host in targets:
                try:
                    self._sock.sendto(data, (host, self.port))
                    sent += 1
                except OSError as exc:
                    log.warning("flow state to %s not sent: %s", host, exc)
        if sent:
            self.metrics.flowstate_sent.inc(sent)
        return sent

    @staticmethod
    def _records(updates: Iterable[Update]) -> Iterator[bytes]:
        for op, entry, timeout in updates:
            try:
                yield encode_record(op, entry, timeout)
            except ValueError as exc:  # a bad entry is not sent; the others are
                log.warning("flow state not sent: %s", exc)

    def close(self) -> None:
        self._sock.close()
