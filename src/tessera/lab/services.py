"""The lab's shared processes in the root namespace: ZooKeeper, the API, the NSDB relay.

Each `ensure_*` is idempotent: it leaves a healthy process alone and (re)starts a missing
one, so that a second `tessera lab up` repairs what died.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import httpx

from tessera.lab import api, names, netns, procs
from tessera.lab.errors import LabError
from tessera.lab.relay import RelayConfig
from tessera.lab.state import LabState
from tessera.nsdb.connect import parse_nsdb_url
from tessera.nsdb.zkserver import ZookeeperError, ZookeeperServer, is_zookeeper

API_PORT = 8181  # preferred: the CLI's default
NEUTRON_PORT = 9696  # preferred: Neutron's usual port
API_START_TIMEOUT = 60.0
MAX_CLUSTER_NODES = 9
EMBEDDED_START_TIMEOUT = 120.0  # N JVMs and N nodes starting at once, then a quorum
RELAY_START_TIMEOUT = 15.0


# -- ZooKeeper -----------------------------------------------------------------------


def zookeeper(state: LabState) -> ZookeeperServer:
    return ZookeeperServer(state.dir / "zookeeper")


def ensure_zookeeper(state: LabState) -> ZookeeperServer:
    server = zookeeper(state)
    # ZookeeperServer starts the process itself: mark it as the lab's through our own
    # environment, which it inherits (see procs.OWNER_ENV).
    saved = os.environ.get(procs.OWNER_ENV)
    os.environ[procs.OWNER_ENV] = str(state.dir)
    try:
        server.start(timeout=60.0)
    except ZookeeperError as exc:
        raise LabError(f"lab {state.name}: {exc}") from None
    finally:
        if saved is None:
            os.environ.pop(procs.OWNER_ENV, None)
        else:
            os.environ[procs.OWNER_ENV] = saved
    url = server.url("tessera")
    if state.nsdb_url != url:
        state.nsdb_url = url
        state.save()
    return server


def stop_zookeeper(state: LabState) -> None:
    try:
        zookeeper(state).stop()
    except ZookeeperError as exc:
        raise LabError(f"lab {state.name}: {exc}") from None


def zk_upstreams(nsdb_url: str) -> list[tuple[str, int]]:
    """The (host, port) of every server in `zk://H:P[,H:P...]/ROOT`."""
    try:
        hosts = parse_nsdb_url(nsdb_url).hosts
    except ValueError as exc:
        raise LabError(f"--nsdb: {exc}") from None
    out: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep:
            host, port = port, "2181"
        try:
            out.append((host.strip("[]") or "127.0.0.1", int(port)))
        except ValueError:
            raise LabError(f"--nsdb '{nsdb_url}': '{item}' is not HOST:PORT") from None
    return out


def check_reachable(nsdb_url: str, timeout: float = 3.0) -> None:
    """Fail now, before anything is made, when no server of the NSDB takes a connection
    (the API would otherwise wait for it, and `up` with it)."""
    reasons = []
    for host, port in zk_upstreams(nsdb_url):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return
        except OSError as exc:
            reasons.append(f"{host}:{port}: {exc.strerror or exc}")
    raise LabError(f"cannot reach the NSDB {nsdb_url} ({'; '.join(reasons)})")


def agent_nsdb_url(state: LabState) -> str:
    """The NSDB as an agent sees it from its host namespace: through the relay."""
    ports = range(names.ZK_RELAY_PORT, names.ZK_RELAY_PORT + len(zk_upstreams(state.nsdb_url)))
    hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
    return f"zk://{hosts}/{state.nsdb_root}"


# -- API -----------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _choose_port(recorded: int | None, preferred: int, taken: set[int]) -> int:
    """`recorded` when free (a URL stays the same across repairs), else `preferred` if
    free, else any free port; never one in `taken` (chosen for another server)."""
    for port in (recorded, preferred):
        if port is not None and port not in taken and _port_free(port):
            return port
    for _ in range(20):  # bounded: a free port equal to a taken one is a rare collision
        port = _free_port()
        if port not in taken:
            return port
    raise LabError("no free TCP port on 127.0.0.1")


def _choose_api_port(state: LabState) -> int:
    """The lab's recorded API port when free, else 8181 if free, else any free port;
    recorded in the state."""
    state.api_port = _choose_port(state.api_port, API_PORT, set())
    state.save()
    return state.api_port


def _choose_neutron_port(state: LabState) -> int:
    """The port of the Neutron API (served by the API process): the lab's recorded one
    when free, else 9696 if free, else any free port; recorded in the state. Chosen
    after the API's, never equal to it."""
    taken = {state.api_port} if state.api_port is not None else set()
    state.neutron_port = _choose_port(state.neutron_port, NEUTRON_PORT, taken)
    state.save()
    return state.neutron_port


