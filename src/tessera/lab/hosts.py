"""The lab's hypervisors: the underlay, one namespace per host, one agent per host.

    tsr-L-underlay:  br0 (bridge, MTU 1600) -- h1, h2, ... (veths)
    tsr-L-hK:        ul0 198.18.I.K/24 (MTU 1600), lo, and what the agent makes (vxlan0)

The agent runs inside its host namespace (`nsenter --net`, which keeps bpffs visible)
and reaches the NSDB through the relay on its own 127.0.0.1. Its command line and what it
leaves behind are spelt once, in `tessera.lab.agents`, for the bench and tests too.
"""

from __future__ import annotations

import time
from pathlib import Path

from tessera.lab import api, names, netns, procs, services
from tessera.lab import cassandra as lab_cassandra
from tessera.lab.agents import BPF_PIN_ROOT as BPF_PIN_ROOT  # `lab down` finds them here
from tessera.lab.agents import AgentSpec
from tessera.lab.agents import remove_agent_leftovers as remove_agent_leftovers
from tessera.lab.errors import LabError
from tessera.lab.state import HostState, LabState

AGENT_STOP_TIMEOUT = 10.0


def host_state(state: LabState, index: int) -> HostState:
    return HostState(
        name=names.host_name(index),
        index=index,
        host_id=names.host_id(state.name, index),
        underlay_ip=names.underlay_address(state.index, index),
    )


def ensure_underlay(state: LabState) -> None:
    ns = state.netns(names.UNDERLAY)
    netns.add(ns)
    bridge = names.UNDERLAY_BRIDGE
    if not netns.link_exists(ns, bridge):
        netns.ip(ns, "link", "add", bridge, "mtu", str(names.UNDERLAY_MTU), "type", "bridge")
    netns.ip(ns, "link", "set", bridge, "mtu", str(names.UNDERLAY_MTU), "up")


def ensure_host(state: LabState, host: HostState) -> None:
    """Host namespace cabled to the underlay bridge, with its underlay address."""
    ns, ul = state.netns(host.name), state.netns(names.UNDERLAY)
    mtu = str(names.UNDERLAY_MTU)
    netns.add(ns)
    if not netns.link_exists(ns, names.HOST_UPLINK):
        if netns.link_exists(ul, host.name):  # the other end of a cable whose host end died
            netns.ip(ul, "link", "delete", host.name)
        netns.ip(
            ul, "link", "add", host.name, "mtu", mtu, "type", "veth",
            "peer", "name", names.HOST_UPLINK, "mtu", mtu, "netns", ns,
        )  # fmt: skip
    netns.ip(ul, "link", "set", host.name, "master", names.UNDERLAY_BRIDGE, "mtu", mtu, "up")
    address = f"{host.underlay_ip}/{names.underlay_network(state.index).prefixlen}"
    if address not in netns.ipv4_addresses(ns, names.HOST_UPLINK):
        netns.ip(ns, "addr", "replace", address, "dev", names.HOST_UPLINK)
    netns.ip(ns, "link", "set", names.HOST_UPLINK, "mtu", mtu, "up")


def agent_process(host: HostState) -> str:
    return f"agent-{host.name}"


def agent_pid(state: LabState, host: HostState) -> int | None:
    return procs.read_pid(state.pid_file(agent_process(host)))


def start_agent(state: LabState, host: HostState) -> int:
    """Start the host's agent unless it runs; returns its pid."""
    pid_file = state.pid_file(agent_process(host))
    pid = procs.read_pid(pid_file)
    if pid is not None:
        return pid
    if state.tunnel_zone_id is None:
        raise LabError(f"lab {state.name} has no tunnel zone yet: run `tessera lab up`")
    spec = AgentSpec(
        host_id=host.host_id,
        name=host.name,
        nsdb=services.agent_nsdb_url(state),
        datapath=state.datapath,
        underlay_ip=host.underlay_ip,
        tunnel_zone=state.tunnel_zone_id,
        state_dir=agent_state_dir(state),
        cassandra=lab_cassandra.agent_contact_points(state),
    )
    argv = [*netns.nsenter(state.netns(host.name)), *spec.argv()]
    return procs.spawn(argv, pid_file, state.log_file(agent_process(host)), owner=state.dir)


def agent_state_dir(state: LabState) -> Path:
    """The agents' --state-dir (shared: each keeps its files under its host id)."""
    return state.dir / "agent"


def flow_state_files(state: LabState, host: HostState) -> list[Path]:
    """The files the host's agent saves its connection table in (the table, and the
    temporary file a save writes before renaming it)."""
    from tessera.agent.flowstate.persist import state_file

    saved = state_file(agent_state_dir(state), host.host_id)
    return [saved, saved.with_name(saved.name + ".tmp")]


def stop_agent(state: LabState, host: HostState) -> None:
    if not procs.stop(state.pid_file(agent_process(host)), AGENT_STOP_TIMEOUT):
        raise LabError(f"the agent of {host.name} would not stop")


def wait_agents_alive(state: LabState, hosts: list[HostState], timeout: float) -> None:
    """Until the API reports every host in `hosts` alive. An agent that exits on the way
    fails at once with its last log lines."""
    deadline = time.monotonic() + timeout
    want = {h.host_id: h for h in hosts}
    with api.client(state) as client:
        while True:
            for host in want.values():
                if agent_pid(state, host) is None:
                    log = state.log_file(agent_process(host))
                    raise LabError(
                        f"the agent of {host.name} exited ({procs.last_lines(log)}); see {log}"
                    )
            missing = api.wait_alive(client, set(want), timeout=min(1.0, _left(deadline)))
            if not missing:
                return
            if _left(deadline) <= 0:
                late = sorted((want[h] for h in missing), key=lambda h: h.index)
                names_ = ", ".join(h.name for h in late)
                logs = ", ".join(str(state.log_file(agent_process(h))) for h in late)
                raise LabError(
                    f"lab {state.name}: {names_} not alive after {timeout:g}s (agent logs: {logs})"
                )


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
