"""Faults on demand: stop and start one host's agent (and wipe its flow-state file, a
lost disk), or the lab's ZooKeeper.

What stays in place meanwhile is the point of the exercise: VMs, their cables and
bindings, the kernel's installed flows (pinned maps), the other agents.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from tessera.lab import hosts, services, state
from tessera.lab.errors import LabError
from tessera.lab.state import LabState

START_TIMEOUT = 60.0


def agent_stop(lab: LabState, host_name: str) -> bool:
    """False when it was not running."""
    host = lab.host(host_name)
    with state.locked():
        if hosts.agent_pid(lab, host) is None:
            return False
        hosts.stop_agent(lab, host)
    return True


def agent_start(lab: LabState, host_name: str, timeout: float = START_TIMEOUT) -> int:
    """Start the agent and wait until its host is alive again; returns its pid."""
    host = lab.host(host_name)
    with state.locked():
        pid = hosts.start_agent(lab, host)
    hosts.wait_agents_alive(lab, [host], timeout)
    return pid


def _own_zookeeper(lab: LabState) -> None:
    if lab.embedded_zookeeper:
        raise LabError(
            f"lab {lab.name}'s ZooKeeper members run inside its cluster nodes: "
            "stop a node's process to stop its member"
        )
    if not lab.own_nsdb:
        raise LabError(f"lab {lab.name} uses the NSDB {lab.nsdb_url}, not a ZooKeeper of its own")


def nsdb_stop(lab: LabState) -> bool:
    _own_zookeeper(lab)
    with state.locked():
        if not services.zookeeper(lab).is_running:
            return False
        services.stop_zookeeper(lab)
    return True


def nsdb_start(lab: LabState) -> str:
    """Start it again on the same port with the same data; returns its address."""
    _own_zookeeper(lab)
    with state.locked():
        return services.ensure_zookeeper(lab).address


def wipe_flow_state(lab: LabState, host_name: str) -> list[Path]:
    """Delete the flow-state file of a host whose agent is stopped (and the temporary
    one a save in progress writes): the host lost its disk. Its agent then starts
    without local connection state; with Cassandra (`--cassandra N`) it loads its rows
    from there. Returns the files deleted."""
    host = lab.host(host_name)
    with state.locked():
        if hosts.agent_pid(lab, host) is not None:
            raise LabError(
                f"the agent of {host_name} runs: it would save its flow state again "
                f"(`tessera lab agent stop --wipe-flow-state {host_name}`)"
            )
        wiped = []
        for path in hosts.flow_state_files(lab, host):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                wiped.append(path)
    return wiped
