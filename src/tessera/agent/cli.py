"""`tessera agent`: run the per-hypervisor agent in the foreground until SIGTERM/SIGINT.

    tessera agent [--host-id ID] [--nsdb URL] [--datapath ebpf|userspace]
                  [--underlay-ip ADDR] [--tunnel-zone ID] [--state-dir DIR]
                  [--name NAME] [--metrics ADDR:PORT] [--log-level LEVEL]
                  [--flow-state local|cassandra] [--cassandra HOST[,HOST...]]
    tessera agent --cleanup [--host-id ID] [--state-dir DIR]

The host id is kept in `<state dir>/host_id` (or `$TESSERA_HOST_ID_FILE`) so that it
survives restarts; `--host-id` overrides it. The flow table is served on a unix socket
under `$TESSERA_RUN_DIR` (default /run/tessera) for `tessera flows`.

Stopping the agent (SIGTERM) leaves the datapath forwarding and the NSDB session to time
out; `--cleanup` is the separate, explicit act that removes the datapath (docs/agent.md).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from tessera.agent import gctuning
from tessera.agent.hostid import DEFAULT_STATE_DIR, HostIdError, resolve
from tessera.client.errors import BadArgument, UserError

if TYPE_CHECKING:
    from tessera.agent.agent import Agent
    from tessera.nsdb.base import Nsdb

DEFAULT_NSDB = "zk://127.0.0.1:2181/tessera"
NSDB_ENV = "TESSERA_NSDB"
CASSANDRA_ENV = "TESSERA_CASSANDRA"

app = typer.Typer(add_completion=False)


@app.command()
def agent(
    host_id: Annotated[
        str | None, typer.Option("--host-id", help="This host's id (default: kept on disk).")
    ] = None,
    nsdb: Annotated[
        str,
        typer.Option(
            "--nsdb", metavar="zk://HOST:PORT/ROOT", envvar=NSDB_ENV, help="The NSDB to use."
        ),
    ] = DEFAULT_NSDB,
    datapath: Annotated[
        str, typer.Option("--datapath", metavar="ebpf|userspace", help="Packet path backend.")
    ] = "ebpf",
    underlay_ip: Annotated[
        str | None,
        typer.Option("--underlay-ip", help="Local tunnel endpoint (default: the only address)."),
    ] = None,
    tunnel_zone: Annotated[
        str | None, typer.Option("--tunnel-zone", help="Tunnel zone id to join.")
    ] = None,
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Where the host id and compiled code live.")
    ] = DEFAULT_STATE_DIR,
    name: Annotated[
        str | None, typer.Option("--name", help="Host name to register (default: hostname).")
    ] = None,
    metrics: Annotated[
        str | None, typer.Option("--metrics", metavar="ADDR:PORT", help="Serve Prometheus metrics.")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="Logging level.")] = "INFO",
    flow_state: Annotated[
        str,
        typer.Option(
            "--flow-state",
            metavar="local|cassandra",
            help="Where connection state is kept besides the peer push: the local state "
            "file, or that and Cassandra (docs/flow-state-cassandra.md).",
        ),
    ] = "local",
    cassandra: Annotated[
        str,
        typer.Option(
            "--cassandra",
            metavar="HOST[,HOST...]",
            envvar=CASSANDRA_ENV,
            help="Cassandra contact points for --flow-state cassandra.",
        ),
    ] = "127.0.0.2",
    cassandra_keyspace: Annotated[
        str, typer.Option("--cassandra-keyspace", help="Keyspace for --flow-state cassandra.")
    ] = "tessera",
    tunnel_commit: Annotated[
        bool,
        typer.Option(
            "--tunnel-commit/--no-tunnel-commit",
            help="Ask other hosts' datapaths to track the connections whose replies enter "
            "there (the VNI's top bit). Turn it off while upgrading a cluster from a "
            "release whose datapath drops such packets; on again once every host runs this "
            "one.",
        ),
    ] = True,
    ct_entries: Annotated[
        int | None,
        typer.Option(
            "--ct-entries",
            envvar="TESSERA_CT_ENTRIES",
            help="Size of the datapath's connection table (default: keep the current "
            "table's; a new one holds 262,144). Another size than the current table's "
            "replaces it, with its connections.",
        ),
    ] = None,
    cleanup: Annotated[
        bool,
        typer.Option(
            "--cleanup",
            help="Remove this host's datapath (filters, pins, vxlan0, miss veth) and exit.",
        ),
    ] = False,
) -> None:
    """Run the agent of this hypervisor: register, watch, forward."""
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise BadArgument(f"--log-level must be DEBUG, INFO, WARNING or ERROR, not '{log_level}'")
    # Libraries (kazoo, pyroute2) stay at INFO even when tessera itself says DEBUG.
    logging.basicConfig(
        level=max(level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("tessera").setLevel(level)
    if datapath not in ("ebpf", "userspace"):
        raise BadArgument(f"--datapath must be ebpf or userspace, not '{datapath}'")
    if flow_state not in ("local", "cassandra"):
        raise BadArgument(f"--flow-state must be local or cassandra, not '{flow_state}'")
    contact_points = [c.strip() for c in cassandra.split(",") if c.strip()]
    if flow_state == "cassandra" and not contact_points:
        raise BadArgument("--flow-state cassandra needs --cassandra HOST[,HOST...]")
    if not cassandra_keyspace.isidentifier():
        raise BadArgument(f"--cassandra-keyspace '{cassandra_keyspace}' is not a CQL name")
    if ct_entries is not None:
        from tessera.datapath.conntrack import check_ct_entries

        try:
            check_ct_entries(ct_entries)
        except ValueError as exc:
            raise BadArgument(f"--ct-entries: {exc}") from None
    if cleanup:
        _cleanup(host_id, state_dir)
        return
    try:
        hid = resolve(host_id, state_dir)
    except HostIdError as exc:
        raise UserError(str(exc)) from None
    run_agent(
        host_id=hid,
        nsdb_url=nsdb,
        datapath=datapath,
        underlay_ip=underlay_ip,
        tunnel_zone=tunnel_zone,
        state_dir=state_dir,
        name=name or socket.gethostname(),
        metrics=metrics,
        cassandra=(contact_points, cassandra_keyspace) if flow_state == "cassandra" else None,
        tunnel_commit=tunnel_commit,
        ct_entries=ct_entries,
    )


def _cleanup(host_id: str | None, state_dir: Path) -> None:
    """`--cleanup`; without a kept host id there was never an agent here to clean up
    after (and none is made up)."""
    from tessera.agent.hostid import host_id_path
    from tessera.agent.setup import SetupError, cleanup_host

    if host_id is None and not host_id_path(state_dir).exists():
        print(f"no host id kept in {host_id_path(state_dir)}: no datapath to remove")
        return
    try:
        print("\n".join(cleanup_host(resolve(host_id, state_dir))))
    except (HostIdError, SetupError) as exc:
        raise UserError(str(exc)) from None


def run_agent(
    *,
    host_id: str,
    nsdb_url: str,
    datapath: str,
    underlay_ip: str | None,
    tunnel_zone: str | None,
    state_dir: Path,
    name: str,
    metrics: str | None,
    cassandra: tuple[list[str], str] | None = None,
    tunnel_commit: bool = True,
    ct_entries: int | None = None,
) -> None:
    from tessera.agent.agent import Agent
    from tessera.agent.control import run_dir
    from tessera.agent.flowstate.durable import DurableFlowState
    from tessera.agent.flowstate.transport import PORT as FLOWSTATE_PORT
    from tessera.agent.metrics import AgentMetrics
    from tessera.agent.registration import RegistrationError
    from tessera.agent.setup import SetupError, choose_underlay, make_datapath
    from tessera.datapath.base import DatapathError
    from tessera.nsdb.connect import open_connected
    from tessera.nsdb.errors import NsdbError, Unavailable

    log = logging.getLogger("tessera.agent")
    # The NSDB first: a wrong URL or an unreachable ZooKeeper must fail before the
    # datapath creates anything on this host (vxlan0, the miss veth, pins).
    try:
        client = open_connected(
            nsdb_url, hint="start ZooKeeper there or pass --nsdb zk://HOST:PORT/ROOT"
        )
    except Unavailable as exc:
        raise UserError(str(exc)) from None
    except (ValueError, NsdbError) as exc:
        raise UserError(f"cannot open the NSDB {nsdb_url}: {exc}") from None
    try:
        address, underlay_if = choose_underlay(underlay_ip)
        dp = make_datapath(datapath, host_id, state_dir, address, underlay_if, ct_entries)
    except SetupError as exc:
        _close_quietly(client)
        raise UserError(str(exc)) from None
    if address is None:
        log.warning("no underlay address: this host has no tunnels to other hosts")
    agent_metrics = AgentMetrics()
    the_agent = Agent(
        host_id,
        client,
        dp,
        name=name,
        underlay_ip=address,
        tunnel_zone=tunnel_zone,
        control_dir=run_dir(),
        metrics=agent_metrics,
        state_dir=state_dir,
        flowstate_port=FLOWSTATE_PORT if address is not None else None,
        flowstate_durable=(
            DurableFlowState(host_id, cassandra[0], cassandra[1]) if cassandra else None
        ),
        tunnel_commit=tunnel_commit,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        the_agent.start()
    except (DatapathError, RegistrationError, NsdbError, OSError) as exc:
        _safe_stop(the_agent, client)
        raise UserError(f"the agent cannot start: {exc}") from None
    gctuning.tune()  # after start: what exists now lives as long as the agent
    if metrics:
        try:
            agent_metrics.serve(metrics)
        except (OSError, ValueError) as exc:
            log.warning("metrics not served on %s: %s", metrics, exc)
    log.info(
        "agent of host %s (%s) running: datapath %s, underlay %s",
        host_id, name, datapath, address or "none",
    )  # fmt: skip
    the_agent.run_in_thread()
    while not stop.wait(0.5):
        pass
    log.info("stopping")
    _safe_stop(the_agent, client, end_session=False)


def _close_quietly(client: Nsdb) -> None:
    from tessera.nsdb.errors import NsdbError

    try:
        client.close()
    except NsdbError:
        pass


def _safe_stop(the_agent: Agent, client: Nsdb, *, end_session: bool = True) -> None:
    """A stop that is not a failure leaves the NSDB session open for the process exit to
    drop: ZooKeeper keeps it, and the MAC and ARP entries this host learned with it, for
    the session timeout, as after a kill. Its kernel keeps forwarding meanwhile, so they
    are still true; closing the session would withdraw them at once, and a peer router
    would then ARP for this host's VMs with no agent here to take the reply."""
    from tessera.nsdb.errors import NsdbError

    try:
        the_agent.stop()
    except (NsdbError, OSError) as exc:
        logging.getLogger("tessera.agent").warning("stopping: %s", exc)
    if end_session:
        _close_quietly(client)
