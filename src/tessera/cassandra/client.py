"""Talking to a tessera Cassandra cluster with the DataStax driver: a session, the
cluster's view of its nodes (the `UN` of `nodetool status`, read through CQL), and the
keyspace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from tessera.cassandra.config import CQL_PORT
from tessera.cassandra.errors import CassandraError

DEFAULT_KEYSPACE = "tessera"
DATACENTER = "datacenter1"  # SimpleSnitch's

# The driver logs every refused reconnection at WARNING: a node stopped on purpose (a
# fault in the lab, a failure test) would flood the caller's log.
logging.getLogger("cassandra.cluster").setLevel(logging.ERROR)
logging.getLogger("cassandra.pool").setLevel(logging.ERROR)
logging.getLogger("cassandra.connection").setLevel(logging.ERROR)


def connect(
    contact_points: Sequence[str],
    keyspace: str | None = None,
    *,
    connect_timeout: float = 5.0,
    request_timeout: float = 10.0,
) -> tuple[Any, Any]:
    """(driver Cluster, Session) on the nodes at `contact_points` (CQL port 9042 on
    each node's own address); the caller shuts the Cluster down."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=DATACENTER)),
        request_timeout=request_timeout,
    )
    cluster = Cluster(
        contact_points=list(contact_points),
        port=CQL_PORT,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=connect_timeout,
        control_connection_timeout=connect_timeout,
        max_schema_agreement_wait=30,
        protocol_version=5,
    )
    try:
        session = cluster.connect(keyspace)
    except Exception as exc:
        cluster.shutdown()
        raise CassandraError(
            f"cannot connect to Cassandra at {', '.join(contact_points)}: {_reason(exc)}"
        ) from None
    return cluster, session


def node_view(address: str, timeout: float = 5.0) -> dict[str, str]:
    """Every node `address` knows and its gossip status (`NORMAL`, `shutdown`...), as
    that node sees it (system_views.gossip_info is node-local), asked of that node alone
    on a connection of its own: a driver session that saw a node refuse marks it down
    and only retries later and later."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    profile = ExecutionProfile(
        load_balancing_policy=WhiteListRoundRobinPolicy([address]), request_timeout=timeout
    )
    cluster = Cluster(
        contact_points=[address],
        port=CQL_PORT,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=timeout,
        control_connection_timeout=timeout,
        protocol_version=5,
    )
    try:
        session = cluster.connect()
        rows = session.execute(
            "SELECT address, status_with_port, status, rpc_ready FROM system_views.gossip_info"
        )
        view: dict[str, str] = {}
        for r in rows:
            status = str(r.status_with_port or r.status or "").split(",")[0]
            if status == "NORMAL" and r.rpc_ready != "true":
                status = "NORMAL (CQL not ready)"
            view[str(r.address)] = status
        return view
    except Exception as exc:
        raise CassandraError(f"Cassandra {address}: {_reason(exc)}") from None
    finally:
        cluster.shutdown()


def wait_normal(addresses: Sequence[str], deadline: float) -> None:
    """Until every node sees every node NORMAL and ready for CQL in gossip: the `UN` of
    `nodetool status`, on every node's own view."""
    wanted = set(addresses)
    last = ""
    while True:
        try:
            for address in addresses:
                view = node_view(address)
                normal = {a for a, status in view.items() if status == "NORMAL"}
                if not wanted <= normal:
                    last = f"{address} sees {view}"
                    break
            else:
                return
        except CassandraError as exc:  # a node still starting refuses or times out
            last = str(exc)
        if time.monotonic() >= deadline:
            raise CassandraError(f"Cassandra nodes not all up and NORMAL in time ({last})")
        time.sleep(0.5)


def create_keyspace(session: Any, keyspace: str, replication_factor: int) -> None:
    """The keyspace (idempotent), its replication factor the given one; the driver
    waits for every node to agree on the schema."""
    session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
        f"{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}",
        timeout=60.0,
    )
    if not session.cluster.control_connection.wait_for_schema_agreement(wait_time=30):
        raise CassandraError(f"Cassandra nodes did not agree on keyspace {keyspace}'s schema")


def _reason(exc: BaseException) -> str:
    """One line: the driver's NoHostAvailable carries a dict of per-host errors."""
    errors = getattr(exc, "errors", None)
    if isinstance(errors, dict) and errors:
        return "; ".join(f"{h}: {e}" for h, e in errors.items())
    return str(exc) or type(exc).__name__
