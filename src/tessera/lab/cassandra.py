"""The lab's Cassandra cluster (`lab up --cassandra N`): N nodes in the root namespace,
node k on 127.0.I.(k+1) (I the lab's index: 127.0.0.2.. for the first lab, so labs never
share an address), data under the lab's directory (`lab down` removes it), the keyspace
`tessera` with replication factor min(N, 3). `lab cassandra stop|start nK` are faults.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tessera.cassandra import client
from tessera.cassandra.cluster import CassandraCluster, addresses
from tessera.cassandra.config import CQL_PORT
from tessera.cassandra.errors import CassandraError
from tessera.cassandra.node import kill_nodes_under
from tessera.lab import procs
from tessera.lab.errors import LabError
from tessera.lab.state import LabState

MAX_NODES = 9
KEYSPACE = "tessera"


def directory(lab_dir: Path) -> Path:
    return lab_dir / "cassandra"


def node_addresses(lab: LabState) -> list[str]:
    return addresses(f"127.0.{lab.index}.2", lab.cassandra_nodes)


def cluster(lab: LabState) -> CassandraCluster:
    if lab.cassandra_nodes < 1:
        raise LabError(f"lab {lab.name} runs no Cassandra (`tessera lab up --cassandra N`)")
    return CassandraCluster(
        directory(lab.dir),
        node_addresses(lab),
        cluster_name=f"tessera-{lab.name}",
        keyspace=KEYSPACE,
    )


def relayed(lab: LabState) -> list[tuple[str, int]]:
    """The nodes' CQL addresses, relayed as themselves into every host namespace (the
    agents keep their flow state there: `--flow-state cassandra`)."""
    if lab.cassandra_nodes < 1:
        return []
    return [(a, CQL_PORT) for a in node_addresses(lab)]


def agent_contact_points(lab: LabState) -> str | None:
    """`--cassandra` for the lab's agents; None for a lab without Cassandra."""
    return ",".join(node_addresses(lab)) if lab.cassandra_nodes else None


def check_count(lab: LabState, wanted: int | None, *, new: bool = False) -> None:
    """A ring made whole cannot grow or shrink in place (each node holds its share of
    the tokens from the start); nor can a lab made without one be given one later: its
    API and agents started without it (`new`: the lab is being made now)."""
    if wanted is None:
        return
    if not 0 <= wanted <= MAX_NODES:
        raise LabError(f"--cassandra must be 0..{MAX_NODES}")
    if lab.cassandra_nodes and wanted != lab.cassandra_nodes:
        raise LabError(
            f"lab {lab.name} runs {lab.cassandra_nodes} Cassandra node(s), which cannot "
            f"grow or shrink: `tessera lab down --name {lab.name}` first"
        )
    if wanted and not lab.cassandra_nodes and not new:
        raise LabError(
            f"lab {lab.name} runs without Cassandra, and its API and agents started "
            f"without it: `tessera lab down --name {lab.name}` first, then "
            f"`tessera lab up --cassandra {wanted}`"
        )


@contextlib.contextmanager
def _owned_by(lab: LabState) -> Iterator[None]:
    """Processes started inside carry the lab's owner mark (see procs.OWNER_ENV), so
    that `down` finds them even without their pid files."""
    saved = os.environ.get(procs.OWNER_ENV)
    os.environ[procs.OWNER_ENV] = str(lab.dir)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(procs.OWNER_ENV, None)
        else:
            os.environ[procs.OWNER_ENV] = saved


def ensure(lab: LabState) -> CassandraCluster:
    """Every node running and UN, the keyspace made (idempotent: a healthy cluster is
    left alone, a stopped node started again)."""
    made = cluster(lab)
    try:
        with _owned_by(lab):
            made.start()
        # The agents' flow-state tables and placement's, made once here: agents (or
        # API nodes) creating them at once on different nodes could make two versions
        # of one table.
        from tessera.agent.flowstate.durable import create_tables
        from tessera.placement.schema import ensure_schema

        driver, session = client.connect(made.addresses)
        try:
            create_tables(session, made.keyspace)
            # Placement's too, before any API node opens it (they would race).
            session.set_keyspace(made.keyspace)
            ensure_schema(session)
        finally:
            driver.shutdown()
    except CassandraError as exc:
        raise LabError(f"lab {lab.name}: {exc}") from None
    return made


def _node_number(lab: LabState, node: str) -> int:
    text = node.removeprefix("n")
    if not text.isdigit() or not 1 <= int(text) <= lab.cassandra_nodes:
        raise LabError(
            f"lab {lab.name} has no Cassandra node '{node}' (nodes: n1..n{lab.cassandra_nodes})"
        )
    return int(text)


def stop_node(lab: LabState, node: str) -> bool:
    """Stop node `nK` (clean shutdown); False when it was not running."""
    number = _node_number(lab, node)
    target = cluster(lab).node(number)
    if not target.is_running:
        return False
    try:
        target.stop()
    except CassandraError as exc:
        raise LabError(f"lab {lab.name}: {exc}") from None
    return True


def start_node(lab: LabState, node: str) -> str:
    """Start node `nK` again (same address, data and token) and wait until it is UN in
    the view of every running node; returns its address."""
    number = _node_number(lab, node)
    made = cluster(lab)
    try:
        with _owned_by(lab):
            made.start_node(number)
    except CassandraError as exc:
        raise LabError(f"lab {lab.name}: {exc}") from None
    return made.node(number).address


def describe(lab: LabState) -> dict[str, Any] | None:
    """The `lab status` entry: None for a lab without Cassandra."""
    if lab.cassandra_nodes < 1:
        return None
    made = cluster(lab)
    return {
        "keyspace": made.keyspace,
        "replication_factor": made.replication_factor,
        "nodes": made.status(),
    }


def remove(lab_dir: Path) -> list[str]:
    """Kill the lab's nodes, whatever the state file says; the data goes with the lab's
    directory. Returns problems."""
    stuck = kill_nodes_under(directory(lab_dir))
    return [f"Cassandra process {pid} would not die" for pid in stuck]
