"""A body too large for ZooKeeper, through the API on a real ZooKeeper: refused with a
clear 4xx while the server keeps its session and its leadership (issue 13, item 3)."""

from __future__ import annotations

import warnings

import pytest
from api_helpers import Api

from support.wait import wait_until
from tessera.model import Conditions, Mirror, new_id
from tessera.nsdb.codec import MAX_OBJECT_BYTES
from tessera.nsdb.zkserver import ZookeeperServer
from tessera.nsdb.zookeeper import ZookeeperNsdb

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from tessera.api.app import create_app

pytestmark = pytest.mark.zookeeper


def _fat_condition(i: int) -> dict[str, object]:
    """A condition naming no other object (so no reference check answers first)."""
    return {
        "nw_src_address": f"10.{i >> 8 & 255}.{i & 255}.0",
        "nw_src_length": 24,
        "nw_dst_address": f"10.{i >> 8 & 255}.{i & 255}.1",
        "dl_src": "02:00:00:00:00:01",
        "dl_src_mask": "ff:ff:ff:ff:ff:ff",
        "dl_dst": "02:00:00:00:00:02",
        "dl_dst_mask": "ff:ff:ff:ff:ff:ff",
        "nw_proto": 6,
        "tp_src": {"start": 1024, "end": 65535},
        "tp_dst": {"start": i % 65536, "end": i % 65536},
    }


def test_a_mirror_too_large_for_zookeeper_is_refused_and_the_server_keeps_leading(
    zk_server: ZookeeperServer,
) -> None:
    """Before: 503 "unreachable" after the op timeout, ZooKeeper closed the session's
    connection (its packet limit is 1 MiB) and the server stepped down. The body's
    stored form is above the NSDB's limit; the model's own list limits may answer
    first (400/422), which is as good: what must never happen is a 503."""
    conditions = [_fat_condition(i) for i in range(3000)]
    stored = Mirror.model_construct(  # unvalidated: the model's list limit refuses it
        id=new_id(),
        to_port_id=new_id(),
        conditions=[Conditions.model_validate(c) for c in conditions],
    )
    assert len(stored.model_dump_json()) > 1024 * 1024  # what used to be written
    assert len(stored.model_dump_json(exclude_defaults=True)) > MAX_OBJECT_BYTES

    nsdb = ZookeeperNsdb(zk_server.address, f"/api-sizes-{new_id()}")
    # Leadership as the API server's cluster services hold it: an election on its session.
    election = nsdb.leader_election("cluster-services", "api-1")
    election.start(lambda stop: stop.wait())  # type: ignore[attr-defined]
    try:
        with TestClient(create_app(nsdb)) as client:
            api = Api(client, nsdb)
            wait_until(lambda: election.is_leader)
            session = nsdb._session_id
            port = api.bridge_port(api.bridge())
            body = {"to_port_id": port["id"], "conditions": conditions}
            response = client.post("/api/v1/mirrors", json=body)
            assert response.status_code in (400, 413, 422), response.text
            if response.status_code == 413:
                assert f"limit of {MAX_OBJECT_BYTES} bytes" in response.json()["message"]
            assert nsdb.connected and election.is_leader and nsdb._session_id == session
            assert api.get("/health")["nsdb_connected"]
            assert api.get("/mirrors") == []
            api.post("/mirrors", {"to_port_id": port["id"], "conditions": conditions[:10]})
            assert election.is_leader and nsdb._session_id == session
    finally:
        election.stop()
        nsdb.close()
