"""NSDB URLs: the one parser, and opening the backend a URL names.

    memory                  a private in-process store
    memory:NAME             the in-process store NAME, shared by every client opening it
    zk://HOST:PORT[,...]/ROOT   ZooKeeper, objects under ROOT (default /tessera)

It lives apart from `base` (the interface) because it imports the backends, which import
the interface: with `open_nsdb` in `base` the interface and its backends imported each
other. The backends are imported only when opened, so parsing a URL (the CLI checks
`--nsdb` before doing anything) costs neither kazoo nor pydantic.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tessera.nsdb.errors import Unavailable

if TYPE_CHECKING:
    from tessera.nsdb.base import Nsdb

DEFAULT_ZK_ROOT = "/tessera"


@dataclass(frozen=True)
class NsdbUrl:
    """A parsed NSDB URL: `memory` (with `name`, the whole URL) or `zookeeper` (with
    `hosts` as kazoo takes them and `root` as an absolute path)."""

    url: str
    backend: str
    name: str = ""
    hosts: str = ""
    root: str = DEFAULT_ZK_ROOT


def parse_nsdb_url(url: str) -> NsdbUrl:
    """ValueError (a one-line message naming the URL) for anything but the forms above."""
    if url == "memory" or url.startswith("memory:"):
        return NsdbUrl(url, "memory", name=url)
    if url.startswith("zk://"):
        hosts, _, root = url[len("zk://") :].partition("/")
        if not hosts:
            raise ValueError(f"'{url}' names no ZooKeeper host (zk://HOST:PORT/ROOT)")
        return NsdbUrl(url, "zookeeper", hosts=hosts, root="/" + (root or DEFAULT_ZK_ROOT[1:]))
    raise ValueError(f"'{url}' is not an NSDB URL (use 'memory' or 'zk://HOST:PORT/ROOT')")


def open_nsdb(url: str, *, session_timeout: float | None = None) -> Nsdb:
    """A client of the NSDB `url` names. `session_timeout` (seconds) applies to
    ZooKeeper only: how long the session outlives a lost connection (the API server
    shortens it so that a dead leader is replaced quickly)."""
    parsed = parse_nsdb_url(url)
    if parsed.backend == "memory":
        from tessera.nsdb.memory import MemoryNsdb, MemoryStore

        return MemoryNsdb(MemoryStore.named(parsed.name))
    from tessera.nsdb.zookeeper import ZookeeperNsdb

    if session_timeout is None:
        return ZookeeperNsdb(parsed.hosts, parsed.root)
    return ZookeeperNsdb(parsed.hosts, parsed.root, session_timeout=session_timeout)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def open_connected(url: str, *, hint: str, session_timeout: float | None = None) -> Nsdb:
    """`open_nsdb`, refusing an NSDB that did not connect within the backend's connect
    wait: `Unavailable` with one line (ending in `hint`) instead of a page of kazoo
    retries, and before the caller has made anything. Services started against an
    unreachable ZooKeeper would only retry (the API answering 503, the agent creating
    its datapath for nothing)."""
    with _quiet("kazoo", "tessera.nsdb.zookeeper"):
        nsdb = open_nsdb(url, session_timeout=session_timeout)
        if nsdb.connected:
            return nsdb
        nsdb.close()
    raise Unavailable(f"the NSDB at {url} is unreachable: {hint}")
