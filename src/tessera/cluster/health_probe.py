"""How the health monitor probes: TCP connects, all of a round at once, and a ping.

Both must run on a thread that lives in the probe namespace (`enter_netns`): a socket
belongs to the namespace of the thread that creates it. A round opens one non-blocking
connect per member and waits for all of them together, each up to its monitor's
`timeout`, so that a round lasts as long as its slowest member, not their sum.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
import time
from collections.abc import Sequence

from tessera.cluster.health_state import Target

_IN_PROGRESS = (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK)
ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0


def tcp_round(targets: Sequence[Target]) -> dict[str, bool]:
    """member id → whether a TCP connection to the member was established within its
    timeout (a refused or unreachable connect is a failure at once)."""
    results: dict[str, bool] = {}
    started = time.monotonic()
    pending: dict[socket.socket, tuple[str, float]] = {}
    with selectors.DefaultSelector() as sel:
        for t in targets:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex((t.address, t.port))
            if code in _IN_PROGRESS:
                pending[sock] = (t.member_id, started + t.timeout)
                sel.register(sock, selectors.EVENT_WRITE)
            else:
                results[t.member_id] = code == 0
                sock.close()
        while pending:
            now = time.monotonic()
            wait = max(0.0, min(deadline for _, deadline in pending.values()) - now)
            for key, _ in sel.select(wait):
                done = key.fileobj
                assert isinstance(done, socket.socket)
                member_id, _ = pending.pop(done)
                results[member_id] = done.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                sel.unregister(done)
                done.close()
            now = time.monotonic()
            for sock, (member_id, deadline) in list(pending.items()):
                if now >= deadline:
                    results[member_id] = False
                    del pending[sock]
                    sel.unregister(sock)
                    sock.close()
    return results


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(address: str, timeout: float) -> bool:
    """One ICMP echo to `address`; whether a reply came within `timeout` (a raw socket:
    the monitor runs as root, as the agents do)."""
    ident = os.getpid() & 0xFFFF
    seq = int(time.monotonic() * 1000) & 0xFFFF
    payload = b"tessera-health-monitor"
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    packet = (
        struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, _checksum(header + payload), ident, seq)
        + payload
    )
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.sendto(packet, (address, 0))
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                return False
            ihl = (data[0] & 0x0F) * 4
            if source[0] != address or len(data) < ihl + 8:
                continue
            kind, _, _, got_ident, got_seq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if kind == ICMP_ECHO_REPLY and got_ident == ident and got_seq == seq:
                return True
    return False
