"""The API server's way to placement: a Cassandra connection opened on first use (so
that the API starts, and answers a clear 503, while Cassandra is down or was never
configured), with the schema ensured once."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from tessera.placement.errors import Unavailable
from tessera.placement.store import PlacementStore

NOT_CONFIGURED = (
    "placement is not configured on this API server: start it with "
    "`tessera api serve --cassandra HOST[,HOST]`"
)


class PlacementBackend:
    def __init__(self, contact_points: Sequence[str] = (), keyspace: str = "tessera") -> None:
        self.contact_points = [c for c in contact_points if c]
        self.keyspace = keyspace
        self._lock = threading.Lock()
        self._driver: Any = None
        self._store: PlacementStore | None = None

    @property
    def configured(self) -> bool:
        return bool(self.contact_points)

    def store(self) -> PlacementStore:
        if not self.configured:
            raise Unavailable(NOT_CONFIGURED)
        with self._lock:
            if self._store is None:
                self._store = self._open()
            return self._store

    def _open(self) -> PlacementStore:
        from tessera.cassandra.client import connect, create_keyspace
        from tessera.cassandra.errors import CassandraError
        from tessera.placement.schema import ensure_schema

        try:
            driver, session = connect(self.contact_points, connect_timeout=3.0)
        except CassandraError as exc:
            raise Unavailable(str(exc)) from None
        try:
            hosts = len(driver.metadata.all_hosts())
            create_keyspace(session, self.keyspace, min(max(hosts, 1), 3))
            session.set_keyspace(self.keyspace)
            ensure_schema(session)
            store = PlacementStore(session)
        except Exception as exc:
            driver.shutdown()
            raise Unavailable(f"Cassandra at {', '.join(self.contact_points)}: {exc}") from None
        self._driver = driver
        return store

    def close(self) -> None:
        with self._lock:
            if self._driver is not None:
                self._driver.shutdown()
            self._driver = self._store = None
