"""The ZooKeeper server manager: start, serve, stop exactly its own process, restart in
the same directory, and clear errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tessera.nsdb import zkserver
from tessera.nsdb.zkserver import ZookeeperError, ZookeeperServer
from tessera.nsdb.zookeeper import ZookeeperNsdb

pytestmark = pytest.mark.zookeeper


def test_start_serve_stop_and_restart_keep_port_and_data(tmp_path: Path) -> None:
    directory = tmp_path / "zk"
    server = ZookeeperServer(directory)
    assert not server.is_running
    with server:
        assert server.is_running
        pid = server.pid
        assert pid is not None
        assert server.four_letter("ruok") == "imok"
        assert "Mode: standalone" in server.four_letter("srvr")
        client = ZookeeperNsdb(server.address, "/persist")
        client.state_set("t", "k", "v", ephemeral=False)
        client.close()
        port = server.port
    assert not server.is_running
    assert not Path(f"/proc/{pid}").exists()

    # Another manager of the same directory (as `lab nsdb start` in another process).
    again = ZookeeperServer(directory)
    assert again.port == port
    again.start()
    try:
        client = ZookeeperNsdb(again.address, "/persist")
        assert client.state_get("t") == {"k": "v"}
        client.close()
        # A third manager finds the running server through its pid file and stops it.
        third = ZookeeperServer(directory)
        assert third.is_running and third.pid == again.pid
        third.start()  # idempotent: already serving
        third.stop()
        assert not again.is_running
    finally:
        again.stop()


def test_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ZookeeperError, match=f"{port} is already in use"):
            ZookeeperServer(tmp_path / "zk", port=port).start()


def test_missing_java_or_zookeeper_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zkserver, "ZOOKEEPER_JAR", tmp_path / "absent.jar")
    with pytest.raises(ZookeeperError, match="ZooKeeper is not installed"):
        ZookeeperServer(tmp_path / "zk").start()
    monkeypatch.setattr(zkserver.shutil, "which", lambda name: None)
    with pytest.raises(ZookeeperError, match="Java is not installed"):
        ZookeeperServer(tmp_path / "zk").start()


def test_a_server_that_dies_at_start_up_is_reported(tmp_path: Path) -> None:
    server = ZookeeperServer(tmp_path / "zk", tick_ms=0)  # tickTime=0 is refused
    with pytest.raises(ZookeeperError, match="exited during start-up"):
        server.start(timeout=30)
    assert not server.is_running