def ensure_api(state: LabState, timeout: float = API_START_TIMEOUT) -> None:
    """The API process serving, on the lab's recorded port when possible (so that its URL
    stays the same across repairs), else 8181 if free, else any free port. It is cluster
    node 1, `tessera cluster serve` with the API, the janitor, the Neutron API and the
    health monitor (its config file says which host it probes from)."""
    pid_file, log_file = state.pid_file("api"), state.log_file("api")
    if procs.read_pid(pid_file) is not None and state.api_port is not None:
        if _placement_table(state) in _node_config_text(state, 1):
            _wait_api(state, timeout)
            return
        # Started before the lab ran Cassandra, or by a tessera that did not tell it
        # about it: placement would answer 503. Its port is kept.
        procs.stop(pid_file)
    port = _choose_api_port(state)
    _choose_neutron_port(state)
    argv = [
        *procs.tessera_command(), "cluster", "serve",
        "--config", str(_write_node_config(state, 1)), "--nsdb", state.nsdb_url,
        "--name", f"{state.name}-c1", "--listen", f"127.0.0.1:{port}",
        "--disable", "metrics",
    ]  # fmt: skip
    procs.spawn(argv, pid_file, log_file, owner=state.dir)
    _wait_api(state, timeout)


def _wait_api(state: LabState, timeout: float) -> None:
    """Until the API answers healthy with an elected leader: the leader runs the
    liveness janitor, without which no host ever reads as alive."""
    pid_file, log_file = state.pid_file("api"), state.log_file("api")
    deadline = time.monotonic() + timeout
    with api.client(state) as client:
        while True:
            if procs.read_pid(pid_file) is None:
                raise LabError(
                    f"lab {state.name}: the API exited during start-up "
                    f"({procs.last_lines(log_file)}); see {log_file}"
                )
            answer = api.health(client)
            if answer is not None and answer.get("leader_id") and _neutron_answers(state):
                return
            if time.monotonic() >= deadline:
                what = (
                    "healthy"
                    if answer is None or not answer.get("leader_id")
                    else (f"healthy, but its Neutron API at {state.neutron_url} does not answer")
                )
                raise LabError(
                    f"lab {state.name}: the API did not become {what} within {timeout:g}s; "
                    f"see {log_file}"
                )
            time.sleep(0.2)


def _neutron_answers(state: LabState) -> bool:
    """Whether the lab's Neutron API answers `GET /` (True for a lab whose API process
    was started before the lab served Neutron: it has no port recorded)."""
    return state.neutron_url is None or _answers(state.neutron_url + "/")


def stop_api(state: LabState) -> bool:
    return procs.stop(state.pid_file("api"))


# -- more cluster nodes ----------------------------------------------------------------


def cluster_node_process(index: int) -> str:
    """The pid/log name of cluster node `index` (2..N; node 1 is the API process)."""
    return f"cluster-c{index}"


def ensure_cluster_nodes(state: LabState, timeout: float = API_START_TIMEOUT) -> None:
    """Nodes 2..`state.cluster_nodes`: `tessera cluster serve` on the lab's NSDB, each
    with its API on a free port, named LAB-cK; extra nodes of a shrunk lab stop. Returns
    once every node serves its API (its services then join their elections)."""
    for index in range(state.cluster_nodes + 1, MAX_CLUSTER_NODES + 1):
        procs.stop(state.pid_file(cluster_node_process(index)))
    waiting: list[tuple[int, int]] = []
    for index in range(2, state.cluster_nodes + 1):
        process = cluster_node_process(index)
        if procs.read_pid(state.pid_file(process)) is not None:
            continue
        port = _free_port()
        argv = [
            *procs.tessera_command(), "cluster", "serve",
            "--config", str(_write_node_config(state, index)), "--nsdb", state.nsdb_url,
            "--name", f"{state.name}-c{index}", "--listen", f"127.0.0.1:{port}",
            "--disable", "metrics",
        ]  # fmt: skip
        procs.spawn(argv, state.pid_file(process), state.log_file(process), owner=state.dir)
        waiting.append((index, port))
    deadline = time.monotonic() + timeout
    for index, port in waiting:
        process = cluster_node_process(index)
        while not _answers(f"http://127.0.0.1:{port}/api/v1/health"):
            if procs.read_pid(state.pid_file(process)) is None:
                raise LabError(
                    f"lab {state.name}: cluster node c{index} exited during start-up "
                    f"({procs.last_lines(state.log_file(process))})"
                )
            if time.monotonic() >= deadline:
                raise LabError(
                    f"lab {state.name}: cluster node c{index} did not serve within "
                    f"{timeout:g}s; see {state.log_file(process)}"
                )
            time.sleep(0.2)


