"""State a peer sent ahead of a packet is read by the thread about to simulate that
packet's reply, even when the receiving thread has not run yet (a busy host)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence

import pytest

from tessera.agent.flowstate import transport
from tessera.agent.flowstate.entry import PROTO_TCP
from tessera.agent.flowstate.transport import FlowStateReceiver, FlowStateSender
from tessera.agent.flowstate.wire import Update
from tessera.agent.metrics import AgentMetrics
from tessera.simulation.flowstate import ConnKey, ConntrackEntry

SENDER = str(uuid.UUID(int=0x1234))


def test_pump_installs_waiting_state_on_the_calling_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asleep = threading.Event()

    def never_ready(*_args: object) -> tuple[list[object], list[object], list[object]]:
        asleep.set()
        time.sleep(0.05)  # the receiving thread never sees the socket readable
        return [], [], []

    monkeypatch.setattr(transport.select, "select", never_ready)
    metrics = AgentMetrics()
    got: list[tuple[str, Sequence[Update]]] = []
    receiver = FlowStateReceiver(
        lambda addr, sender: addr == "127.0.0.1" and sender == SENDER,
        lambda _sender, updates: got.append((threading.current_thread().name, updates)),
        metrics,
        address="127.0.0.1",
        port=0,
    )
    receiver.start()
    sender = FlowStateSender(SENDER, metrics, address="127.0.0.1", port=receiver.port)
    try:
        assert asleep.wait(5)
        entry = ConntrackEntry(ConnKey(PROTO_TCP, 0x0A000001, 0xCB00710A, 40000, 80, "dev"))
        assert sender.send(["127.0.0.1"], [("add", entry, 600.0)]) == 1
        assert receiver.pump() == 1
        assert [(name, [e.key for _op, e, _t in u]) for name, u in got] == [
            (threading.current_thread().name, [entry.key])
        ]
        assert receiver.pump() == 0  # nothing waits any more: one cheap empty read
    finally:
        sender.close()
        receiver.stop()
    assert receiver.pump() == 0  # stopped: no socket, no error


def test_a_burst_of_state_waits_in_the_socket_not_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer's sweep sends a burst of removals (a datagram per few dozen entries, a
    thousand and more after a burst of connections) while this host's threads are busy:
    the socket holds them all until read. With the kernel's default buffer most were
    dropped, and the copies they withdrew lived on."""

    def never_ready(*_args: object) -> tuple[list[object], list[object], list[object]]:
        time.sleep(0.05)  # the receiving thread is busy elsewhere
        return [], [], []

    monkeypatch.setattr(transport.select, "select", never_ready)
    metrics = AgentMetrics()
    got: list[Sequence[Update]] = []
    receiver = FlowStateReceiver(
        lambda addr, sender: addr == "127.0.0.1" and sender == SENDER,
        lambda _sender, updates: got.append(updates),
        metrics,
        address="127.0.0.1",
        port=0,
    )
    receiver.start()
    sender = FlowStateSender(SENDER, metrics, address="127.0.0.1", port=receiver.port)
    burst = 3000
    try:
        for i in range(burst):
            entry = ConntrackEntry(ConnKey(PROTO_TCP, 0x0A000001, 0xCB00710A, 1000 + i, 80, "dev"))
            assert sender.send(["127.0.0.1"], [("remove", entry, 600.0)]) == 1
        assert receiver.pump() == burst
        assert len(got) == burst
    finally:
        sender.close()
        receiver.stop()
