"""Serving the Neutron app: `serve_neutron` (background thread) and `NeutronService`
(the cluster service shape: `__init__(env)`, `run(ctx)` until `ctx.stop`)."""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace

import httpx
import pytest

from tessera.neutron.serve import ListenError, serve_neutron, split_listen
from tessera.neutron.service import NeutronService
from tessera.nsdb.memory import MemoryNsdb


def test_serve_neutron_answers_version_discovery_then_stops() -> None:
    nsdb = MemoryNsdb()
    server = serve_neutron(nsdb, "127.0.0.1", 0)
    try:
        r = httpx.get(f"{server.url}/", timeout=5)
        assert r.json()["versions"][0]["links"][0]["href"] == f"{server.url}/v2.0/"
    finally:
        server.stop()
        nsdb.close()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/", timeout=2)


def test_a_taken_port_and_a_bad_address_are_one_line_errors() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        with pytest.raises(ListenError, match=r"cannot listen on 127\.0\.0\.1"):
            serve_neutron(MemoryNsdb(), "127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()
    for bad in ("9696", "host:", "host:99999", ":80"):
        with pytest.raises(ListenError, match="not ADDR:PORT"):
            split_listen(bad)


def test_neutron_service_runs_until_stopped_and_reports_ready() -> None:
    nsdb = MemoryNsdb()
    cluster = SimpleNamespace(info={})
    env = SimpleNamespace(nsdb=nsdb, options={"listen": "127.0.0.1:0"}, cluster=cluster)
    service = NeutronService(env)
    assert service.name == "neutron" and service.redundancy == "every-node"
    assert cluster.info["neutron"] == service.url
    ready = threading.Event()
    ctx = SimpleNamespace(stop=threading.Event(), ready=ready.set)
    thread = threading.Thread(target=service.run, args=(ctx,), daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        net = httpx.post(f"{service.url}/v2.0/networks", json={"network": {"name": "x"}})
        assert net.status_code == 201
    finally:
        ctx.stop.set()
        thread.join(10)
        service.close()
        nsdb.close()
    assert not thread.is_alive()