# -- cluster nodes that run the NSDB (embedded ZooKeeper) ------------------------------


def embedded_nsdb_url(state: LabState) -> str:
    """The ensemble's connect string: every member's client address, in node order."""
    members = ",".join(
        f"127.0.0.1:{names.embedded_zk_ports(state.index, k)[0]}"
        for k in range(1, state.cluster_nodes + 1)
    )
    return f"zk://{members}/tessera"


def embedded_zk_dir(state: LabState, index: int) -> Path:
    """The data directory of cluster node `index`'s member, inside the lab's directory
    (so that `lab down` removes it with the rest)."""
    return state.dir / f"zookeeper-c{index}"


def embedded_node_process(index: int) -> str:
    """The pid/log name of node `index`: node 1 serves the lab's API, so it is `api`."""
    return "api" if index == 1 else cluster_node_process(index)


def embedded_members(state: LabState) -> list[dict[str, object]]:
    """Each member: its node, client address and JVM pid (None while it is down)."""
    out: list[dict[str, object]] = []
    for k in range(1, state.cluster_nodes + 1):
        zk_dir = embedded_zk_dir(state, k)
        pid: int | None
        try:
            pid = int((zk_dir / "zookeeper.pid").read_text())
        except (OSError, ValueError):
            pid = None
        if pid is not None and not is_zookeeper(pid, zk_dir / "zoo.cfg"):
            pid = None
        client = names.embedded_zk_ports(state.index, k)[0]
        out.append({"node": f"{state.name}-c{k}", "address": f"127.0.0.1:{client}", "pid": pid})
    return out


def _write_node_config(state: LabState, index: int) -> Path:
    """Node `index`'s config file; the rest is on the command line. Every node runs the
    health monitor, probing from host h((index mod N)+1); with Cassandra, every node's
    API serves placement from it; node 1 (the lab's API) serves the Neutron API; with
    embedded members, its [zookeeper] table (every node is given
    the same peers, in node order)."""
    path = state.dir / f"cluster-c{index}.toml"
    text = f"# written by `tessera lab up`\n{_health_monitor_table(state, index)}"
    text += _placement_table(state)
    if index == 1 and state.neutron_port is not None:
        text += f'\n[services.neutron]\nenabled = true\nlisten = "127.0.0.1:{state.neutron_port}"\n'
    if state.embedded_zookeeper:
        peers = ", ".join(
            '"127.0.0.1:{}:{}:{}"'.format(*names.embedded_zk_ports(state.index, k))
            for k in range(1, state.cluster_nodes + 1)
        )
        text += (
            "\n[zookeeper]\n"
            "enabled = true\n"
            f"id = {index}\n"
            f"peers = [{peers}]\n"
            f'data_dir = "{embedded_zk_dir(state, index)}"\n'
            f"client_port = {names.embedded_zk_ports(state.index, index)[0]}\n"
        )
    path.write_text(text)
    return path


def _node_config_text(state: LabState, index: int) -> str:
    try:
        return (state.dir / f"cluster-c{index}.toml").read_text()
    except OSError:
        return ""


def _placement_table(state: LabState) -> str:
    """Every node's API serves placement from the lab's Cassandra (none without it)."""
    from tessera.lab import cassandra as lab_cassandra

    if not state.cassandra_nodes:
        return ""
    contacts = ", ".join(f'"{a}"' for a in lab_cassandra.node_addresses(state))
    return (
        f"\n[services.api]\ncassandra = [{contacts}]\n"
        f'cassandra_keyspace = "{lab_cassandra.KEYSPACE}"\n'
    )


def _health_monitor_table(state: LabState, index: int) -> str:
    """The health monitor of node `index`: its probe ports are served by the agent of
    host h((index mod N)+1), in that host's namespace; its probe namespaces are the
    lab's (`lab down` removes them whatever happened to the node)."""
    if not state.hosts:
        return ""
    host = state.hosts[names.health_probe_host(index, len(state.hosts)) - 1]
    return (
        "\n[services.health-monitor]\n"
        "enabled = true\n"
        f'host_id = "{host.host_id}"\n'
        f'host_netns = "{state.netns(host.name)}"\n'
        f'netns_prefix = "{names.health_netns_prefix(state.name, index)}"\n'
        "resync_interval = 2.0\n"
    )


