"""One way to drive any datapath: feed a frame into a port, see everything that came out.

The contract suite and the kernel-vs-Python test ask the same behavioural question of
every backend — "this frame entered port 1: what left, where, as which bytes, and what
did the agent get?" — so each backend sits behind a `Harness` with `exchange()`:

- `FakeHarness`: the fake datapath; a frame is handed to `receive()` and the answer is
  its `sent` list and miss queue, synchronously.
- `KernelHarness`: the userspace (AF_PACKET) or eBPF datapath in a "host" namespace,
  each local port `t<n>` a veth whose peer `w<n>` sits in a "wire" namespace, where
  the test sends with AF_PACKET and captures what the datapath delivers. Tunnel output
  crosses a veth underlay (198.18.0.1 → 198.18.0.2) to a UDP socket on port 4789 in a
  "far" namespace, which decapsulates. Namespaces are `tessera.lab.sandbox` sandboxes:
  nothing is created in the root namespace and `close()` removes everything.

Real devices deliver asynchronously: `exchange` waits until the expected number of
events (outputs plus misses) arrived, then a short while longer for anything
unexpected, so a backend that does more than it should fails as surely as one that
does less.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import secrets
import select
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tessera.datapath import links
from tessera.datapath.afpacket import PacketSocket
from tessera.datapath.base import Datapath
from tessera.datapath.ebpf.loader import BPFFS, ensure_bpffs
from tessera.datapath.ebpf_backend import EbpfDatapath
from tessera.datapath.fake import FakeDatapath
from tessera.datapath.userspace import UserspaceDatapath
from tessera.datapath.vxlan import VXLAN_PORT, decap, encap
from tessera.lab.sandbox import Sandbox, SandboxFactory
from tessera.packet.addr import ip_from_str

PREFIX = "tsk"  # sandbox names: tsk-<run id>-<role>
NPORTS = 3
UNDERLAY_LOCAL = "198.18.0.1"
REMOTE = "198.18.0.2"
REMOTE_IP = ip_from_str(REMOTE)
WAIT = 3.0  # for the events a test expects (a loaded CI machine is slow)
LINGER = 0.15  # then for the ones it does not expect
LINGER_NOTHING = 0.3  # when nothing at all is expected


def port_vni(port: int) -> int:
    """The tunnel key each harness gives local port `port`."""
    return 100 + port


Where = tuple[str, int] | tuple[str, int, int]  # ("port", n) | ("tunnel", vni, remote)


def at_port(port: int) -> Where:
    return ("port", port)


def in_tunnel(vni: int, remote_ip: int = REMOTE_IP) -> Where:
    return ("tunnel", vni, remote_ip)


@dataclass
class Seen:
    """What one frame caused: frames that left (where, bytes) and misses (port, bytes)."""

    outputs: list[tuple[Where, bytes]] = field(default_factory=list)
    misses: list[tuple[int, bytes]] = field(default_factory=list)
    # The ct_state each miss carried, in order (not part of equality: most tests
    # compare frames, the conntrack contract compares these).
    ct_states: list[int] = field(default_factory=list)

    def count(self) -> int:
        return len(self.outputs) + len(self.misses)

    def normal(self) -> tuple[Counter[tuple[Where, bytes]], Counter[tuple[int, bytes]]]:
        """Order-free form: copies of one packet leave several devices in no set order."""
        return Counter(self.outputs), Counter(self.misses)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Seen):
            return NotImplemented
        return self.normal() == other.normal()

    def __repr__(self) -> str:
        outs = ", ".join(f"{w}:{f.hex()}" for w, f in self.outputs)
        misses = ", ".join(f"{p}:{f.hex()}" for p, f in self.misses)
        return f"Seen(outputs=[{outs}], misses=[{misses}])"


def seen(
    outputs: list[tuple[Where, bytes]] | None = None, misses: list[tuple[int, bytes]] | None = None
) -> Seen:
    return Seen(list(outputs or []), list(misses or []))


class Harness(abc.ABC):
    kind: str
    dp: Datapath

    @abc.abstractmethod
    def send(self, port: int, frame: bytes) -> None:
        """`frame` enters local port `port`, as if the VM there sent it."""

    @abc.abstractmethod
    def send_tunnel(self, vni: int, frame: bytes) -> None:
        """`frame` arrives by VXLAN with `vni` from the remote host."""

    @abc.abstractmethod
    def remove_port(self, n: int) -> None: ...

    @abc.abstractmethod
    def add_port(self, n: int) -> None:
        """(Re)bind `t<n>` as local port n with its tunnel key."""

    @abc.abstractmethod
    def collect(self, expect: int) -> Seen:
        """What came out since the last collect: waits for `expect` events."""

    @abc.abstractmethod
    def drain(self) -> Seen:
        """Whatever is there now, without waiting."""

    def exchange(self, port: int, frame: bytes, expect: int = 0) -> Seen:
        """Send `frame` into `port`; what it caused (`expect`: how many events)."""
        self.drain()  # leftovers of an earlier step are not this frame's doing
        self.send(port, frame)
        return self.collect(expect)

    def reset(self) -> None:
        """No flows, no conntrack zones or entries, nothing pending: the state every
        test starts from."""
        for match in list(self.dp.dump()):
            self.dp.delete(match)
        for port in self.dp.port_zones():
            self.dp.set_port_zone(port, 0)
        for conn in self.dp.ct_entries():
            self.dp.ct_delete(conn)
        self.drain()

    @abc.abstractmethod
    def close(self) -> None: ...


class FakeHarness(Harness):
    kind = "fake"

    def __init__(self) -> None:
        self.dp = self.fake = FakeDatapath()
        self.fake.start()
        for n in range(1, NPORTS + 1):
            self.fake.add_port(n, f"t{n}", port_vni(n))

    def send(self, port: int, frame: bytes) -> None:
        self.fake.receive(port, frame)

    def send_tunnel(self, vni: int, frame: bytes) -> None:
        self.fake.receive_tunnel(vni, frame)

    def add_port(self, n: int) -> None:
        self.fake.add_port(n, f"t{n}", port_vni(n))

    def remove_port(self, n: int) -> None:
        self.fake.remove_port(n)

    def collect(self, expect: int) -> Seen:
        return self.drain()

    def drain(self) -> Seen:
        out = Seen()
        for s in self.fake.take_sent():
            if s.port is not None:
                out.outputs.append((at_port(s.port), s.frame))
            else:
                assert s.vni is not None and s.remote_ip is not None
                out.outputs.append((in_tunnel(s.vni, s.remote_ip), s.frame))
        misses = self.fake.recv_misses(0)
        out.misses = [(m.port, m.frame) for m in misses]
        out.ct_states = [m.ct_state for m in misses]
        return out

    def close(self) -> None:
        self.fake.close()


class KernelHarness(Harness):
    """`kind` is "userspace" or "ebpf"; `obj_cache` the compiled-object cache (eBPF)."""

    def __init__(self, kind: str, obj_cache: Path) -> None:
        self.kind = kind
        self.factory = SandboxFactory(PREFIX)
        self.dp = None  # type: ignore[assignment]
        self.captures: dict[int, PacketSocket] = {}
        self.udp: socket.socket | None = None
        try:
            self._build(obj_cache)
        except BaseException:
            self.close()
            raise

    def _build(self, obj_cache: Path) -> None:
        self.host = host = self.factory("host")
        self.wire = wire = self.factory("wire")
        self.far = far = self.factory("far")
        for n in range(1, NPORTS + 1):
            host.ip("link", "add", f"t{n}", "type", "veth", "peer", "name", f"w{n}",
                    "netns", wire.name)  # fmt: skip
            host.ip("link", "set", f"t{n}", "up")
            wire.ip("link", "set", f"w{n}", "up")
        _underlay(host, far)
        if self.kind == "ebpf":
            host.call(lambda: links.ensure_vxlan("vxlan0", "ul0"))
            ensure_bpffs()
            pin = BPFFS / f"{PREFIX}-{secrets.token_hex(4)}"
            ebpf = EbpfDatapath(pin, cache_dir=obj_cache, vxlan_ifname="vxlan0")
            try:
                host.call(ebpf.start)
            except BaseException:
                ebpf.fastpath.purge()
                raise
            self.dp = ebpf
        else:
            self.dp = UserspaceDatapath(UNDERLAY_LOCAL)
            host.call(self.dp.start)
        for n in range(1, NPORTS + 1):
            self.add_port(n)
            self.captures[n] = wire.call(functools.partial(PacketSocket, f"w{n}"))

        def far_socket() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((REMOTE, VXLAN_PORT))
            s.setblocking(False)
            return s

        self.udp = far.call(far_socket)

    def add_port(self, n: int) -> None:
        # Device work happens in the host namespace.
        self.host.call(lambda: self.dp.add_port(n, f"t{n}", port_vni(n)))

    def remove_port(self, n: int) -> None:
        self.host.call(lambda: self.dp.remove_port(n))

    def send(self, port: int, frame: bytes) -> None:
        self.captures[port].send(frame)

    def send_tunnel(self, vni: int, frame: bytes) -> None:
        assert self.udp is not None
        self.udp.sendto(encap(vni, frame), (UNDERLAY_LOCAL, VXLAN_PORT))

    def _read_available(self, out: Seen) -> None:
        for n, cap in self.captures.items():
            while (got := cap.recv()) is not None:
                out.outputs.append((at_port(n), got.with_tag()))
        if self.udp is not None:
            while True:
                try:
                    payload = self.udp.recv(65536)
                except BlockingIOError:
                    break
                inner = decap(payload)
                if inner is not None:
                    out.outputs.append((in_tunnel(inner[0]), inner[1]))
        for m in self.dp.recv_misses(0):
            out.misses.append((m.port, m.frame))
            out.ct_states.append(m.ct_state)

    def drain(self) -> Seen:
        out = Seen()
        self._read_available(out)
        return out

    def collect(self, expect: int) -> Seen:
        out = Seen()
        fds = [c.fileno() for c in self.captures.values()]
        if self.udp is not None:
            fds.append(self.udp.fileno())
        start = time.monotonic()
        linger = LINGER_NOTHING if expect == 0 else LINGER
        stop = start + (linger if expect == 0 else WAIT)
        complete = expect == 0
        while (left := stop - time.monotonic()) > 0:
            # Misses arrive on the datapath's own channel: poll it at a short interval.
            select.select(fds, [], [], min(left, 0.01))
            self._read_available(out)
            if not complete and out.count() >= expect:
                complete = True
                stop = time.monotonic() + linger
        return out

    def close(self) -> None:
        for cap in self.captures.values():
            cap.close()
        self.captures.clear()
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        if self.dp is not None and self.factory.made:
            dp = self.dp
            with contextlib.suppress(Exception):
                self.host.call(dp.close)
            if isinstance(dp, EbpfDatapath):
                dp.fastpath.purge()
        self.factory.cleanup()


def _underlay(host: Sandbox, far: Sandbox) -> None:
    host.ip("link", "add", "ul0", "mtu", "1600", "type", "veth", "peer", "name", "ul0",
            "netns", far.name)  # fmt: skip
    far.ip("link", "set", "ul0", "mtu", "1600")
    host.ip("addr", "add", f"{UNDERLAY_LOCAL}/24", "dev", "ul0")
    far.ip("addr", "add", f"{REMOTE}/24", "dev", "ul0")
    host.ip("link", "set", "ul0", "up")
    far.ip("link", "set", "ul0", "up")


def make_harness(kind: str, obj_cache: Path) -> Harness:
    if kind == "fake":
        return FakeHarness()
    return KernelHarness(kind, obj_cache)
