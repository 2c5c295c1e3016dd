"""Cables, ICMP and TCP probes between the eBPF tests' namespaces.

The namespaces are `tessera.lab.sandbox` sandboxes named ``tst-<run id>-<role>``
(``PREFIX``) and deleted by the fixture that made them, even on failure; devices
live only inside them (created there directly, never in the root namespace).
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from support.rawframes import csum
from tessera.lab.sandbox import Sandbox

PREFIX = "tst"


def ping(ns: Sandbox, dst: str, *, timeout: float = 1.0, ident: int | None = None) -> float | None:
    """One ICMP echo from ``ns``: the RTT in seconds, or None on timeout.

    A raw ICMP socket opened inside the namespace -- the same kernel path as
    ``ping`` (not installed on every test machine).
    """
    sock = ns.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
    ident = ident if ident is not None else os.getpid() & 0xFFFF
    seq = secrets.randbelow(0xFFFF)
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"tessera-ping" * 4
    body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    try:
        start = time.monotonic()
        sock.sendto(body, (dst, 0))
        deadline = start + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, _ = sock.recvfrom(2048)
            except TimeoutError:
                break
            ihl = (data[0] & 0x0F) * 4
            t, _c, _s, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
            if t == 0 and rid == ident and rseq == seq:
                return time.monotonic() - start
        return None
    finally:
        sock.close()


@contextmanager
def tcp_echo_server(ns: Sandbox, addr: str, port: int) -> Iterator[None]:
    """A one-connection-at-a-time TCP echo server inside ``ns``."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(4)
        return s

    srv = ns.call(make)
    srv.settimeout(0.2)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                try:
                    while data := conn.recv(65536):
                        conn.sendall(data)
                except OSError:
                    pass

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=2)
        srv.close()


def tcp_roundtrip(
    ns: Sandbox, addr: str, port: int, payload: bytes, timeout: float = 3.0
) -> tuple[bytes, float]:
    """Connect from ``ns``, send ``payload``, read it back: (data, connect time)."""
    sock = ns.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    try:
        sock.settimeout(timeout)
        start = time.monotonic()
        sock.connect((addr, port))
        connect_time = time.monotonic() - start
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got, connect_time
    finally:
        sock.close()
