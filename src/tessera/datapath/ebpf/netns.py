"""Run a little Python inside a network namespace, without forking.

``setns(CLONE_NEWNET)`` switches only the calling thread, so the function runs
in a short-lived thread that enters the namespace and dies with it.  Sockets
it creates (AF_PACKET, netlink, ICMP) stay bound to that namespace and may be
used from any thread afterwards.  The mount namespace is untouched, so bpffs
stays visible (unlike ``ip netns exec``, which remounts /sys).

Python 3.11 has no ``os.setns``, hence ctypes.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["CLONE_NEWNET", "netns_path", "nsenter_prefix", "run_in_netns"]

CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(netns: str | os.PathLike[str] | None) -> Path | None:
    """A namespace name (``/run/netns/NAME``) or path; None = current."""
    if netns is None:
        return None
    p = Path(netns)
    return p if p.is_absolute() else Path("/run/netns") / p


def nsenter_prefix(netns: str | os.PathLike[str] | None) -> list[str]:
    """argv prefix running a command in ``netns`` (empty for the current one)."""
    path = netns_path(netns)
    return [] if path is None else ["nsenter", f"--net={path}"]


def enter_netns(path: str | os.PathLike[str]) -> None:
    """Move the calling thread (only it) into the network namespace at ``path``: for
    threads that live there for good, e.g. a thread pool's initializer."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(netns: str | os.PathLike[str] | None, fn: Callable[[], T]) -> T:
    """Call ``fn()`` with the calling thread inside ``netns``; return its result."""
    path = netns_path(netns)
    if path is None:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            enter_netns(path)
            result.append(fn())
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=body, name=f"netns:{path.name}", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]
