"""The cluster node's configuration: defaults, precedence, validation, the printed file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tessera.cluster import config as cfg
from tessera.cluster.services import Timing

#: The API's placement options when none is given (no Cassandra: placement is 503).
NO_PLACEMENT = {"cassandra": [], "cassandra_keyspace": "tessera"}


def test_every_default_key_is_documented_and_the_printed_file_reads_back() -> None:
    data = cfg.defaults(["beacon"])
    text = cfg.render(data)
    assert tomllib.loads(text) == data
    assert tomllib.loads(cfg.render(data, docs=False)) == data
    for key in cfg.KEYS:
        assert key.doc and f"{key.name} = " in text
    assert data["services"]["beacon"] == {"enabled": True}  # installed add-ons run


def test_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        '[node]\nnsdb = "zk://file:2181/t"\nsession_timeout = 3\n'
        '[services.api]\nlisten = "0.0.0.0:8181"\n'
        '[services.beacon]\nenabled = false\ncolour = "blue"\n'
    )
    conf = cfg.build(path=path, env={}, addons=["beacon"])
    assert conf.nsdb == "zk://file:2181/t"
    assert conf.session_timeout == 3.0 and isinstance(conf.session_timeout, float)
    assert conf.options("api") == {"listen": "0.0.0.0:8181", **NO_PLACEMENT}
    assert not conf.enabled("beacon") and conf.options("beacon") == {"colour": "blue"}
    assert conf.enabled("host-liveness") and not conf.enabled("metrics")

    env = {cfg.NSDB_ENV: "zk://env:2181/t"}
    assert cfg.build(path=path, env=env).nsdb == "zk://env:2181/t"
    flags = {"node": {"nsdb": "memory"}, "services": {"beacon": {"enabled": True}}}
    conf = cfg.build(path=path, env=env, overrides=flags, addons=["beacon"])
    assert conf.nsdb == "memory" and conf.enabled("beacon")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[nodes]\n", "unknown table [nodes]"),
        ("[node]\nnsbd = 'x'\n", "unknown key 'nsbd' in [node]"),
        ("[node]\nsession_timeout = 'long'\n", "node.session_timeout: expected float"),
        ("[cluster]\nrestart_max = -1\n", "must not be negative"),
        ("[services.api]\nport = 1\n", "unknown key 'port' in [services.api]"),
        ("[services.beacon]\nenabled = 'yes'\n", "expected true or false"),
        ("[zookeeper]\nid = 0\n", "zookeeper.id must be 1..255"),
        ("[zookeeper]\npeers = [1]\n", "expected a list of strings"),
        ("[node\n", "is not valid TOML"),
    ],
)
def test_mistakes_are_one_line_errors_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.build(path=path, env={})
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.build(path=tmp_path / "nope.toml")


def test_back_off_doubles_up_to_its_bound() -> None:
    timing = Timing(restart_initial=0.5, restart_max=3.0)
    assert [timing.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert timing.backoff(10_000) == 3.0


def test_docs_show_the_defaults_as_printed() -> None:
    """docs/cluster.md's reference block is `tessera cluster config`'s output."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "cluster.md").read_text()
    block = text.split("## Configuration", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    assert block.strip() == cfg.render(cfg.defaults()).strip()


def test_api_serve_is_a_node_with_the_api_and_the_janitor_only() -> None:
    from tessera.api.server import api_serve_config

    conf = api_serve_config("memory", "127.0.0.1:9999")
    assert conf.nsdb == "memory" and conf.session_timeout == 4.0
    assert conf.options("api") == {"listen": "127.0.0.1:9999", **NO_PLACEMENT}
    assert [s for s in conf.data["services"] if conf.enabled(s)] == ["api", "host-liveness"]
    more = api_serve_config("memory", "127.0.0.1:9999", {"metrics": {"enabled": True}})
    assert more.enabled("metrics")
