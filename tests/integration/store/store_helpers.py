"""Small topologies for the topology store tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tessera.model import Bridge, Port, Router
from tessera.nsdb.store import TopologyStore


def bridge_port(store: TopologyStore, bridge: Bridge, **fields: object) -> Port:
    return store.create(Port(device_id=bridge.id, type="Bridge", **fields))  # type: ignore[arg-type]


def router_port(store: TopologyStore, router: Router, addr: str, length: int = 24) -> Port:
    return store.create(
        Port(
            device_id=router.id,
            type="Router",
            port_address=addr,
            network_address=addr,
            network_length=length,
        )
    )


@dataclass
class Net:
    """A bridge linked to a router: b -- bp <-> rp -- r."""

    bridge: Bridge
    router: Router
    bp: Port
    rp: Port


def bridge_and_router(store: TopologyStore) -> Net:
    bridge = store.create(Bridge(name="b"))
    router = store.create(Router(name="r"))
    bp = bridge_port(store, bridge)
    rp = router_port(store, router, "10.0.0.1")
    store.link(bp.id, rp.id)
    return Net(bridge, router, store.get(Port, bp.id), store.get(Port, rp.id))


class BeforeCommit:
    """An NSDB client that runs `hook` once, just before its first commit: a
    deterministic way to let another writer act between our reads and our commit."""

    def __init__(self, inner: Any, hook: Callable[[], None]) -> None:
        self._inner = inner
        self._hook: Callable[[], None] | None = hook

    def commit(self, ops: Any) -> Any:
        hook, self._hook = self._hook, None
        if hook is not None:
            hook()
        return self._inner.commit(ops)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
