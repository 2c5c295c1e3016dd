"""`tessera lab up --cassandra 2`: the lab runs a two-node Cassandra cluster on 127.0.I.2
and .3, every node UN and the keyspace `tessera` with RF 2; the agents keep their flow
state in it (through the relay); `lab cassandra stop|start`
are faults the cluster rides out; `up` refuses to resize the ring; `lab down` leaves no
JVM, file or namespace.

One lab for the module (one host: the agents are not what is tested here).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import Lab, Snapshot, require_agent, root_missing, tessera

from tessera.cassandra import client

# Starting Cassandra (in the first test's setup) may take minutes on a busy machine.
pytestmark = [
    pytest.mark.timeout(1200),
    pytest.mark.system,
    pytest.mark.root,
    pytest.mark.cassandra,
    pytest.mark.slow,
]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

UP_TIMEOUT = 600.0  # two JVMs on a busy 2-core machine


def _naming(directory: Path) -> list[int]:
    """Live processes whose command line names something under `directory`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            if (
                state not in ("Z", "X")
                and str(directory).encode() in (entry / "cmdline").read_bytes()
            ):
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_agent()
    before = Snapshot.take()
    made = Lab()
    directory = made.dir
    try:
        out = made.up(
            "--hosts", "1", "--cassandra", "2", "--timeout", "300", timeout=UP_TIMEOUT
        ).stdout
        assert "Cassandra    2 node(s) UN" in out, out
        yield made
    finally:
        made.down()
        left = _naming(directory)
        for pid in left:  # not to outlive the test; reported below
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert left == [], f"processes left behind: {left}"
        assert not directory.exists()
        made.assert_gone(before)


def _ring(lab: Lab) -> dict[str, Any]:
    ring: dict[str, Any] = lab.status()["cassandra"]
    return ring


def _cassandra(lab: Lab, action: str, node: str) -> str:
    return tessera("lab", "cassandra", action, "--name", lab.name, node, timeout=UP_TIMEOUT).stdout


def test_two_nodes_up_normal_with_the_keyspace(lab: Lab) -> None:
    ring = _ring(lab)
    index = int(ring["nodes"][0]["address"].split(".")[2])
    assert [n["address"] for n in ring["nodes"]] == [f"127.0.{index}.2", f"127.0.{index}.3"]
    assert [n["state"] for n in ring["nodes"]] == ["UN", "UN"]
    assert ring["keyspace"] == "tessera" and ring["replication_factor"] == 2
    assert "Cassandra keyspace tessera (RF 2)" in lab.cmd("status").stdout
    driver, session = client.connect([n["address"] for n in ring["nodes"]], "tessera")
    try:
        row = session.execute(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = 'tessera'"
        ).one()
        assert row.replication["replication_factor"] == "2"
        session.execute("CREATE TABLE IF NOT EXISTS kv (k text PRIMARY KEY, v int)")
        session.execute("INSERT INTO kv (k, v) VALUES ('lab', 7)")
        assert session.execute("SELECT v FROM kv WHERE k = 'lab'").one().v == 7
    finally:
        driver.shutdown()


def test_the_agents_keep_their_flow_state_there(lab: Lab) -> None:
    """The agent runs with `--flow-state cassandra`, reaching the nodes from its host
    namespace through the lab's relay (the nodes' addresses relayed as themselves)."""
    from support.wait import wait_until
    from tessera.agent.control import agents_dir, request

    host_id = lab.status()["hosts"][0]["host_id"]

    def report() -> dict[str, Any]:
        answer: dict[str, Any] = request(agents_dir() / f"{host_id}.sock", "conntrack")
        return answer

    wait_until(lambda: report().get("cassandra", {}).get("active"), timeout=60,
               what="the agent's flow state in Cassandra")  # fmt: skip
    ring = _ring(lab)
    driver, session = client.connect([n["address"] for n in ring["nodes"]], "tessera")
    try:
        tables = {
            r.table_name
            for r in session.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = 'tessera'"
            )
        }
        assert {"flow_state", "flow_state_by_host"} <= tables
    finally:
        driver.shutdown()


def test_a_node_stopped_and_started_again(lab: Lab) -> None:
    assert "Cassandra n2 stopped" in _cassandra(lab, "stop", "n2")
    assert [n["state"] for n in _ring(lab)["nodes"]] == ["UN", "DN"]
    assert "was not running" in _cassandra(lab, "stop", "n2")
    # n1 alone still answers (RF 2, consistency ONE).
    first = _ring(lab)["nodes"][0]["address"]
    driver, session = client.connect([first], "tessera")
    try:
        assert session.execute("SELECT v FROM kv WHERE k = 'lab'").one().v == 7
    finally:
        driver.shutdown()
    assert "UN" in _cassandra(lab, "start", "n2")
    assert [n["state"] for n in _ring(lab)["nodes"]] == ["UN", "UN"]


def test_bad_requests_are_clear_errors(lab: Lab) -> None:
    resize = tessera("lab", "up", "--name", lab.name, "--cassandra", "3", check=False)
    assert resize.returncode != 0
    assert "cannot grow or shrink" in resize.stderr
    unknown = tessera("lab", "cassandra", "stop", "--name", lab.name, "n9", check=False)
    assert unknown.returncode != 0
    assert "no Cassandra node 'n9'" in unknown.stderr
