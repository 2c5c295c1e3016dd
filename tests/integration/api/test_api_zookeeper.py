"""The API on a real ZooKeeper: an outage answers 503 quickly with a clear message, and
the API recovers by itself when ZooKeeper is back."""

from __future__ import annotations

import time
import warnings

import pytest
from api_helpers import Api

from support.wait import wait_until

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from tessera.api.app import create_app
from tessera.nsdb.zkserver import ZookeeperServer
from tessera.nsdb.zookeeper import ZookeeperNsdb

pytestmark = pytest.mark.zookeeper

FAST = 5.0  # seconds within which a request during an outage must be answered


def test_zookeeper_outage_is_503_then_heals(private_zk: ZookeeperServer) -> None:
    nsdb = ZookeeperNsdb(private_zk.address, "/api-outage")
    try:
        with TestClient(create_app(nsdb)) as client:
            api = Api(client, nsdb)
            bridge = api.bridge(name="before")
            private_zk.stop()
            wait_until(lambda: not nsdb.connected, timeout=FAST)
            for method, path, body in (
                ("GET", "/bridges", None),
                ("GET", f"/bridges/{bridge['id']}", None),
                ("POST", "/bridges", {"name": "during"}),
                ("PUT", f"/bridges/{bridge['id']}", {"name": "during"}),
                ("DELETE", f"/bridges/{bridge['id']}", None),
                ("POST", f"/bridges/{bridge['id']}/ports", {}),
                ("GET", "/health", None),
            ):
                start = time.monotonic()
                message = api.call(method, path, body, status=503)
                assert time.monotonic() - start < FAST
                assert "ZooKeeper" in message or "NSDB" in message, message
            metrics = client.get("/metrics")
            assert metrics.status_code == 200 and "tessera_nsdb_connected 0.0" in metrics.text

            private_zk.start()
            wait_until(lambda: client.get("/api/v1/health").status_code == 200, timeout=20)
            assert [b["name"] for b in api.get("/bridges")] == ["before"]
            api.bridge(name="after")
            assert len(api.get("/bridges")) == 2
    finally:
        nsdb.close()
