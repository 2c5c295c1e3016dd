"""A small stateful stand-in for the REST API, served through `httpx.MockTransport`.

It follows the contract's conventions generically (POST to a collection creates
`collection/<id>` with 201, GET lists direct children, PUT replaces, DELETE removes,
unknown paths 404 with `{"message"}`), records every request, and lets a test override
any (method, path) with a canned answer. Enough to check what the CLI sends and prints
without the real server.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

BASE = "/api/v1"
Handler = Callable[[httpx.Request], httpx.Response]


@dataclass
class Sent:
    method: str
    path: str  # relative to /api/v1
    body: Any
    host: str = ""


@dataclass
class FakeApi:
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    overrides: dict[tuple[str, str], Handler] = field(default_factory=dict)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # -- test helpers --
    def add(self, path: str, **fields: Any) -> dict[str, Any]:
        obj = {"id": fields.pop("id", str(uuid.uuid4())), **fields}
        self.objects[f"{path}/{obj['id']}"] = obj
        return obj

    def on(self, method: str, path: str, status: int, payload: Any = None) -> None:
        content = b"" if payload is None else json.dumps(payload).encode()

        def answer(_request: httpx.Request) -> httpx.Response:
            return httpx.Response(status, content=content)

        self.overrides[(method, path)] = answer

    def last(self) -> Sent:
        return self.sent[-1]

    def writes(self) -> list[Sent]:
        return [s for s in self.sent if s.method != "GET"]

    # -- the server --
    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        assert path.startswith(BASE + "/"), path
        rel = path[len(BASE) :].rstrip("/")
        body = json.loads(request.content) if request.content else None
        self.sent.append(Sent(request.method, rel, body, request.url.host))
        override = self.overrides.get((request.method, rel))
        if override is not None:
            return override(request)
        if request.method == "GET":
            if rel in self.objects:
                return httpx.Response(200, json=self.objects[rel])
            children = [o for p, o in self.objects.items() if p.rpartition("/")[0] == rel]
            if children or _is_collection(rel):
                return httpx.Response(200, json=children)
        elif request.method == "POST" and _is_collection(rel):
            obj = {"id": str(uuid.uuid4()), **(body or {})}
            self.objects[f"{rel}/{obj['id']}"] = obj
            return httpx.Response(201, json=obj)
        elif request.method == "PUT" and rel in self.objects:
            self.objects[rel] = {**(body or {}), "id": self.objects[rel]["id"]}
            return httpx.Response(200, json=self.objects[rel])
        elif request.method == "DELETE" and rel in self.objects:
            del self.objects[rel]
            return httpx.Response(204)
        return httpx.Response(404, json={"message": f"{rel} not found"})


def _is_collection(rel: str) -> bool:
    """`/bridges`, `/bridges/{id}/ports`: an odd number of segments."""
    return len(rel.strip("/").split("/")) % 2 == 1
