"""A datapath that executes its flows in Python, for fast agent tests.

Faucet tests its controller against a fake OpenFlow table that interprets the emitted
flows (`clib/fakeoftable.py`); this is the same idea: a test hands a frame to a port with
`receive()`, the fake looks it up in the installed megaflows exactly as the kernel would
and either records what was sent (`sent`) or queues a miss for the agent. Tests then ask
behavioural questions — "did this ping leave on port 2?" — instead of inspecting flows.

Fakes of several hosts joined by a `FakeFabric` deliver each other's tunnel output, so
cross-host paths are testable without namespaces.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

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
from tessera.datapath.table import MegaflowTable

DUMP_PART = 512  # flows per step of `dump_in_steps` (the eBPF map's batch)


@dataclass(frozen=True)
class Sent:
    """A frame that left: on a local port, or into a tunnel (vni as on the wire, with
    its commit bit; remote)."""

    frame: bytes
    port: int | None = None
    vni: int | None = None
    remote_ip: int | None = None


class FakeFabric:
    """The underlay between fake hosts: tunnel output reaches the fake at `remote_ip`."""

    def __init__(self) -> None:
        self.hosts: dict[int, FakeDatapath] = {}

    def deliver(self, remote_ip: int, vni: int, frame: bytes) -> None:
        host = self.hosts.get(remote_ip)
        if host is not None:
            host.receive_tunnel(vni, frame)


class FakeDatapath(PythonConntrack, Datapath):
    kind = "fake"

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        fabric: FakeFabric | None = None,
        underlay_ip: int | None = None,
    ) -> None:
        self.clock = clock
        self.table = MegaflowTable()
        self.conntrack = self.table.conntrack
        self._ports: dict[int, PortBinding] = {}
        self._misses: deque[Miss] = deque()
        self._cond = threading.Condition()
        self.sent: list[Sent] = []
        self.installs = 0  # every install() call, to check reconciliation is incremental
        self.deletes = 0
        self.started = False
        self.fabric = fabric
        if fabric is not None and underlay_ip is not None:
            fabric.hosts[underlay_ip] = self

    def ct_clock(self) -> float:
        return self.clock()

    # -- lifecycle --
    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.started = False
        self.wakeup()

    # -- ports --
    def add_port(self, port: int, ifname: str, tunnel_key: int | None = None) -> None:
        self._ports[port] = PortBinding(port, ifname, tunnel_key)

    def remove_port(self, port: int) -> None:
        if self._ports.pop(port, None) is not None:
            self.table.delete_outputs_to(port)
        self.table.conntrack.set_zone(port, 0)

    def ports(self) -> dict[int, PortBinding]:
        return dict(self._ports)

    # -- flows --
    def install(self, flow: Flow) -> None:
        self.installs += 1
        for action in flow.actions:  # the kernel cannot name a device it does not know
            if isinstance(action, Output) and action.port not in self._ports:
                raise DatapathError(
                    f"flow outputs to local port {action.port}, which is not attached"
                )
        self.table.install(flow)

    def delete(self, match: Match) -> bool:
        self.deletes += 1
        return self.table.delete(match)

    def dump(self) -> dict[Match, InstalledFlow]:
        return self.table.dump()

    def dump_in_steps(self) -> Iterator[dict[Match, InstalledFlow] | None]:
        """In parts of `DUMP_PART` flows, as the eBPF datapath reads its map: the table
        as it was at the first step, so a flow installed during the steps is missing
        from it, the case a stepped read must allow for."""
        entries = self.table.entries()
        flows: dict[Match, InstalledFlow] = {}
        for i in range(0, len(entries), DUMP_PART):
            # Decoded a part per step, as the map is read: at tens of thousands of flows
            # (a test's flood) a whole dump in one step held misses back for 50-90 ms.
            for e in entries[i : i + DUMP_PART]:
                flows[e.flow.match] = InstalledFlow(e.flow, e.stats())
            if i + DUMP_PART < len(entries):
                yield None
        yield flows

    def stats(self, match: Match) -> FlowStats | None:
        return self.table.stats(match)

    # -- packets --
    def recv_misses(self, timeout: float) -> list[Miss]:
        with self._cond:
            if not self._misses and timeout > 0:
                self._cond.wait(timeout)
            misses = self._misses
            return [misses.popleft() for _ in range(min(len(misses), MAX_MISSES_PER_WAKE))]

    def wakeup(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def reinject(self, miss: Miss) -> None:
        self._process(miss.port, miss.frame, reinjected=True)

    def execute(self, frame: bytes, actions: Sequence[Action]) -> None:
        self._emit(run_actions(frame, actions).outputs)

    # -- the test's side --
    def receive(self, port: int, frame: bytes) -> None:
        """A frame enters on local port `port` (a VM sent it)."""
        if port not in self._ports:
            return  # the kernel program drops frames of unknown ports too
        self._process(port, frame, reinjected=False)

    def receive_tunnel(self, vni: int, frame: bytes) -> None:
        """A frame arrives by VXLAN: delivered to the port with that tunnel key,
        unlooked-up; its connection committed there first if the VNI asks for it."""
        key, commit = split_vni(vni)
        for binding in self._ports.values():
            if binding.tunnel_key == key:
                if commit:
                    self.table.tunnel_commit(binding.port, frame, self.clock())
                self.sent.append(Sent(frame, port=binding.port))
                return

    def take_sent(self) -> list[Sent]:
        out, self.sent = self.sent, []
        return out

    def pending_misses(self) -> int:
        with self._cond:
            return len(self._misses)

    def _process(self, port: int, frame: bytes, *, reinjected: bool) -> None:
        result, ct_state = self.table.forward(port, frame, self.clock())
        if result is None:
            if not reinjected:
                self._queue_miss(port, frame, ct_state)
            return
        self._emit(result.outputs)
        if result.to_userspace and not reinjected:
            self._queue_miss(port, frame, ct_state)

    def _queue_miss(self, port: int, frame: bytes, ct_state: int = 0) -> None:
        with self._cond:
            self._misses.append(Miss(port, frame, self.clock(), ct_state=ct_state))
            self._cond.notify_all()

    def _emit(self, outputs: list[tuple[Output | OutputTunnel, bytes]]) -> None:
        for action, data in outputs:
            if isinstance(action, Output):
                if action.port in self._ports:  # a detached port has no VM behind it
                    self.sent.append(Sent(data, port=action.port))
            else:
                self.sent.append(Sent(data, vni=action.wire_vni, remote_ip=action.remote_ip))
                if self.fabric is not None:
                    self.fabric.deliver(action.remote_ip, action.wire_vni, data)
