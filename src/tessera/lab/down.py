"""`tessera lab down`: stop what the lab started, remove what it made, leave nothing.

It works from whatever is there, not from what should be: the pid files in the lab's
directory, every namespace named `tsr-LAB-*`, the pins and control files of the lab's
host ids (derived from the lab name, so found even without a state file). A lab that
was only half made, or whose processes already died, comes down the same way. Each step
goes on when an earlier one failed; what could not be removed is listed at the end.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import sys
import time
from collections.abc import Callable

from tessera.agent.control import agents_dir
from tessera.client.errors import ApiError, UserError
from tessera.client.rest import ApiClient
from tessera.lab import api, hosts, names, netns, procs, services, state, vms
from tessera.lab import cassandra as lab_cassandra
from tessera.lab.errors import LabError
from tessera.lab.state import HostState, LabState


def down(name: str) -> bool:
    """Take lab `name` down; False when there was nothing to take down."""
    names.check_lab_name(name)
    with state.locked():
        try:
            lab = state.load(name)
        except LabError as exc:
            _warn(exc.message)
            lab = None
        directory = state.lab_dir(name)
        prefix = names.netns_prefix(name)
        namespaces = [ns for ns in netns.listed() if ns.startswith(prefix)]
        if lab is None and not namespaces and not directory.exists():
            return False
        problems: list[str] = []
        if lab is not None and not lab.own_nsdb:
            _forget_in_nsdb(lab, problems)
        else:
            _stop_agents(name, problems)
        _step(problems, lambda: vms.kill_inside(namespaces))
        _step(problems, lambda: _stop_services(name, lab, problems))
        # Every agent is stopped by now, also those whose pid files were lost. Their
        # datapaths need no `tessera agent --cleanup`: deleting a host's namespace
        # takes its devices and their filters along, and what lives outside it (pins
        # on the machine's bpffs, control files) goes with the agent's leftovers below.
        for ns in namespaces:
            _step(problems, functools.partial(netns.delete, ns))
        for host_id in _host_ids(name, lab, namespaces):
            _step(problems, functools.partial(hosts.remove_agent_leftovers, host_id))
        _step(problems, lambda: shutil.rmtree(directory) if directory.exists() else None)
        state.prune_empty_dirs(agents_dir(), agents_dir().parent, hosts.BPF_PIN_ROOT)
        left = [ns for ns in netns.listed() if ns.startswith(prefix)]
        if left:
            problems.append(f"namespaces still there: {', '.join(left)}")
        if problems:
            raise LabError(f"lab {name} is down, but not cleanly: {'; '.join(problems)}")
    return True


def _step(problems: list[str], action: Callable[[], object]) -> None:
    try:
        action()
    except (UserError, OSError) as exc:
        problems.append(exc.message if isinstance(exc, UserError) else str(exc))


def _stop_agents(name: str, problems: list[str]) -> None:
    directory = state.lab_dir(name)
    pid_files = sorted(directory.glob("agent-*.pid")) if directory.exists() else []
    for pid_file in procs.stop_all(pid_files, hosts.AGENT_STOP_TIMEOUT):
        problems.append(f"{pid_file.stem} would not stop")


def _stop_services(name: str, lab: LabState | None, problems: list[str]) -> None:
    directory = state.lab_dir(name)
    services.signal_cluster_nodes(directory)
    for process in ("relay", "api"):
        if not procs.stop(directory / f"{process}.pid"):
            problems.append(f"the {process} process would not stop")
    for pid_file in sorted(directory.glob("*.pid")) if directory.exists() else []:
        if not procs.stop(pid_file):  # anything else the lab recorded
            problems.append(f"{pid_file.stem} would not stop")
    problems.extend(lab_cassandra.remove(directory))
    if (directory / "zookeeper").exists():
        probe = lab or LabState(name=name, index=0)
        services.stop_zookeeper(probe)
    for pid in procs.owned_by(directory):  # those whose pid file is lost
        if not procs.terminate(pid):
            problems.append(f"process {pid} would not stop")


def _host_ids(name: str, lab: LabState | None, namespaces: list[str]) -> set[str]:
    """The lab's host ids: recorded ones, and those derived from host namespaces."""
    found = {h.host_id for h in lab.hosts} if lab is not None else set()
    prefix = names.netns_prefix(name)
    for ns in namespaces:
        index = names.host_index(ns[len(prefix) :])
        if index is not None:
            found.add(names.host_id(name, index))
    return found


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _forget_in_nsdb(lab: LabState, problems: list[str]) -> None:
    """With an NSDB the lab does not own, take back what the lab wrote there: its VMs'
    bindings, its hosts and its tunnel zone. Best effort: a dead API only warns."""
    try:
        with api.client(lab) as client:
            if api.health(client) is None:
                raise LabError(f"the API at {lab.api_url} does not answer")
            for vm in lab.vms.values():
                host = lab.host(vm.host)
                api.unbind_if_ours(client, host.host_id, vm.port_id, names.vm_link(vm.name))
            _stop_agents(lab.name, problems)
            _delete_hosts(client, lab.hosts)
            if lab.tunnel_zone_id:
                with contextlib.suppress(UserError):
                    client.delete(f"/tunnel_zones/{lab.tunnel_zone_id}")
    except UserError as exc:
        _warn(
            f"lab {lab.name}'s hosts, bindings and tunnel zone stay in {lab.nsdb_url}: "
            f"{exc.message}"
        )
        _stop_agents(lab.name, problems)


def _delete_hosts(client: ApiClient, lab_hosts: list[HostState]) -> None:
    """Hosts read as dead shortly after their agents stopped (the liveness janitor
    follows their sessions); only then will the API delete them."""
    pending = {h.host_id for h in lab_hosts}
    deadline = time.monotonic() + 10.0
    while pending and time.monotonic() < deadline:
        for host_id in sorted(pending):
            try:
                client.delete(f"/hosts/{host_id}")
                pending.discard(host_id)
            except ApiError as exc:
                if exc.status == 404:
                    pending.discard(host_id)
        if pending:
            time.sleep(0.2)
