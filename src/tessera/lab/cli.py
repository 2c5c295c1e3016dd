"""`tessera lab`: the emulated cloud on one machine (docs/lab.md).

    tessera lab up [--hosts N] [--name LAB] [--datapath ebpf|userspace] [--nsdb URL]
                   [--cluster-nodes N] [--embedded-zookeeper] [--cassandra N]
                   [--host-vcpus N] [--host-ram MB]
    tessera lab vm add NAME --host hK --port PORT_ID [--mac] [--ip] [--gw] [--dhcp] [--mtu]
    tessera lab vm add NAME --schedule [--vcpus N] [--ram MB] --port PORT_ID [...]
    tessera lab vm del NAME
    tessera lab exec NAME -- CMD [ARGS...]
    tessera lab status [--json]
    tessera lab agent stop [--wipe-flow-state] hK     tessera lab agent start hK
    tessera lab nsdb stop|start
    tessera lab cassandra stop|start nK
    tessera lab down [--name LAB]

Every command but `up` acts on `--name` (or $TESSERA_LAB), else on the only lab there is.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

from tessera.clikit.session import current_session
from tessera.lab import cassandra as lab_cassandra
from tessera.lab import down as down_mod
from tessera.lab import faults, names, netns, state, status, up, vms
from tessera.lab.errors import LabError
from tessera.lab.state import LabState

LAB_ENV = "TESSERA_LAB"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The emulated cloud on one machine: hosts and VMs as network namespaces.",
)
vm_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Add or remove a VM.")
agent_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Stop or start an agent.")
nsdb_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Stop or start the lab's ZooKeeper."
)
app.add_typer(vm_app, name="vm")
app.add_typer(agent_app, name="agent")
app.add_typer(nsdb_app, name="nsdb")
cassandra_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Stop or start a node of the lab's Cassandra."
)
app.add_typer(cassandra_app, name="cassandra")

NameOption = Annotated[
    str | None,
    typer.Option(
        "--name", metavar="LAB", envvar=LAB_ENV, show_default=False,
        help="The lab (default: the only one running).",
    ),
]  # fmt: skip


def _lab(name: str | None) -> LabState:
    up.check_machine()
    return state.resolve(name)


def _say(lab: str) -> up.Say:
    def say(line: str) -> None:
        typer.echo(f"lab {lab}: {line}")

    return say


@app.command("up")
def up_command(
    hosts: Annotated[
        int | None,
        typer.Option(
            "--hosts",
            min=1,
            max=names.MAX_HOSTS,
            show_default=False,
            help=f"Hosts h1..hN (default: {up.DEFAULT_HOSTS}, or as many as the lab has).",
        ),
    ] = None,
    name: Annotated[
        str, typer.Option("--name", metavar="LAB", envvar=LAB_ENV, help="The lab's name.")
    ] = names.DEFAULT_LAB,
    datapath: Annotated[
        str | None,
        typer.Option(
            "--datapath",
            metavar="ebpf|userspace",
            show_default=False,
            help="The agents' packet path (default: ebpf).",
        ),
    ] = None,
    nsdb: Annotated[
        str | None,
        typer.Option(
            "--nsdb",
            metavar="zk://HOST:PORT/ROOT",
            show_default=False,
            help="Use this ZooKeeper instead of starting one.",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for the agents.")
    ] = up.ALIVE_TIMEOUT,
    cluster_nodes: Annotated[
        int | None,
        typer.Option(
            "--cluster-nodes",
            min=1,
            show_default=False,
            help="Cluster nodes (default 1: the API process; more run `tessera cluster serve`).",
        ),
    ] = None,
    embedded_zookeeper: Annotated[
        bool,
        typer.Option(
            "--embedded-zookeeper",
            help="No separate ZooKeeper: each cluster node runs a member of the NSDB's "
            "ensemble (an odd number of nodes; remembered by the lab).",
        ),
    ] = False,
    cassandra: Annotated[
        int | None,
        typer.Option(
            "--cassandra",
            metavar="N",
            min=0,
            max=lab_cassandra.MAX_NODES,
            show_default=False,
            help="Also run an N-node Cassandra cluster on 127.0.I.2.. (remembered by the lab); "
            "the hosts then register in placement and keep their flow state there.",
        ),
    ] = None,
    host_vcpus: Annotated[
        int | None,
        typer.Option(
            "--host-vcpus",
            metavar="N",
            min=1,
            show_default=False,
            help="VCPUs each host reports to placement (default: this machine's CPUs, "
            "allocation ratio 4; remembered by the lab).",
        ),
    ] = None,
    host_ram: Annotated[
        int | None,
        typer.Option(
            "--host-ram",
            metavar="MB",
            min=1,
            show_default=False,
            help="MEMORY_MB each host reports to placement (default: this machine's "
            "memory less 512; remembered by the lab).",
        ),
    ] = None,
) -> None:
    """Start the lab (or check and repair it); the last line is `TESSERA_API=URL`."""
    lab = up.up(
        name,
        hosts,
        datapath,
        nsdb,
        _say(name),
        timeout=timeout,
        cluster_nodes=cluster_nodes,
        embedded_zookeeper=embedded_zookeeper,
        cassandra_nodes=cassandra,
        host_vcpus=host_vcpus,
        host_ram_mb=host_ram,
    )
    typer.echo(f"TESSERA_API={lab.api_url}")


@app.command("down")
def down_command(
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            metavar="LAB",
            envvar=LAB_ENV,
            show_default=False,
            help="The lab (default: the only one there is).",
        ),
    ] = None,
) -> None:
    """Stop every process of the lab and remove everything it made."""
    up.check_machine()
    if name is None:
        labs = state.existing_labs()
        if not labs:
            typer.echo("no lab is running")
            return
        if len(labs) > 1:
            raise LabError(f"several labs are running ({', '.join(labs)}): choose one with --name")
        name = labs[0]
    if down_mod.down(name):
        typer.echo(f"lab {name}: down")
    else:
        typer.echo(f"no lab named '{name}' is running")


@app.command("status")
def status_command(
    ctx: typer.Context,
    name: NameOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Hosts (alive?) and VMs (host, port, addresses)."""
    data = status.gather(_lab(name))
    if json_output or current_session(ctx).json_output:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(status.render(data))


