"""Helpers shared by the API and cluster tests."""

from __future__ import annotations

from typing import Any

PREFIX = "/api/v1"


class Api:
    """A test client speaking the contract: every call states the status it expects."""

    def __init__(self, client: Any, nsdb: Any) -> None:
        self.http = client
        self.nsdb = nsdb

    def call(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        url = (
            path
            if path.startswith(PREFIX) or path in ("/metrics", "/openapi.json")
            else PREFIX + path
        )
        response = self.http.request(method, url, json=body)
        assert response.status_code == status, (
            f"{method} {url} -> {response.status_code} (expected {status}): {response.text}"
        )
        if status >= 400:
            payload = response.json()
            assert response.headers["content-type"] == "application/json"
            # Only the health check's 503 says more: the health fields, all false or null.
            extra = (
                {"status", "nsdb_connected", "leader", "leader_id"}
                if url.endswith("/health")
                else set()
            )
            assert "message" in payload and set(payload) <= {"message", *extra}, payload
            assert isinstance(payload["message"], str), payload
            assert payload["message"] and "\n" not in payload["message"]
            return payload["message"]
        if status == 204:
            assert not response.content
            return None
        return response.json()

    def get(self, path: str, status: int = 200) -> Any:
        return self.call("GET", path, status=status)

    def post(self, path: str, body: Any = None, status: int = 201) -> Any:
        return self.call("POST", path, body if body is not None else {}, status)

    def put(self, path: str, body: Any, status: int = 200) -> Any:
        return self.call("PUT", path, body, status)

    def delete(self, path: str, status: int = 204) -> Any:
        return self.call("DELETE", path, status=status)

    # -- small topologies --

    def bridge(self, **fields: Any) -> dict[str, Any]:
        return self.post("/bridges", fields)

    def router(self, **fields: Any) -> dict[str, Any]:
        return self.post("/routers", fields)

    def bridge_port(self, bridge: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return self.post(f"/bridges/{bridge['id']}/ports", fields)

    def router_port(self, router: dict[str, Any], addr: str, length: int = 24) -> dict[str, Any]:
        body = {"port_address": addr, "network_address": addr, "network_length": length}
        return self.post(f"/routers/{router['id']}/ports", body)
