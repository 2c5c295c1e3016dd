"""The userspace datapath: AF_PACKET on every bound interface, megaflows in Python.

For machines without eBPF (`--datapath userspace`). One forwarding thread waits on all
port sockets and the tunnel socket with epoll, looks every frame up in the same megaflow
table the kernel program implements, applies the actions in Python and sends the
result; a frame no flow matches is queued as a miss for the agent. It is slower than the
kernel path (about 100 kpps), never different: checksums left to the "NIC" are
completed and GSO super-frames are segmented before they leave (`segment.prepare`).

Tunnels: VXLAN framed here and sent over a UDP socket bound to the underlay address,
port 4789 — the wire format of the kernel's VXLAN device, so a userspace host and an
eBPF host tunnel to each other. A collect_md VXLAN device cannot serve this backend: an
AF_PACKET read of it loses the VNI, which names the destination port, and its socket
would hold port 4789. So in userspace mode the agent creates no `vxlan0`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from tessera.datapath.afpacket import PacketSocket, interface_mtu
from tessera.datapath.base import (
    MAX_MISSES_PER_WAKE,
    Action,
    Datapath,
    DatapathError,
    Flow,
    FlowStats,
    InstalledFlow,
    Match,
    Miss,
    Output,
    OutputTunnel,
    PortBinding,
    split_vni,
)
from tessera.datapath.conntrack import PythonConntrack
from tessera.datapath.frames import run_actions
from tessera.datapath.segment import prepare
from tessera.datapath.table import MegaflowTable
from tessera.datapath.vxlan import OVERHEAD, VXLAN_PORT, decap, encap
from tessera.packet.errors import PacketError
from tessera.packet.offload import complete_l4_checksum

log = logging.getLogger(__name__)

_BATCH = 64  # frames read from one socket before looking at the others
_MISS_QUEUE = 4096


@dataclass
class _Port:
    binding: PortBinding
    sock: PacketSocket
    mtu: int


class UserspaceDatapath(PythonConntrack, Datapath):
    kind = "userspace"

    def __init__(
        self,
        underlay_ip: str | None = None,
        tunnel_port: int = VXLAN_PORT,
        underlay_mtu: int = 1600,
    ) -> None:
        self.underlay_ip = underlay_ip
        self.tunnel_port = tunnel_port
        self.tunnel_mtu = min(1500, underlay_mtu - OVERHEAD)
        self.table = MegaflowTable()
        self.conntrack = self.table.conntrack
        self._ports: dict[int, _Port] = {}
        self._by_fd: dict[int, _Port] = {}
        self._vni: dict[int, _Port] = {}
        self._misses: deque[Miss] = deque()
        self._cond = threading.Condition()
        self._woken = False
        self._lock = threading.Lock()
        self._epoll: select.epoll | None = None
        self._tunnel: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.dropped_misses = 0
        self.send_errors = 0

    # -- lifecycle --

    def start(self) -> None:
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        if self.underlay_ip is not None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((self.underlay_ip, self.tunnel_port))
            except OSError as exc:
                sock.close()
                raise DatapathError(
                    f"cannot open the VXLAN port {self.underlay_ip}:{self.tunnel_port} "
                    f"({exc.strerror}); is a kernel VXLAN device using it?"
                ) from None
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self._tunnel = sock
            self._epoll.register(sock.fileno(), select.EPOLLIN)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="userspace-dp", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self.wakeup()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            for port in self._ports.values():
                port.sock.close()
            self._ports.clear()
            self._by_fd.clear()
            self._vni.clear()
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # -- ports --

    def add_port(self, port: int, ifname: str, tunnel_key: int | None = None) -> None:
        if self._epoll is None:
            raise DatapathError("the userspace datapath is not started")
        with self._lock:
            existing = self._ports.get(port)
            if existing is not None and existing.binding.ifname == ifname:
                self._set_vni(existing, tunnel_key)
                existing.binding = PortBinding(port, ifname, tunnel_key)
                return
        self.remove_port(port)
        try:
            sock = PacketSocket(ifname)
            mtu = interface_mtu(ifname)
        except OSError as exc:
            raise DatapathError(f"cannot attach to interface {ifname}: {exc.strerror}") from None
        entry = _Port(PortBinding(port, ifname, tunnel_key), sock, mtu)
        with self._lock:
            self._ports[port] = entry
            self._by_fd[sock.fileno()] = entry
            self._set_vni(entry, tunnel_key)
        self._epoll.register(sock.fileno(), select.EPOLLIN)

    def _set_vni(self, entry: _Port, tunnel_key: int | None) -> None:
        for vni, p in list(self._vni.items()):
            if p is entry:
                del self._vni[vni]
        if tunnel_key:
            self._vni[tunnel_key] = entry

    def remove_port(self, port: int) -> None:
        with self._lock:
            entry = self._ports.pop(port, None)
            if entry is None:
                return
            self._by_fd.pop(entry.sock.fileno(), None)
            self._set_vni(entry, None)
        # After the port is gone from the table: install() refuses new flows to it.
        self.table.delete_outputs_to(port)
        self.table.conntrack.set_zone(port, 0)
        if self._epoll is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(entry.sock.fileno())
        entry.sock.close()

    def ports(self) -> dict[int, PortBinding]:
        with self._lock:
            return {n: p.binding for n, p in self._ports.items()}

    # -- flows --

    def install(self, flow: Flow) -> None:
        """As the eBPF datapath: a flow naming a port that is not attached is refused
        (there it has no device to redirect to), never kept to forward into nothing."""
        with self._lock:
            missing = [
                a.port for a in flow.actions if isinstance(a, Output) and a.port not in self._ports
            ]
        if missing:
            raise DatapathError(f"flow outputs to local port {missing[0]}, which is not attached")
        self.table.install(flow)

    def delete(self, match: Match) -> bool:
        return self.table.delete(match)

    def dump(self) -> dict[Match, InstalledFlow]:
        return self.table.dump()

    def stats(self, match: Match) -> FlowStats | None:
        return self.table.stats(match)

    # -- packets --

    def recv_misses(self, timeout: float) -> list[Miss]:
        with self._cond:
            if not self._misses and not self._woken and timeout > 0:
                self._cond.wait(timeout)
            self._woken = False
            misses = self._misses
            return [misses.popleft() for _ in range(min(len(misses), MAX_MISSES_PER_WAKE))]

    def wakeup(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"x")
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def reinject(self, miss: Miss) -> None:
        self._forward(miss.port, miss.frame, reinjected=True)

    def execute(self, frame: bytes, actions: Sequence[Action]) -> None:
        self._send(run_actions(frame, actions).outputs, 0)

    # -- the forwarding thread --

    def _run(self) -> None:
        assert self._epoll is not None
        epoll = self._epoll
        while not self._stop.is_set():
            try:
                events = epoll.poll(0.5)
            except InterruptedError:
                continue
            for fd, _mask in events:
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                elif self._tunnel is not None and fd == self._tunnel.fileno():
                    self._drain_tunnel()
                else:
                    entry = self._by_fd.get(fd)
                    if entry is not None:
                        self._drain_port(entry)

    def _drain_port(self, entry: _Port) -> None:
        port = entry.binding.port
        for _ in range(_BATCH):
            try:
                frame = entry.sock.recv()
            except OSError:
                return  # the port was removed under us
            if frame is None:
                return
            data = frame.with_tag()
            if frame.csum_not_ready:
                try:
                    data = complete_l4_checksum(data)
                except PacketError:
                    continue
            self._forward(port, data, reinjected=False, in_mtu=entry.mtu)

    def _drain_tunnel(self) -> None:
        assert self._tunnel is not None
        for _ in range(_BATCH):
            try:
                payload = self._tunnel.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            inner = decap(payload)
            if inner is None:
                continue
            vni, frame = inner
            key, commit = split_vni(vni)
            entry = self._vni.get(key)
            if entry is None:
                continue
            # A kernel VXLAN sender may leave the inner checksum to an offload that never
            # happens, and a UDP socket cannot tell: compute it (a no-op when correct).
            try:
                frame = complete_l4_checksum(frame)
            except PacketError:
                pass
            if commit:
                self.table.tunnel_commit(entry.binding.port, frame, time.monotonic())
            self._send_port(entry, frame)

    def _forward(self, port: int, frame: bytes, *, reinjected: bool, in_mtu: int = 1500) -> None:
        result, ct_state = self.table.forward(port, frame, time.monotonic())
        if result is None:
            if not reinjected:
                self._queue_miss(port, frame, ct_state)
            return
        self._send(result.outputs, in_mtu)
        if result.to_userspace and not reinjected:
            self._queue_miss(port, frame, ct_state)

    def _queue_miss(self, port: int, frame: bytes, ct_state: int = 0) -> None:
        with self._cond:
            if len(self._misses) >= _MISS_QUEUE:
                self.dropped_misses += 1
                return
            self._misses.append(Miss(port, frame, time.monotonic(), ct_state=ct_state))
            self._cond.notify_all()

    def _send(self, outputs: list[tuple[Output | OutputTunnel, bytes]], in_mtu: int) -> None:
        for action, data in outputs:
            if isinstance(action, Output):
                entry = self._ports.get(action.port)
                if entry is not None:
                    self._send_port(entry, data)
            elif self._tunnel is not None:
                for piece in prepare(data, False, self.tunnel_mtu):
                    try:
                        self._tunnel.sendto(
                            encap(action.wire_vni, piece), (_ip(action.remote_ip), self.tunnel_port)
                        )
                    except OSError:
                        self.send_errors += 1

    def _send_port(self, entry: _Port, frame: bytes) -> None:
        for piece in prepare(frame, False, entry.mtu):
            try:
                entry.sock.send(piece)
            except OSError:
                self.send_errors += 1


def _ip(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))
