"""An agent (fake datapath, real Cassandra) keeps its NAT state through a restart that
lost its local state: the dynamic SNAT binding of a connection made before the restart
comes back from Cassandra, so the reply that arrives after it is translated back to the
VM; the same restart without Cassandra drops that reply (the control). The host loses
its kernel flows as well, so that the reply is decided anew."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "agent"))

from agent_harness import Cloud
from test_agent_stateful import _snat_edge, _through_arp, udp_of

from tessera.agent.flowstate.durable import DurableFlowState
from tessera.cassandra.cluster import CassandraCluster

# Starting Cassandra (in the first test's setup) may take minutes on a busy machine.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def cloud() -> Iterator[Cloud]:
    c = Cloud()
    try:
        yield c
    finally:
        c.close()


def _restarted_reply(cloud: Cloud, durable: Any) -> list[tuple[str, int, str, int]]:
    """A VM's UDP connection through dynamic SNAT; the agent restarts with no local
    state (the harness keeps no state file) and `durable` as its Cassandra (or None);
    what reaches the VM of the reply sent after the restart."""
    host_id = str(uuid.uuid4())
    h = cloud.host("h1", "198.18.0.1", host_id=host_id, flowstate_durable=durable(host_id))
    e = _snat_edge(cloud, h)
    (first,) = _through_arp(e, e.out(40000))
    public_ip, public_port, _dst, _dport = udp_of(first)
    writer = h.agent.flowstate.durable
    if writer is not None:  # the writes are asynchronous: let them land
        deadline = time.monotonic() + 20
        while writer.stats.written < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert writer.stats.written >= 2  # the SNAT binding, both ways
    cloud.stop(h)
    # The host lost its kernel flows too (the predicted reply flow among them): the
    # reply will miss, and only the state can translate it back.
    for match in list(h.dp.dump()):
        h.dp.delete(match)
    cloud.start_agent("h1", h.host_id, h.underlay, h.dp, flowstate_durable=durable(h.host_id))
    e.resolve()  # the router learns the MACs again (the restarted agent's ARP cache)
    cloud.send(e.ext, e.to_public(public_ip, public_port))
    return [udp_of(f) for f in cloud.received(e.vm)]


def test_the_snat_binding_comes_back_from_cassandra(
    cloud: Cloud, cassandra_node: CassandraCluster, cassandra_session: Any
) -> None:
    keyspace = cassandra_session.keyspace

    def durable(host_id: str) -> DurableFlowState:
        return DurableFlowState(host_id, cassandra_node.addresses, keyspace)

    assert _restarted_reply(cloud, durable) == [("203.0.113.9", 53, "10.0.0.5", 40000)]
    (host,) = cloud.hosts
    assert host.agent.flowstate.durable is not None
    assert host.agent.flowstate.durable.stats.restored >= 2
    report = host.agent.flowstate.report()
    assert report["cassandra"]["active"] is True


def test_without_cassandra_the_same_restart_drops_the_reply(cloud: Cloud) -> None:
    assert _restarted_reply(cloud, lambda _host_id: None) == []
