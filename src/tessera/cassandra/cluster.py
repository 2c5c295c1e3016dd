"""A Cassandra cluster of N nodes on one machine, each on its own loopback address.

Node k (1-based) lives in `DIRECTORY/nK`. The nodes are started all at once (each has
its token and nobody bootstraps, so no node waits for another), then the cluster is
ready when every node serves CQL, every node sees every other one NORMAL in gossip, and
the keyspace exists with replication factor min(N, 3) on all of them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tessera.cassandra import client
from tessera.cassandra.config import NodeConfig
from tessera.cassandra.errors import CassandraError
from tessera.cassandra.node import CassandraNode, kill_nodes_under

START_TIMEOUT = 300.0  # N JVMs starting at once on a small, busy machine


def addresses(first: str, count: int) -> list[str]:
    """`count` consecutive loopback addresses from `first` (127.0.0.2 -> .2, .3, ...)."""
    head, _, last = first.rpartition(".")
    start = int(last)
    if not first.startswith("127.") or start + count - 1 > 254:
        raise CassandraError(f"{count} node addresses from {first} do not fit in 127.x.y.2-254")
    return [f"{head}.{start + k}" for k in range(count)]


class CassandraCluster:
    def __init__(
        self,
        directory: Path,
        node_addresses: Sequence[str],
        *,
        cluster_name: str = "tessera",
        keyspace: str = client.DEFAULT_KEYSPACE,
        heap_mb: int = 512,
    ) -> None:
        if not node_addresses:
            raise CassandraError("a Cassandra cluster needs at least one node")
        self.directory = Path(directory)
        self.keyspace = keyspace
        self.nodes = [
            CassandraNode(
                NodeConfig(
                    directory=self.directory / f"n{k + 1}",
                    address=address,
                    index=k,
                    size=len(node_addresses),
                    seeds=tuple(node_addresses),
                    cluster_name=cluster_name,
                    heap_mb=heap_mb,
                )
            )
            for k, address in enumerate(node_addresses)
        ]

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    @property
    def replication_factor(self) -> int:
        return min(len(self.nodes), 3)

    def node(self, number: int) -> CassandraNode:
        """Node `number`, 1-based (n1, n2...)."""
        if not 1 <= number <= len(self.nodes):
            raise CassandraError(
                f"no Cassandra node n{number}: the cluster has n1..n{len(self.nodes)}"
            )
        return self.nodes[number - 1]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start every node that is not running, wait until all are UN, make the
        keyspace. On failure the nodes started here keep running (the caller decides:
        a lab is repaired by `up` again, a fixture stops them)."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_cql(deadline)
        client.wait_normal(self.addresses, deadline)
        cluster, session = client.connect(self.addresses)
        try:
            client.create_keyspace(session, self.keyspace, self.replication_factor)
        finally:
            cluster.shutdown()

    def start_node(self, number: int, timeout: float = START_TIMEOUT) -> None:
        """Start one node again and wait until the cluster sees it UN."""
        node = self.node(number)
        deadline = time.monotonic() + timeout
        node.launch()
        node.wait_cql(deadline)
        client.wait_normal([n.address for n in self.nodes if n.is_running], deadline)

    def stop_node(self, number: int) -> None:
        self.node(number).stop()

    def stop(self) -> None:
        """Stop every node (all signalled first: a node stopping alone would wait for
        the others to notice it)."""
        for node in self.nodes:
            node.terminate()
        errors = []
        for node in self.nodes:
            try:
                node.stop()
            except CassandraError as exc:
                errors.append(str(exc))
        if errors:
            raise CassandraError("; ".join(errors))

    def remove(self) -> None:
        """Kill every node (no need for a clean shutdown: the data goes too) and delete
        all their data."""
        for node in self.nodes:
            node.kill()
        stuck = kill_nodes_under(self.directory)
        shutil.rmtree(self.directory, ignore_errors=True)
        if stuck:
            raise CassandraError(f"Cassandra processes {stuck} would not die")

    def connect(self, keyspace: str | None = None) -> tuple[Any, Any]:
        """(driver Cluster, Session) on the running nodes, in `keyspace` (default the
        cluster's); the caller shuts the Cluster down."""
        up = [n.address for n in self.nodes if n.is_running] or self.addresses
        return client.connect(up, keyspace or self.keyspace)

    def status(self) -> list[dict[str, Any]]:
        """Per node: its name, address, pid and state — `UN` (serving, NORMAL in the
        gossip of a serving node), `UJ`-like `starting` (running, not serving yet) or
        `DN` (not running)."""
        serving = [n for n in self.nodes if n.is_running and n.serves_cql()]
        view: dict[str, str] = {}
        for node in serving:
            try:
                view = client.node_view(node.address)
                break
            except CassandraError:
                continue
        out: list[dict[str, Any]] = []
        for k, node in enumerate(self.nodes, start=1):
            pid = node.pid
            if pid is None:
                state = "DN"
            elif node in serving:
                state = "UN" if view.get(node.address) == "NORMAL" else "up"
            else:
                state = "starting"
            out.append({"node": f"n{k}", "address": node.address, "pid": pid, "state": state})
        return out