def ensure_embedded_cluster(state: LabState, timeout: float = EMBEDDED_START_TIMEOUT) -> None:
    """Nodes 1..N, each `tessera cluster serve --embedded-zookeeper` with a member of
    the NSDB's ensemble; node 1 serves the lab's API (pid file `api`). The missing nodes
    are all started before any is waited for: no member serves before a quorum runs.
    Returns once the API answers with an elected leader."""
    url = embedded_nsdb_url(state)
    if state.nsdb_url != url:
        state.nsdb_url = url
        state.save()
    waiting: list[tuple[int, int]] = []
    for index in range(1, state.cluster_nodes + 1):
        process = embedded_node_process(index)
        if procs.read_pid(state.pid_file(process)) is not None:
            continue
        if index == 1:
            port = _choose_api_port(state)
            _choose_neutron_port(state)
        else:
            port = _free_port()
        argv = [
            *procs.tessera_command(), "cluster", "serve",
            "--config", str(_write_node_config(state, index)), "--embedded-zookeeper",
            "--name", f"{state.name}-c{index}", "--listen", f"127.0.0.1:{port}",
            "--disable", "metrics",
        ]  # fmt: skip
        procs.spawn(argv, state.pid_file(process), state.log_file(process), owner=state.dir)
        waiting.append((index, port))
    deadline = time.monotonic() + timeout
    for index, port in waiting:
        process = embedded_node_process(index)
        while not _answers(f"http://127.0.0.1:{port}/api/v1/health"):
            if procs.read_pid(state.pid_file(process)) is None:
                raise LabError(
                    f"lab {state.name}: cluster node c{index} exited during start-up "
                    f"({procs.last_lines(state.log_file(process))})"
                )
            if time.monotonic() >= deadline:
                raise LabError(
                    f"lab {state.name}: cluster node c{index} did not serve within "
                    f"{timeout:g}s; see {state.log_file(process)}"
                )
            time.sleep(0.2)
    _wait_api(state, max(1.0, deadline - time.monotonic()))


def signal_cluster_nodes(directory: Path) -> None:
    """SIGTERM every cluster node of the lab in `directory` at once, before they are
    stopped one by one: nodes with embedded members stopped in turn would leave the
    last ones without a quorum, waiting for it while they close their sessions."""
    for pid_file in [directory / "api.pid", *sorted(directory.glob("cluster-c*.pid"))]:
        pid = procs.read_pid(pid_file)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


# -- relay ---------------------------------------------------------------------------


def relay_config_path(state: LabState) -> Path:
    return state.dir / "relay.json"


def ensure_relay(state: LabState, timeout: float = RELAY_START_TIMEOUT) -> None:
    """The relay listening in every host namespace: started, or told to re-read its
    configuration, then probed from inside each namespace."""
    namespaces = [state.netns(h.name) for h in state.hosts]
    from tessera.lab import cassandra as lab_cassandra

    config = RelayConfig(
        upstreams=tuple(zk_upstreams(state.nsdb_url)),
        port=names.ZK_RELAY_PORT,
        namespaces=tuple(namespaces),
        mirrored=tuple(lab_cassandra.relayed(state)),
    )
    config.write(relay_config_path(state))
    pid_file, log_file = state.pid_file("relay"), state.log_file("relay")
    pid = procs.read_pid(pid_file)
    if pid is None:
        argv = [procs.python(), "-m", "tessera.lab.relay", str(relay_config_path(state))]
        procs.spawn(argv, pid_file, log_file, owner=state.dir)
    else:
        procs.signal_hup(pid)
    deadline = time.monotonic() + timeout
    pending = list(namespaces)
    while pending:
        pending = [ns for ns in pending if not _relay_answers(ns, names.ZK_RELAY_PORT)]
        if not pending:
            return
        if procs.read_pid(pid_file) is None:
            raise LabError(
                f"lab {state.name}: the NSDB relay exited ({procs.last_lines(log_file)}); "
                f"see {log_file}"
            )
        if time.monotonic() >= deadline:
            raise LabError(
                f"lab {state.name}: the NSDB relay does not listen in {', '.join(pending)} "
                f"after {timeout:g}s; see {log_file}"
            )
        time.sleep(0.1)


def _relay_answers(namespace: str, port: int) -> bool:
    """Whether 127.0.0.1:`port` inside `namespace` accepts a connection."""

    def probe() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return True
        except OSError:
            return False

    try:
        return netns.in_netns(namespace, probe)
    except OSError:
        return False


def stop_relay(state: LabState) -> bool:
    return procs.stop(state.pid_file("relay"))
