"""The one HTTP client the CLI commands and the lab talk to the REST API through.

Keeping it in one place gives every caller the same timeouts, the same error
translation (connection failures, 4xx/5xx with the API's `message`, as
`tessera.client.errors`) and one seam where tests plug in an `httpx.MockTransport`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from tessera import __version__
from tessera.client.errors import ApiError, ApiUnreachable, BadArgument

DEFAULT_API = "http://127.0.0.1:8181/api/v1"
API_ENV = "TESSERA_API"
# Connecting is local-network fast or it is not happening; answers may take longer
# (a create touches several NSDB nodes in one transaction).
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


def resolve_api_url(explicit: str | None) -> str:
    """`--api`, else `$TESSERA_API`, else the local default."""
    return explicit or os.environ.get(API_ENV) or DEFAULT_API


def check_api_url(url: str) -> str:
    """Refuse what httpx would choke on later with a less helpful message."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise BadArgument(f"invalid API URL '{url}': {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise BadArgument(
            f"invalid API URL '{url}': expected http://HOST:PORT/api/v1 (see --api, ${API_ENV})"
        )
    return url.rstrip("/")


def seg(value: str) -> str:
    """One path segment built from user input, so a stray '/' or '?' cannot reroute."""
    return quote(value, safe=":")


class ApiClient:
    """JSON over HTTP against the API base URL (`.../api/v1`)."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.base_url = check_api_url(base_url)
        self.wait: float | None = None  # `--wait`: writes wait this long to be in effect
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            transport=transport,
            timeout=timeout,
            headers={"Accept": "application/json", "User-Agent": f"tessera-cli/{__version__}"},
        )

    def close(self) -> None:
        self._http.close()

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """The decoded JSON answer (None for an empty one); raises a `UserError`."""
        params: dict[str, str] = {}
        timeout: httpx.Timeout | None = None
        if self.wait is not None and method != "GET":
            params = {"wait": "true", "wait_timeout": f"{self.wait:g}"}
            timeout = httpx.Timeout(self.wait + 30.0, connect=5.0)  # the server's, then ours
        try:
            response = self._http.request(
                method,
                path.lstrip("/"),
                json=dict(body) if body is not None else None,
                params=params or None,
                timeout=timeout or self._http.timeout,
            )
        except httpx.TimeoutException as exc:
            raise ApiUnreachable(
                f"cannot reach the tessera API at {self.base_url}: timed out ({_reason(exc)})"
            ) from None
        except httpx.TransportError as exc:
            raise ApiUnreachable(
                f"cannot reach the tessera API at {self.base_url}: {_reason(exc)}"
            ) from None
        if response.is_error:
            raise ApiError(response.status_code, error_message(response))
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiUnreachable(
                f"the server at {self.base_url} answered {method} {path} with something "
                "other than JSON (is it a tessera API?)"
            ) from None


def error_message(response: httpx.Response) -> str:
    """The API's own explanation: `message` per the contract, FastAPI's `detail` as a
    fallback, else the HTTP reason phrase."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        message = payload.get("message")
        if isinstance(message, str) and message.strip():
            return message
        detail = payload.get("detail")
        if isinstance(detail, str) and detail.strip():
            return detail
        if isinstance(detail, list) and detail:
            return "; ".join(_detail_item(item) for item in detail)
    text = response.text.strip()
    if text and len(text) <= 200 and "<" not in text:
        return text
    return response.reason_phrase or f"HTTP {response.status_code}"


def _detail_item(item: Any) -> str:
    if isinstance(item, dict):
        loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        msg = str(item.get("msg", item))
        return f"{loc}: {msg}" if loc else msg
    return str(item)


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
