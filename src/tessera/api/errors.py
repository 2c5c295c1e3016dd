"""Every error the API returns is `{"message": "..."}`: one readable sentence.

NSDB errors map to statuses by class (`NotFound` 404, `AlreadyExists`/`Conflict` 409,
NSDB errors map to statuses by class (`NotFound` 404, `AlreadyExists`/`Conflict` 409,
`IntegrityError` 400, `ObjectTooLarge` 413, `Unavailable` and any other backend failure
503); pydantic's validation errors become one sentence naming the field, 422 when the
request itself is malformed (what the OpenAPI schema can say: types, ranges, formats,
unknown fields), 400 when a well-formed request describes an invalid object (a rule
across fields).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tessera.model.types import RULE_ERROR
from tessera.nsdb.errors import (
    AlreadyExists,
    Conflict,
    IntegrityError,
    NotFound,
    NsdbError,
    ObjectTooLarge,
    Unavailable,
)

log = logging.getLogger(__name__)


class ErrorMessage(BaseModel):
    """The body of every error response."""

    message: str


def _describe(text: str) -> dict[str, Any]:
    return {"model": ErrorMessage, "description": text}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _describe("The request describes an invalid object or names a missing one"),
    404: _describe("No such object"),
    409: _describe("Conflicts with the current state or a concurrent change"),
    413: _describe("The object (or the change) is larger than the NSDB stores"),
    422: _describe("The request is malformed (JSON, types, unknown fields)"),
    503: _describe("The NSDB (ZooKeeper) is unreachable; nothing was changed"),
}

_STATUS: tuple[tuple[type[NsdbError], int], ...] = (
    (NotFound, 404),
    (AlreadyExists, 409),
    (Conflict, 409),
    (IntegrityError, 400),
    (ObjectTooLarge, 413),
    (Unavailable, 503),
)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"message": message})


def nsdb_status(exc: NsdbError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 503  # the backend refused for a reason of its own: not the client's fault


def _field(loc: Sequence[int | str]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "path", "query", "header"):
        parts = parts[1:]
    return ".".join(parts)


def _clean(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def _sentence(err: Any, what: str) -> str:
    kind = err.get("type", "")
    loc = err.get("loc", ())
    field = _field(loc)
    where = loc[0] if loc else ""
    if kind == "json_invalid":
        return f"the request body is not valid JSON ({_clean(err.get('msg', ''))})"
    if where == "body" and not field:
        if kind == "missing":
            return "the request body is missing: send a JSON object"
        if kind in ("model_attributes_type", "dict_type", "model_type"):
            return "the request body must be a JSON object"
    if kind == "json_type":  # the message names the field already (`jsontypes`)
        return _clean(str(err.get("msg", "")))
    if kind == "extra_forbidden":
        return f"{field}: unknown field (not part of {what})"
    if kind == "missing":
        return f"{field}: this field is required"
    msg = _clean(str(err.get("msg", "invalid value")))
    if not field:
        return f"invalid {what}: {msg}"
    label = {"path": "path parameter", "query": "query parameter"}.get(str(where), "")
    return f"{label + ' ' if label else ''}{field}: {msg}"


def _noun(class_name: str) -> str:
    """`DhcpSubnet` → `DHCP subnet`, as a user would name it."""
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", class_name).lower()
    return words.replace("dhcp", "DHCP").replace("ip ", "IP ")


def one_sentence(errors: Sequence[Any], what: str) -> str:
    if not errors:
        return f"invalid {what}"
    first = _sentence(errors[0], what)
    more = len(errors) - 1
    if more:
        first += f" (and {more} more problem{'s' if more > 1 else ''})"
    return first


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this request's path. Starlette's 405 names only
    the methods of the first route whose path matched (`/bridges/{id}` is three routes:
    GET, PUT, DELETE), but RFC 9110 wants `Allow` to list all of them. The app keeps
    its routes' paths and methods in `app.state.route_methods` (see `app.py`)."""
    routes = getattr(request.app.state, "route_methods", None)
    if routes is None:
        return []
    path = request.scope["path"]
    return sorted({m for regex, methods in routes() if regex.match(path) for m in methods})


def _whole_object_rule(err: Any) -> bool:
    """Whether a validation error comes from a rule over a whole object of the body (its
    fields each well-formed: a port range whose start is past its end, a packet
    description with `protocol` but no addresses), not from a malformed field. The
    schema can say what a field must be but not such rules, so a schema-valid request
    may break one: that is a 400, an invalid object, never a 422, a malformed request."""
    if err.get("type") == RULE_ERROR:
        return True  # a field rule the schema cannot state (a unicast MAC)
    return err.get("type") == "value_error" and isinstance(err.get("input"), dict)


def install(app: FastAPI) -> None:
    async def on_nsdb_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, NsdbError)
        status = nsdb_status(exc)
        if status == 503:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error(status, str(exc) or type(exc).__name__)

    async def on_request_invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        if errors and all(map(_whole_object_rule, errors)):
            return error(400, one_sentence(errors, "request body"))
        return error(422, one_sentence(errors, "this request"))

    async def on_object_invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ValidationError)
        what = _noun(exc.title) if exc.title else "object"
        return error(400, one_sentence(exc.errors(), what))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such resource: {request.url.path}"
        headers = exc.headers
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            detail = f"{request.method} is not supported on {request.url.path}"
            if allowed:
                detail += f" (only {', '.join(allowed)})"
                headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        return JSONResponse(
            status_code=exc.status_code, content={"message": detail}, headers=headers
        )

    app.add_exception_handler(NsdbError, on_nsdb_error)
    app.add_exception_handler(RequestValidationError, on_request_invalid)
    app.add_exception_handler(ValidationError, on_object_invalid)
    app.add_exception_handler(StarletteHTTPException, on_http)