@app.command(
    "exec",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
def exec_command(
    target: Annotated[str, typer.Argument(metavar="NAME", help="A VM or host (h1, h2...).")],
    command: Annotated[
        list[str], typer.Argument(metavar="-- CMD [ARGS...]", help="The command to run.")
    ],
    name: NameOption = None,
) -> None:
    """Run CMD inside a VM or host namespace; its output and exit status are CMD's own."""
    lab = _lab(name)
    known = (
        target in lab.vms or target == names.UNDERLAY or any(h.name == target for h in lab.hosts)
    )
    if not known:
        choices = ", ".join([*(h.name for h in lab.hosts), *sorted(lab.vms)])
        raise LabError(f"lab {lab.name} has no VM or host '{target}' (there are: {choices})")
    ns = lab.netns(target)
    if not netns.exists(ns):
        raise LabError(f"the namespace of {target} ({ns}) is missing: `tessera lab up` repairs it")
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise LabError("no command given: tessera lab exec NAME -- CMD [ARGS...]")
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [*netns.nsenter(ns), *command]
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise LabError(f"cannot run nsenter: {exc.strerror or exc}") from None


@vm_app.command("add")
def vm_add(
    vm: Annotated[str, typer.Argument(metavar="NAME", help="The VM's name.")],
    port: Annotated[
        str, typer.Option("--port", metavar="PORT_ID", help="The virtual port to bind it to.")
    ],
    host: Annotated[
        str | None,
        typer.Option(
            "--host", metavar="hK", show_default=False, help="The host it runs on (or --schedule)."
        ),
    ] = None,
    mac: Annotated[str | None, typer.Option("--mac", help="eth0's MAC address.")] = None,
    ip: Annotated[
        str | None, typer.Option("--ip", metavar="ADDR/LEN", help="A static address.")
    ] = None,
    gw: Annotated[
        str | None, typer.Option("--gw", metavar="ADDR", help="The default gateway.")
    ] = None,
    use_dhcp: Annotated[
        bool, typer.Option("--dhcp", help="Configure eth0 by DHCP (udhcpc).")
    ] = False,
    mtu: Annotated[int | None, typer.Option("--mtu", help="eth0's MTU.")] = None,
    offload: Annotated[
        bool,
        typer.Option(
            "--offload/--no-offload",
            help="Leave eth0's tx checksum offload on (off: the kernel sums every packet).",
        ),
    ] = True,
    schedule: Annotated[
        bool,
        typer.Option(
            "--schedule",
            help="Let placement choose the host (a lab with Cassandra), for --vcpus and --ram.",
        ),
    ] = False,
    vcpus: Annotated[
        int | None,
        typer.Option(
            "--vcpus",
            metavar="N",
            min=1,
            show_default=False,
            help=f"VCPUs placement allocates (--schedule; default {vms.DEFAULT_VCPUS}).",
        ),
    ] = None,
    ram: Annotated[
        int | None,
        typer.Option(
            "--ram",
            metavar="MB",
            min=1,
            show_default=False,
            help=f"MEMORY_MB placement allocates (--schedule; default {vms.DEFAULT_RAM_MB}).",
        ),
    ] = None,
    name: NameOption = None,
) -> None:
    """Add a VM: a namespace with eth0, cabled to host hK (or the host placement chooses,
    --schedule) and bound to the port there."""
    if not schedule and (vcpus is not None or ram is not None):
        raise LabError("--vcpus and --ram are what --schedule asks placement for: add --schedule")
    request = (
        vms.Schedule(vcpus or vms.DEFAULT_VCPUS, ram or vms.DEFAULT_RAM_MB) if schedule else None
    )
    lab = _lab(name)
    with state.locked():
        lab = state.resolve(lab.name)  # fresh, under the lock
        made, notes = vms.add(
            lab, vm, host, port, mac=mac, ip=ip, gw=gw, use_dhcp=use_dhcp, mtu=mtu,
            offload=offload, schedule=request,
        )  # fmt: skip
    info = vms.describe(lab, made)
    addresses = ", ".join(info["addresses"]) or "no address"
    where = made.host
    if request is not None:
        where += (
            f" (chosen by placement for VCPU {request.vcpus}, MEMORY_MB {request.ram_mb}; "
            f"consumer {made.consumer})"
        )
    typer.echo(
        f"VM {vm} on {where}: eth0 {info['mac']} {addresses}, "
        f"bound to port {port} as {info['interface']}"
    )
    for note in notes:
        typer.echo(f"  {note}")


@vm_app.command("del")
def vm_del(
    vm: Annotated[str, typer.Argument(metavar="NAME", help="The VM's name.")],
    name: NameOption = None,
) -> None:
    """Remove a VM, unbind its port and free its placement allocation (--schedule)."""
    lab = _lab(name)
    with state.locked():
        lab = state.resolve(lab.name)
        unbound, notes = vms.delete(lab, vm)
    typer.echo(f"VM {vm} removed" + ("" if unbound else " (its port was bound elsewhere or gone)"))
    for note in notes:
        typer.echo(f"  {note}")


@agent_app.command("stop")
def agent_stop(
    host: Annotated[str, typer.Argument(metavar="hK", help="The host.")],
    wipe_flow_state: Annotated[
        bool,
        typer.Option(
            "--wipe-flow-state",
            help="Also delete the flow-state file the agent saved on stop: the host lost "
            "its disk, and the agent starts without local connection state.",
        ),
    ] = False,
    name: NameOption = None,
) -> None:
    """Stop a host's agent (its VMs, bindings and installed flows stay)."""
    lab = _lab(name)
    if faults.agent_stop(lab, host):
        typer.echo(f"agent of {host} stopped")
    else:
        typer.echo(f"agent of {host} was not running")
    if wipe_flow_state:
        wiped = faults.wipe_flow_state(lab, host)
        typer.echo(
            f"its flow-state file wiped ({', '.join(str(p) for p in wiped)})"
            if wiped
            else "it had no flow-state file"
        )


@agent_app.command("start")
def agent_start(
    host: Annotated[str, typer.Argument(metavar="hK", help="The host.")],
    name: NameOption = None,
) -> None:
    """Start a host's agent and wait until its host is alive."""
    lab = _lab(name)
    pid = faults.agent_start(lab, host)
    typer.echo(f"agent of {host} running (pid {pid}), host alive")


@nsdb_app.command("stop")
def nsdb_stop(name: NameOption = None) -> None:
    """Stop the lab's ZooKeeper (agents keep forwarding with what they have)."""
    lab = _lab(name)
    if faults.nsdb_stop(lab):
        typer.echo("ZooKeeper stopped")
    else:
        typer.echo("ZooKeeper was not running")


@nsdb_app.command("start")
def nsdb_start(name: NameOption = None) -> None:
    """Start the lab's ZooKeeper again, same port, same data."""
    lab = _lab(name)
    typer.echo(f"ZooKeeper running on {faults.nsdb_start(lab)}")


@cassandra_app.command("stop")
def cassandra_stop(
    node: Annotated[str, typer.Argument(metavar="nK", help="The node (n1, n2...).")],
    name: NameOption = None,
) -> None:
    """Stop one Cassandra node (clean shutdown; its data stays)."""
    lab = _lab(name)
    # No lab lock: the state is only read, and a node may take a while to stop or start
    # (other labs' commands must not wait for it).
    stopped = lab_cassandra.stop_node(lab, node)
    typer.echo(f"Cassandra {node} {'stopped' if stopped else 'was not running'}")


@cassandra_app.command("start")
def cassandra_start(
    node: Annotated[str, typer.Argument(metavar="nK", help="The node (n1, n2...).")],
    name: NameOption = None,
) -> None:
    """Start one Cassandra node again (same address, data and token); waits until UN."""
    lab = _lab(name)
    address = lab_cassandra.start_node(lab, node)
    typer.echo(f"Cassandra {node} running on {address}, UN")
