"""The eBPF backend's warm miss thread: after a miss it polls for a while instead of
sleeping, so a miss that follows closely skips the wake-up; idle, it sleeps.

The window is set long here (50 ms) so that "within the window" does not depend on the
machine's load; the agent's default is in `tessera.datapath.ebpf_backend.WARM_POLL`.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.ebpf import toolchain_missing
from tessera.datapath.ebpf.loader import BPFFS, ensure_bpffs
from tessera.datapath.ebpf_backend import EbpfDatapath
from tessera.lab.sandbox import Sandbox, SandboxFactory, cable_vm

pytestmark = pytest.mark.root

MAC1 = "02:00:00:00:01:01"
WINDOW = 0.050


@pytest.fixture
def warm(netns: SandboxFactory, tmp_path: Path) -> Iterator[tuple[Sandbox, EbpfDatapath]]:
    reason = toolchain_missing()
    if reason:
        pytest.skip(reason)
    host, vm1 = netns("host"), netns("vm1")
    cable_vm(host, "tap1", vm1, MAC1, "10.9.0.1/24")
    ensure_bpffs()
    dp = EbpfDatapath(
        BPFFS / f"tsd-{secrets.token_hex(4)}", cache_dir=tmp_path, vxlan_ifname=None,
        warm_poll=WINDOW,
    )  # fmt: skip
    try:
        host.call(dp.start)
        host.call(lambda: dp.add_port(1, "tap1", 11))
        yield vm1, dp
    finally:
        host.call(dp.close)
        dp.fastpath.purge()


def _send(vm: Sandbox, n: int) -> None:
    """A frame from the VM to a MAC nobody has: a miss on port 1."""

    def send() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind(("eth0", 0))
            dst = bytes([2, 0xEE, 0, 0, n, 1])
            s.send(dst + bytes.fromhex(MAC1.replace(":", "")) + b"\x88\xb5" + bytes(46))

    vm.call(send)


def _take(dp: EbpfDatapath, timeout: float) -> list[int]:
    return [m.frame[4] for m in dp.recv_misses(timeout)]


def test_a_miss_within_the_window_is_read_without_sleeping(
    warm: tuple[Sandbox, EbpfDatapath],
) -> None:
    vm, dp = warm
    _send(vm, 1)
    assert _take(dp, 2.0) == [1]  # handled: the window opens
    _send(vm, 2)
    assert _take(dp, 2.0) == [2]
    assert dp.warm_hits == 1, "the second miss was found by polling, not by a wake-up"
    time.sleep(WINDOW * 2)  # the window (reopened by the second miss) closes
    _send(vm, 3)
    time.sleep(0.01)
    assert _take(dp, 2.0) == [3]
    assert dp.warm_hits == 1, "after the window the thread sleeps in select(2)"


def test_an_idle_thread_sleeps_and_a_wakeup_ends_the_window(
    warm: tuple[Sandbox, EbpfDatapath],
) -> None:
    vm, dp = warm
    _send(vm, 1)
    assert _take(dp, 2.0) == [1]
    # A wake-up (events for the agent's loop) inside the window returns at once.
    dp.wakeup()
    started = time.monotonic()
    assert _take(dp, 2.0) == []
    assert time.monotonic() - started < WINDOW
    # Then: polled out the rest of the window, and slept, not spun, for the timeout.
    cpu = time.thread_time()
    started = time.monotonic()
    assert _take(dp, 0.5) == []
    assert _take(dp, 0.5) == []
    assert time.monotonic() - started >= 0.45
    assert time.thread_time() - cpu < WINDOW + 0.05, "an idle miss thread must not spin"
