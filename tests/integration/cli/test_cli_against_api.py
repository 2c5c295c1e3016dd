"""The installed `tessera` console script against the real API (memory NSDB).

Every CLI call is a subprocess of `.venv/bin/tessera`, as users run it. The API is
`tessera.api.app.create_app` served by uvicorn in a thread of the test process; a second
test starts it the way operators do, `tessera api serve`, once `tessera.api.server`
exists. The scenario is the worked example of docs/cli.md, so the guide cannot drift from
what the CLI does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from support.local import TESSERA, free_port
from tessera.api.app import create_app
from tessera.nsdb.connect import open_nsdb

START_TIMEOUT = 20.0


def _wait_until_serving(url: str, alive: object) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not alive():  # type: ignore[operator]
            pytest.fail("the API server stopped while starting")
        try:
            if httpx.get(f"{url}/bridges", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"the API did not answer within {START_TIMEOUT}s")


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    """The real API app on a free local port, served from a thread."""
    port = free_port()
    nsdb = open_nsdb("memory")
    config = uvicorn.Config(
        create_app(nsdb), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="api-under-test", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/api/v1"
    try:
        _wait_until_serving(url, thread.is_alive)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        nsdb.close()


@pytest.fixture
def served_api(tmp_path: Path) -> Iterator[str]:
    """`tessera api serve` as a separate process, stopped by its pid at teardown."""
    if importlib.util.find_spec("tessera.api.server") is None:
        pytest.skip("tessera.api.server is not written yet")
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [str(TESSERA), "api", "serve", "--nsdb", "memory", "--listen", f"127.0.0.1:{port}"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_serving(f"http://127.0.0.1:{port}/api/v1", lambda: server.poll() is None)
        yield f"http://127.0.0.1:{port}/api/v1"
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def ok(self) -> str:
        assert self.code == 0, self.err
        assert self.err == ""
        return self.out.strip()

    def one_line_error(self, code: int, *fragments: str) -> None:
        assert self.code == code, (self.code, self.out, self.err)
        lines = self.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), self.err
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])


def tessera(api_url: str, *args: str) -> Result:
    env = {**os.environ, "TESSERA_API": api_url, "COLUMNS": "80"}
    env.pop("TESSERA_DEBUG", None)
    proc = subprocess.run(
        [str(TESSERA), *args], capture_output=True, text=True, env=env, timeout=30
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.slow  # ~55 CLI processes
def test_worked_example_of_the_guide(api_url: str) -> None:
    def t(*args: str) -> Result:
        return tessera(api_url, *args)

    left = t("bridge", "create", "--name", "left", "-q").ok()
    right = t("bridge", "create", "--name", "right", "-q").ok()
    router = t("router", "create", "--name", "edge", "-q").ok()
    rp_left = t("router", "port", "create", router, "--address", "10.0.1.1/24", "-q").ok()
    rp_right = t("router", "port", "create", router, "--address", "10.0.2.1/24", "-q").ok()
    bp_left = t("bridge", "port", "create", left, "-q").ok()
    bp_right = t("bridge", "port", "create", right, "-q").ok()
    t("port", "link", rp_left, bp_left).ok()
    t("port", "link", rp_right, bp_right).ok()
    vm1 = t("bridge", "port", "create", left, "-q").ok()
    vm2 = t("bridge", "port", "create", right, "-q").ok()

    assert json.loads(t("port", "show", rp_left, "--json").ok())["peer_id"] == bp_left
    router_ports = json.loads(t("--json", "router", "port", "list", router).ok())
    assert {p["port_address"] for p in router_ports} == {"10.0.1.1", "10.0.2.1"}
    assert {p["id"] for p in router_ports} == {rp_left, rp_right}
    assert set(t("port", "list", left, "-q").ok().split()) == {bp_left, vm1}

    t("route", "create", router, "--dst", "10.0.1.0/24", "--next-hop-port", rp_left).ok()
    route = t("route", "create", router, "--dst", "10.0.2.0/24", "--next-hop-port", rp_right,
              "-q").ok()  # fmt: skip
    t("route", "create", router, "--dst", "0.0.0.0/0", "--next-hop-port", rp_left,
      "--gateway", "10.0.1.254").ok()  # fmt: skip
    routes = json.loads(t("route", "list", router, "--json").ok())
    assert route in {r["id"] for r in routes}
    assert {(r["dst_network_addr"], r["dst_network_length"]) for r in routes} >= {
        ("10.0.1.0", 24),
        ("10.0.2.0", 24),
        ("0.0.0.0", 0),
    }
    assert "10.0.2.0/24" in t("route", "list", router).ok()

    chain = t("chain", "create", "--name", "web-in", "-q").ok()
    replies = t("rule", "create", chain, "--type", "accept", "--match-return-flow", "-q").ok()
    web = t("rule", "create", chain, "--type", "accept", "--nw-proto", "tcp", "--tp-dst", "80:443",
            "-q").ok()  # fmt: skip
    deny = t("rule", "create", chain, "--type", "drop", "--position", "2", "--nw-src",
             "192.0.2.0/24", "-q").ok()  # fmt: skip
    last = t("rule", "create", chain, "--type", "drop", "-q").ok()
    rules = json.loads(t("rule", "list", chain, "--json").ok())
    assert [r["id"] for r in rules] == [replies, deny, web, last]
    assert [r["position"] for r in rules] == [1, 2, 3, 4]
    shown = json.loads(t("rule", "show", web, "--json").ok())
    assert shown["tp_dst"] == {"start": 80, "end": 443}
    assert shown["fragment_policy"] == "header"
    listing = t("rule", "list", chain).ok()
    assert "nw_src=192.0.2.0/24" in listing and "tp_dst=80-443" in listing
    t("rule", "update", deny, "--inv-nw-src").ok()
    assert "nw_src!=192.0.2.0/24" in t("rule", "list", chain).ok()

    t("bridge", "update", right, "--inbound-filter-id", chain).ok()
    assert json.loads(t("bridge", "show", right, "--json").ok())["inbound_filter_id"] == chain
    t("bridge", "update", right, "--inbound-filter-id", "none").ok()
    assert json.loads(t("bridge", "show", right, "--json").ok())["inbound_filter_id"] is None

    t("dhcp", "subnet", "create", left, "10.0.1.0/24", "--gateway", "10.0.1.1", "--dns",
      "10.0.1.1").ok()  # fmt: skip
    t("dhcp", "host", "create", left, "10.0.1.0/24", "--mac", "02:00:00:00:01:0a", "--ip",
      "10.0.1.10", "--name", "vm1").ok()  # fmt: skip
    hosts = json.loads(t("dhcp", "host", "list", left, "10.0.1.0/24", "--json").ok())
    assert [(h["mac_addr"], h["ip_addr"]) for h in hosts] == [("02:00:00:00:01:0a", "10.0.1.10")]

    # No agent runs here, so no host exists: binding says so in one line.
    assert t("host", "list").ok().startswith("no hosts")
    t("bind", vm1, "tap-vm1", "--host", str(uuid.uuid4())).one_line_error(1, "HTTP 4")

    missing = str(uuid.uuid4())
    t("bridge", "show", missing).one_line_error(1, "HTTP 404")
    t("rule", "create", chain, "--type", "drop", "--tp-dst", "90:80").one_line_error(2, "--tp-dst")
    t("router", "port", "create", router, "--address", "10.0.3.1").one_line_error(2, "--address")

    t("port", "unlink", rp_right).ok()
    assert json.loads(t("port", "show", bp_right, "--json").ok())["peer_id"] is None
    t("router", "delete", router).ok()
    t("router", "show", router).one_line_error(1, "HTTP 404")
    t("port", "show", rp_left).one_line_error(1, "HTTP 404")
    assert vm2 in t("port", "list", right, "-q").ok().split()


def test_unreachable_api_is_one_line(api_url: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/api/v1"
    tessera(api_url, "--api", url, "bridge", "list").one_line_error(
        3, f"cannot reach the tessera API at {url}"
    )


def test_api_serve_serves_the_cli(served_api: str) -> None:
    bridge = tessera(served_api, "bridge", "create", "--name", "via-serve", "-q").ok()
    listed = json.loads(tessera(served_api, "bridge", "list", "--json").ok())
    assert [b["id"] for b in listed] == [bridge]


def test_api_serve_without_zookeeper_is_one_line_and_fails() -> None:
    """The default NSDB is ZooKeeper, as the agent's: when none answers, the server says
    so and exits instead of serving 503s to a CLI that would not know why."""
    nsdb = f"zk://127.0.0.1:{free_port()}/tessera"
    proc = subprocess.run(
        [str(TESSERA), "api", "serve", "--nsdb", nsdb, "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: the NSDB at {nsdb} is unreachable: start ZooKeeper there, pass --nsdb "
        "zk://HOST:PORT/ROOT, or --nsdb memory for a quick look"
    ]
