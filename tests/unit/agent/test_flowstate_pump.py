"""State a peer sent ahead of a packet is read by the thread about to simulate that
packet's reply, even when the receiving thread has not run yet (a busy host)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import pytest

from tessera.agent.flowstate import transport
from tessera.agent.flowstate.entry import PROTO_TCP
from tessera.agent.flowstate.transport import FlowStateReceiver, FlowStateSender
from tessera.agent.flowstate.wire import Update
from tessera.agent.metrics import AgentMetrics
from tessera.simulation.flowstate import ConnKey, ConntrackEntry

SENDER = str(uuid.UUID(int=0x1234))


class Busy:
    """A receiver whose thread never sees its socket readable (a busy host), what it
    delivered (the delivering thread's name and the updates), and a sender to it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.asleep = threading.Event()

        def never_ready(*_args: object) -> tuple[list[object], list[object], list[object]]:
            self.asleep.set()
            time.sleep(0.05)
            return [], [], []

        monkeypatch.setattr(transport.select, "select", never_ready)
        metrics = AgentMetrics()
        self.got: list[tuple[str, Sequence[Update]]] = []
        self.receiver = FlowStateReceiver(
            lambda addr, sender: addr == "127.0.0.1" and sender == SENDER,
            lambda _s, updates: self.got.append((threading.current_thread().name, updates)),
            metrics,
            address="127.0.0.1",
            port=0,
        )
        self.receiver.start()
        self.sender = FlowStateSender(SENDER, metrics, address="127.0.0.1", port=self.receiver.port)

    def close(self) -> None:
        self.sender.close()
        self.receiver.stop()


@pytest.fixture
def busy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Busy]:
    b = Busy(monkeypatch)
    yield b
    b.close()


def test_pump_installs_waiting_state_on_the_calling_thread(busy: Busy) -> None:
    receiver, sender, got = busy.receiver, busy.sender, busy.got
    assert busy.asleep.wait(5)
    entry = ConntrackEntry(ConnKey(PROTO_TCP, 0x0A000001, 0xCB00710A, 40000, 80, "dev"))
    assert sender.send(["127.0.0.1"], [("add", entry, 600.0)]) == 1
    assert receiver.pump() == 1
    assert [(name, [e.key for _op, e, _t in u]) for name, u in got] == [
        (threading.current_thread().name, [entry.key])
    ]
    assert receiver.pump() == 0  # nothing waits any more: one cheap empty read
    busy.close()
    assert receiver.pump() == 0  # stopped: no socket, no error


def test_a_burst_of_state_waits_in_the_socket_not_lost(busy: Busy) -> None:
    """A peer's sweep sends a burst of removals (a datagram per few dozen entries, a
    thousand and more after a burst of connections) while this host's threads are busy:
    the socket holds them all until read. With the kernel's default buffer most were
    dropped, and the copies they withdrew lived on."""
    burst = 3000
    for i in range(burst):
        entry = ConntrackEntry(ConnKey(PROTO_TCP, 0x0A000001, 0xCB00710A, 1000 + i, 80, "dev"))
        assert busy.sender.send(["127.0.0.1"], [("remove", entry, 600.0)]) == 1
    assert busy.receiver.pump() == burst
    assert len(busy.got) == burst
