"""`tessera load-balancer|pool|pool-member|vip|health-monitor ...`: the installed console
script against the real API (memory NSDB), as in docs/load-balancer.md."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from support.local import TESSERA, free_port
from tessera.api.app import create_app
from tessera.nsdb.connect import open_nsdb


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    """The real API app on a free local port, served from a thread."""
    port = free_port()
    nsdb = open_nsdb("memory")
    config = uvicorn.Config(
        create_app(nsdb), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="lb-api-under-test", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 20.0
        while True:
            assert thread.is_alive(), "the API server stopped while starting"
            try:
                if httpx.get(f"{url}/load_balancers", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not answer within 20 s"
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        nsdb.close()


@dataclass
class Result:
    code: int
    out: str
    err: str

    def ok(self) -> str:
        assert self.code == 0, self.err
        assert self.err == ""
        return self.out.strip()

    def json(self) -> Any:
        return json.loads(self.ok())

    def one_line_error(self, code: int, *fragments: str) -> None:
        assert self.code == code, (self.code, self.out, self.err)
        lines = self.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), self.err
        assert "Traceback" not in self.err + self.out
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])


def tessera(api_url: str, *args: str) -> Result:
    env = {**os.environ, "TESSERA_API": api_url, "COLUMNS": "200"}
    env.pop("TESSERA_DEBUG", None)
    proc = subprocess.run([TESSERA, *args], capture_output=True, text=True, env=env, timeout=30)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_the_load_balancer_of_a_router_end_to_end(api_url: str) -> None:
    def t(*args: str) -> Result:
        return tessera(api_url, *args)

    router = t("router", "create", "--name", "edge", "-q").ok()
    lb = t("load-balancer", "create", "--router", router, "-q").ok()
    hm = t("health-monitor", "create", "--delay", "2", "--timeout", "1", "--max-retries", "2",
           "--json").json()  # fmt: skip
    assert (hm["type"], hm["delay"], hm["timeout"], hm["max_retries"]) == ("TCP", 2, 1, 2)
    pool = t("pool", "create", "--load-balancer", lb, "--health-monitor", hm["id"], "-q").ok()
    m1 = t("pool-member", "create", "--pool", pool, "--address", "10.0.1.11", "--port", "8080",
           "-q").ok()  # fmt: skip
    m2 = t("pool-member", "create", "--pool", pool, "--address", "10.0.1.12",
           "--protocol-port", "8080", "--weight", "3", "--json").json()  # fmt: skip
    assert m2["weight"] == 3 and m2["status"] == "ACTIVE"
    vip = t("vip", "create", "--load-balancer", lb, "--pool", pool, "--address", "203.0.113.10",
            "--port", "80", "--session-persistence", "source_ip", "--json").json()  # fmt: skip
    assert vip["session_persistence"] == "SOURCE_IP" and vip["pool_id"] == pool

    listing = t("pool-member", "list", "--pool", pool).ok()
    assert "10.0.1.11" in listing and "10.0.1.12" in listing and "ACTIVE" in listing
    assert set(t("pool-member", "list", "-q").ok().split()) == {m1, m2["id"]}
    assert t("pool", "list", "--load-balancer", lb, "-q").ok() == pool
    assert t("vip", "list", "--pool", pool, "-q").ok() == vip["id"]
    assert t("vip", "list", "--load-balancer", lb, "-q").ok() == vip["id"]
    assert "203.0.113.10" in t("vip", "list").ok()
    assert t("load-balancer", "show", lb, "--json").json()["router_id"] == router
    assert "TCP" in t("health-monitor", "list").ok()
    assert t("load-balancers", "list", "-q").ok() == lb  # the plural spelling

    changed = t("pool-member", "update", m1, "--weight", "5", "--down", "--json").json()
    assert (changed["weight"], changed["admin_state_up"], changed["address"]) == (
        5,
        False,
        "10.0.1.11",
    )
    changed = t("vip", "update", vip["id"], "--session-persistence", "none", "--json").json()
    assert changed["session_persistence"] is None and changed["protocol_port"] == 80
    assert (
        t("pool", "update", pool, "--health-monitor", "none", "--json").json()["health_monitor_id"]
        is None
    )
    assert t("health-monitor", "update", hm["id"], "--delay", "9", "--json").json()["delay"] == 9

    # What the API refuses, in one line each.
    t("load-balancer", "create", "--router", router).one_line_error(1, "HTTP 409", "at most one")
    t("load-balancer", "create").one_line_error(2, "--router")
    t("vip", "create", "--load-balancer", lb, "--pool", pool, "--address", "224.0.0.1",
      "--port", "80").one_line_error(1, "HTTP 400", "multicast")  # fmt: skip
    t("vip", "create", "--load-balancer", lb, "--address", "203.0.113.11",
      "--port", "80").one_line_error(2, "--pool")  # fmt: skip
    t("pool-member", "create", "--pool", pool, "--address", "10.0.1.13", "--port", "80",
      "--weight", "0").one_line_error(2, "--weight")  # fmt: skip
    t("pool-member", "create", "--pool", pool, "--address", "10.0.1.13",
      "--port", "70000").one_line_error(2, "--protocol-port")  # fmt: skip
    t("health-monitor", "create", "--delay", "2", "--timeout", "3").one_line_error(
        1, "HTTP 400", "timeout 3 is longer than delay 2"
    )
    t("health-monitor", "create", "--type", "HTTP").one_line_error(2, "--type")
    t("pool", "create", "--load-balancer", lb, "--lb-method", "LEAST_CONN").one_line_error(
        2, "--lb-method"
    )
    t("pool-member", "show", str(uuid.uuid4())).one_line_error(1, "HTTP 404")
    t("vip", "show", "not-an-id").one_line_error(2, "not an id")

    # Deleting the router takes the load balancer, its pools, members and VIPs along.
    t("pool-member", "delete", m1).ok()
    t("router", "delete", router).ok()
    for noun in ("load-balancer", "pool", "pool-member", "vip"):
        assert t(noun, "list", "--json").json() == [], noun
    assert t("health-monitor", "list", "-q").ok() == hm["id"]
    t("health-monitor", "delete", hm["id"]).ok()
    assert t("health-monitor", "list").ok() == "no health monitors"
