"""The embedded ZooKeeper without a JVM: peers, the files every member writes, and the
restart back-off. (The JVMs themselves: tests/integration/cluster/test_embedded_zk.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.cluster.embedded_zk import Backoff, EmbeddedZooKeeper, Peer

PEERS = ["127.0.0.1:2181:2888:3888", "127.0.0.1:2182:2889:3889", "127.0.0.1:2183:2890:3890"]


def test_a_peer_is_host_and_three_ports() -> None:
    peer = Peer.parse(" zk-2.example:2181:2888:3888 ")
    assert peer == Peer("zk-2.example", 2181, 2888, 3888)
    assert str(peer) == "zk-2.example:2181:2888:3888"
    assert peer.client_address == "zk-2.example:2181"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1:2181:2888", "is not HOST:CLIENT_PORT:PEER_PORT:ELECTION_PORT"),
        (":2181:2888:3888", "is not HOST:CLIENT_PORT:PEER_PORT:ELECTION_PORT"),
        ("h:2181:x:3888", "is not HOST:CLIENT_PORT:PEER_PORT:ELECTION_PORT"),
        ("h:2181:2888:70000", "1 to 65535"),
        ("h:2181:2181:3888", "must be different"),
        ("h:2181:0:0", "1 to 65535"),  # only a standalone server needs no quorum ports
    ],
)
def test_a_bad_peer_is_a_one_line_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Peer.parse(text)
    assert Peer.parse("h:2181:0:0", standalone=True) == Peer("h", 2181, 0, 0)


@pytest.mark.parametrize(
    ("node_id", "peers", "client_port", "message"),
    [
        (4, PEERS, 2181, "node id 4 is not one of the 3 peers"),
        (0, PEERS, 2181, "node id 0 is not one of the 3 peers"),
        (2, PEERS, 2181, "client port 2181 is not that of peer 2"),
        (0, [], 2181, "node id 0 is not 1 or more"),
        (1, [PEERS[0], "127.0.0.1:2182:2888:3999"], 2181, "share a HOST:PORT"),
    ],
)
def test_peers_that_cannot_form_an_ensemble_are_refused(
    node_id: int, peers: list[str], client_port: int, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        EmbeddedZooKeeper(node_id, peers, tmp_path, client_port)


def test_every_member_writes_the_same_ensemble_and_its_own_id(tmp_path: Path) -> None:
    members = [
        EmbeddedZooKeeper(i, PEERS, tmp_path / f"zk{i}", 2180 + i, tick_ms=300) for i in (1, 2, 3)
    ]
    for member in members:
        member.write_config()
    configs = [
        dict(ln.split("=", 1) for ln in m.config_path.read_text().splitlines()) for m in members
    ]
    ensemble = {k: v for k, v in configs[0].items() if k.startswith("server.")}
    assert ensemble == {
        "server.1": "127.0.0.1:2888:3888",
        "server.2": "127.0.0.1:2889:3889",
        "server.3": "127.0.0.1:2890:3890",
    }
    for i, (member, config) in enumerate(zip(members, configs, strict=True), start=1):
        assert {k: v for k, v in config.items() if k.startswith("server.")} == ensemble
        assert member.myid_path.read_text() == f"{i}\n"
        assert config["clientPort"] == str(2180 + i)
        assert config["clientPortAddress"] == "127.0.0.1"
        assert config["dataDir"] == str(member.data_dir / "data")
        assert config["tickTime"] == "300"
        assert (config["initLimit"], config["syncLimit"]) == ("10", "5")
        assert config["forceSync"] == "yes"
        assert "srvr" in config["4lw.commands.whitelist"]
        assert str(member.log_path) in (member.data_dir / "log4j.properties").read_text()
        assert member.connect_string == "127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183"
    assert members[0].url() == "zk://127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183/tessera"


def test_one_peer_or_none_is_configured_standalone(tmp_path: Path) -> None:
    member = EmbeddedZooKeeper(1, PEERS[:1], tmp_path, 2181)
    lines = member.config_lines()
    assert not [ln for ln in lines if ln.startswith(("server.", "initLimit"))]
    assert member.connect_string == "127.0.0.1:2181"
    # No peers (the cluster config's default): standalone on `host`, any node id.
    alone = EmbeddedZooKeeper(7, [], tmp_path, 2999, host="127.0.0.2")
    assert alone.connect_string == "127.0.0.2:2999"
    assert "clientPortAddress=127.0.0.2" in alone.config_lines()
    assert not [ln for ln in alone.config_lines() if ln.startswith("server.")]


def test_a_member_never_started_is_not_alive_and_stops_quietly(tmp_path: Path) -> None:
    member = EmbeddedZooKeeper(1, PEERS, tmp_path, 2181)
    assert not member.alive and member.pid is None and not member.supervised
    member.stop()
    assert member.restarts == 0


def test_backoff_doubles_up_to_its_bound_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(initial=0.5, maximum=3.0, stable_after=60.0)
    assert [backoff.delay(ran_for=1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert backoff.delay(ran_for=61.0) == 0.5  # it ran a minute: a fresh failure
    assert backoff.delay(ran_for=0.0) == 1.0
    with pytest.raises(ValueError, match="initial <= maximum"):
        Backoff(initial=5.0, maximum=1.0)
