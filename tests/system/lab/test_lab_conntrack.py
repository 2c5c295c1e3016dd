"""Flow state between real agents in a 2-host lab: a member's message is installed, a
replay and a forgery are not, `tessera conntrack --host` lists what an agent holds, and
the table survives `tessera lab agent stop/start`.

The messages are written by a script run in h1's namespace, sent from h1's underlay
address to h2's agent on UDP 6677: the exchange the simulation adapter will use.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from lab_helpers import Lab, Snapshot, agent_status, require_agent, root_missing, tessera

from support.wait import wait_until
from tessera.lab import names

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

_SEND = """
import socket, sys
from tessera.agent.flowstate.wire import encode, encode_record
from tessera.simulation.flowstate import NatBinding, NatEntry, NatKey
sender, src, dst, epoch, seq, sport = sys.argv[1:7]
key = NatKey("fwd_snat", 6, 0x0A000001, int(sport), 0x0A000002, 80, "lab-zone")
entry = NatEntry(key, NatBinding(0xC6336401, 50000 + int(sport)))
data = encode(sender, int(epoch), int(seq), [encode_record("add", entry, 600.0)])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.sendto(data, (dst, 6677))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_agent()
    before = Snapshot.take()
    the_lab = Lab()
    try:
        the_lab.up("--hosts", "2", "--datapath", "userspace")
        yield the_lab
    finally:
        the_lab.down()
        the_lab.assert_gone(before)


def _addresses(lab: Lab) -> dict[str, str]:
    zones = lab.get("/tunnel_zones")
    return {m["host_id"]: m["ip_address"] for z in zones for m in z["hosts"]}


def _send(lab: Lab, sender: str, src: str, dst: str, epoch: int, seq: int, sport: int) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", names.netns(lab.name, "h1"), sys.executable, "-c", _SEND,
         sender, src, dst, str(epoch), str(seq), str(sport)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def _entries(lab: Lab) -> list[dict[str, Any]]:
    # By host id: other labs on this machine may have an h2 too.
    out = tessera("conntrack", "--host", names.host_id(lab.name, 2), "--json").stdout
    entries: list[dict[str, Any]] = json.loads(out)["entries"]
    return entries


def _ports(lab: Lab) -> set[int]:
    return {e["forward"]["src_port"] for e in _entries(lab)}


def test_state_from_a_member_is_installed_replays_and_forgeries_are_not(lab: Lab) -> None:
    h1, h2 = names.host_id(lab.name, 1), names.host_id(lab.name, 2)
    addresses = wait_until(
        lambda: len(_addresses(lab)) == 2 and _addresses(lab), what="both hosts in the tunnel zone"
    )
    assert isinstance(addresses, dict)
    assert _entries(lab) == []
    _send(lab, h1, addresses[h1], addresses[h2], epoch=1, seq=1, sport=1111)
    wait_until(lambda: _ports(lab) == {1111}, what="h2 to install h1's state")
    (entry,) = _entries(lab)
    assert entry["nat"] == {"side": "fwd_snat", "ip": "198.51.100.1", "port": 51111}
    assert entry["return"]["dst_port"] == 51111 and entry["zone"] == "lab-zone"
    human = tessera("conntrack", "--host", h2).stdout
    assert "tcp 10.0.0.1:1111 > 10.0.0.2:80" in human and "fwd_snat→198.51.100.1:51111" in human
    # The same sequence number again, and h2's own id claimed from h1's address.
    _send(lab, h1, addresses[h1], addresses[h2], epoch=1, seq=1, sport=2222)
    _send(lab, h2, addresses[h1], addresses[h2], epoch=1, seq=2, sport=3333)
    _send(lab, h1, addresses[h1], addresses[h2], epoch=1, seq=2, sport=4444)  # a marker
    wait_until(lambda: 4444 in _ports(lab), what="the marker")
    assert _ports(lab) == {1111, 4444}
    assert agent_status(h2)["host_id"] == h2
    # A graceful restart keeps the table (the state file).
    assert "stopped" in lab.cmd("agent", "stop", "h2").stdout
    lab.cmd("agent", "start", "h2")
    wait_until(lambda: _safe_ports(lab) == {1111, 4444}, timeout=30, what="h2's new agent")


def _safe_ports(lab: Lab) -> set[int] | None:
    try:
        return _ports(lab)
    except AssertionError:  # the agent is not answering yet
        return None
