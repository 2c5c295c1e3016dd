"""Leader election on ZooKeeper: ephemeral sequential participants, lowest leads."""

from __future__ import annotations

import builtins
import logging
import uuid
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent

from tessera.nsdb.base import LeaderElection
from tessera.nsdb.codec import escape_component
from tessera.nsdb.errors import NsdbError
from tessera.nsdb.notify import LeaderRunner

if TYPE_CHECKING:
    from tessera.nsdb.zookeeper.session import ZkSession

log = logging.getLogger("tessera.nsdb.zookeeper")

_STEP_DOWN_WAIT = 5.0


class ZookeeperElection(LeaderElection):
    """Participants are ephemeral sequential znodes; the lowest sequence leads, each
    other participant watches only its predecessor (no herd on every change)."""

    def __init__(self, nsdb: ZkSession, name: str, identifier: str) -> None:
        self.nsdb = nsdb
        self.name = name
        self.identifier = identifier
        self.directory = f"{nsdb._elections_dir}/{escape_component(name)}"
        self.node: str | None = None  # our znode's name, touched on the notifier thread
        self.stopped = True
        self.runner = LeaderRunner(f"leader-{name}", self._term_ended)
        self._guid = uuid.uuid4().hex
        self._on_elected: Callable[[object], None] | None = None
        self._pred_watch = self._make_pred_watch()

    def _make_pred_watch(self) -> Callable[[WatchedEvent], None]:
        def on_event(event: WatchedEvent) -> None:
            if event.type != EventType.NONE:
                self.nsdb.notifier.submit(lambda: self.nsdb._guarded(self.check))

        return on_event

    def start(self, on_elected: Callable[[object], None]) -> None:
        """Joins as soon as ZooKeeper is reachable (now, or after it comes back)."""
        self.nsdb._check_open()
        if not self.stopped:
            raise RuntimeError(f"election participant '{self.identifier}' already started")
        self._on_elected = on_elected
        self.stopped = False
        # Join now when connected, so participants queue in the order they started.
        self.nsdb.notifier.run_sync(
            lambda: self.nsdb._guarded(self.check), self.nsdb._op_timeout + 1.0
        )

    @staticmethod
    def _seq(child: str) -> int:
        return int(child.rsplit("-", 1)[1])

    def _children(self) -> builtins.list[str]:
        zk, nsdb = self.nsdb._zk, self.nsdb
        children = nsdb._run(lambda: zk.get_children_async(self.directory))
        if isinstance(children, NoNodeError):
            return []
        if isinstance(children, Exception):
            raise children
        return sorted(children, key=self._seq)

    def check(self) -> None:
        """Notifier thread: join if needed, lead if first, else watch the predecessor."""
        zk, nsdb = self.nsdb._zk, self.nsdb
        for _ in range(10):
            if self.stopped:
                self._leave()
                return
            children = self._children()
            if self.node is None:
                # A create whose answer was lost may have worked: adopt it (its owner is
                # this session, or it would already be gone).
                mine = [c for c in children if c.startswith(self._guid)]
                if mine:
                    self.node = mine[0]
                else:
                    created = nsdb._run(
                        lambda: zk.create_async(
                            f"{self.directory}/{self._guid}-",
                            self.identifier.encode("utf-8"),
                            ephemeral=True,
                            sequence=True,
                            makepath=True,
                        )
                    )
                    if isinstance(created, Exception):
                        raise created
                    self.node = created.rsplit("/", 1)[1]
                    continue
            if self.node not in children:
                self.runner.step_down()  # our session ended: queue again
                self.node = None
                continue
            index = children.index(self.node)
            if index == 0:
                if self._on_elected is not None:
                    self.runner.elect(self._on_elected)
                return
            self.runner.step_down()
            predecessor = f"{self.directory}/{children[index - 1]}"
            stat = nsdb._run(partial(zk.exists_async, predecessor, watch=self._pred_watch))
            if isinstance(stat, Exception):
                raise stat
            if stat is not None:
                return
        raise NsdbError(f"election {self.name} did not settle")

    def _leave(self) -> None:
        if self.node is None:
            return
        node = f"{self.directory}/{self.node}"
        result = self.nsdb._run(lambda: self.nsdb._zk.delete_async(node))
        if isinstance(result, Exception) and not isinstance(result, NoNodeError):
            raise result
        self.node = None

    def _term_ended(self, voluntary: bool) -> None:
        def after() -> None:
            if voluntary and not self.stopped:
                self._leave()  # resigned: the next participant leads, we queue again
            self.check()

        self.nsdb.notifier.submit(lambda: self.nsdb._guarded(after))

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.runner.step_down(wait=_STEP_DOWN_WAIT)
        try:
            self.nsdb.notifier.run_sync(
                lambda: self.nsdb._guarded(self._leave), self.nsdb._op_timeout + 1.0
            )
        except Exception as exc:  # the znode is ephemeral: it goes with the session
            log.info("leaving election %s: %s", self.name, exc)

    @property
    def is_leader(self) -> bool:
        return self.runner.leading

    def leader(self) -> str | None:
        zk, nsdb = self.nsdb._zk, self.nsdb
        for _ in range(5):
            children = self._children()
            if not children:
                return None
            result = nsdb._run(partial(zk.get_async, f"{self.directory}/{children[0]}"))
            if isinstance(result, NoNodeError):
                continue
            if isinstance(result, Exception):
                raise result
            return str(result[0].decode("utf-8"))
        return None
