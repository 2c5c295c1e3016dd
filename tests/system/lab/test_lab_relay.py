"""The NSDB relay: ZooKeeper reachable on 127.0.0.1:2181 inside a namespace, with no
address or route added to the root namespace; measured with kazoo from inside."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_helpers import Snapshot, root_missing, unique_name

from support.wait import wait_until
from tessera.lab import netns
from tessera.lab.relay import RelayConfig
from tessera.nsdb.zkserver import ZookeeperServer

pytestmark = [pytest.mark.system, pytest.mark.root, pytest.mark.zookeeper]

if (_why := root_missing()) is not None:
    pytest.skip(_why, allow_module_level=True)

# Run in a namespace: create, write and read a znode through the relay; print the time.
KAZOO = textwrap.dedent(
    """
    import sys, time
    from kazoo.client import KazooClient
    path, value = sys.argv[1], sys.argv[2].encode()
    t = time.monotonic()
    c = KazooClient(hosts="127.0.0.1:2181", timeout=5)
    c.start(timeout=10)
    c.ensure_path(path)
    c.set(path, value)
    got = c.get(path)[0]
    for _ in range(50):
        c.get(path)
    print(got.decode(), round((time.monotonic() - t) * 1000, 1))
    c.stop(); c.close()
    """
)


def kazoo_in(ns: str, path: str, value: str) -> str:
    proc = subprocess.run(
        [*netns.nsenter(ns), sys.executable, "-c", KAZOO, path, value],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    # Not `tsr-...`: these must not look like a lab to `tessera lab` meanwhile.
    made = [f"tsrt-{unique_name('relay')}-h{k}" for k in (1, 2)]
    try:
        for ns in made:
            netns.add(ns)
        yield made
    finally:
        for ns in made:
            netns.delete(ns)


@pytest.fixture
def relay(
    tmp_path: Path, zk_server: ZookeeperServer, namespaces: list[str]
) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    assert zk_server.port is not None
    config = tmp_path / "relay.json"
    RelayConfig(
        upstreams=((zk_server.host, zk_server.port),), port=2181, namespaces=(namespaces[0],)
    ).write(config)
    log = open(tmp_path / "relay.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, "-m", "tessera.lab.relay", str(config)], stdout=log, stderr=log
    )
    try:
        yield config, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


def _listening(ns: str) -> bool:
    proc = netns.ip(ns, "-o", "link", check=False)  # the namespace exists...
    if proc.returncode != 0:
        return False
    ss = netns.run([*netns.nsenter(ns), "ss", "-Hltn", "sport = :2181"], check=False)
    return "127.0.0.1:2181" in ss.stdout


def test_kazoo_inside_a_namespace_reaches_zookeeper_through_the_relay(
    relay: tuple[Path, subprocess.Popen[bytes]], namespaces: list[str], zk_server: ZookeeperServer
) -> None:
    before = Snapshot.take()
    wait_until(lambda: _listening(namespaces[0]), what="the relay to listen")
    path = f"/relay-test-{unique_name()}"
    value, elapsed_ms = kazoo_in(namespaces[0], path, "through").split()
    assert value == "through"
    # 53 requests and a session set-up over the relay: milliseconds, not seconds.
    assert float(elapsed_ms) < 5000
    from kazoo.client import KazooClient

    direct = KazooClient(hosts=zk_server.address)
    direct.start(timeout=10)
    try:
        assert direct.get(path)[0] == b"through"
        direct.delete(path)
    finally:
        direct.stop()
        direct.close()
    assert Snapshot.take().root_links == before.root_links


def test_the_relay_follows_its_config_and_namespaces_that_are_remade(
    relay: tuple[Path, subprocess.Popen[bytes]], namespaces: list[str], zk_server: ZookeeperServer
) -> None:
    config_path, process = relay
    first, second = namespaces
    wait_until(lambda: _listening(first), what="the relay in the first namespace")
    assert not _listening(second)
    config = RelayConfig.read(config_path)
    RelayConfig(config.upstreams, config.port, (first, second)).write(config_path)
    process.send_signal(signal.SIGHUP)
    wait_until(lambda: _listening(second), timeout=5, what="the relay in the second namespace")
    assert kazoo_in(second, f"/relay-{unique_name()}", "two").startswith("two ")
    # A namespace deleted and made again under the same name is a new namespace: the
    # relay notices (rescan) and listens in the new one.
    netns.delete(second)
    netns.add(second)
    assert not _listening(second)
    wait_until(lambda: _listening(second), timeout=10, what="the relay in the remade namespace")
    assert kazoo_in(second, f"/relay-{unique_name()}", "again").startswith("again ")
    assert process.poll() is None


def test_the_relay_config_file_round_trips(tmp_path: Path) -> None:
    config = RelayConfig((("127.0.0.1", 1234), ("10.0.0.1", 2181)), 2181, ("a", "b"))
    path = tmp_path / "relay.json"
    config.write(path)
    assert json.loads(path.read_text())["port"] == 2181
    assert RelayConfig.read(path) == config


def test_a_connection_to_a_dead_upstream_is_closed_not_hung(
    tmp_path: Path, namespaces: list[str]
) -> None:
    config = tmp_path / "relay.json"
    RelayConfig((("127.0.0.1", 1),), 2181, (namespaces[0],)).write(config)
    process = subprocess.Popen(
        [sys.executable, "-m", "tessera.lab.relay", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: _listening(namespaces[0]), what="the relay to listen")

        def connect_and_read() -> bytes:
            import socket

            with socket.create_connection(("127.0.0.1", 2181), timeout=5) as sock:
                sock.settimeout(5)
                return sock.recv(10)

        started = time.monotonic()
        assert netns.in_netns(namespaces[0], connect_and_read) == b""  # closed at once
        assert time.monotonic() - started < 4
    finally:
        process.terminate()
        process.wait(timeout=10)
