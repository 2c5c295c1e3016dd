"""Neutron's error bodies: `{"NeutronError": {"type", "message", "detail"}}`.

python-openstackclient shows `message` and branches on the status; Neutron answers 400
for bad input, 404 for a missing resource, 409 for a conflict with existing state, and
never 422 or 500. Every error path of the Neutron app ends here: request validation,
NSDB errors (mapped by class as the v1 API does) and unexpected exceptions alike.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tessera.nsdb.errors import AlreadyExists, Conflict, IntegrityError, NotFound, NsdbError

log = logging.getLogger(__name__)


class NeutronError(Exception):
    """An error Neutron itself would answer: HTTP status, Neutron type, message."""

    def __init__(self, status: int, type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message


def bad_request(message: str, type: str = "InvalidInput") -> NeutronError:
    return NeutronError(400, type, message)


def not_found(type: str, message: str) -> NeutronError:
    return NeutronError(404, type, message)


def conflict(type: str, message: str) -> NeutronError:
    return NeutronError(409, type, message)


def body(status: int, type: str, message: str) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"NeutronError": {"type": type, "message": message, "detail": ""}},
    )


def describe_validation(errors: list[Any]) -> str:
    """One sentence from pydantic's error list: `field: what is wrong`."""
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "Invalid input for operation: " + "; ".join(parts) + "."


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into a NeutronError body."""

    @app.exception_handler(NeutronError)
    async def _neutron(_: Request, exc: NeutronError) -> JSONResponse:
        return body(exc.status, exc.type, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return body(400, "HTTPBadRequest", describe_validation(list(exc.errors())))

    @app.exception_handler(ValidationError)
    async def _model(_: Request, exc: ValidationError) -> JSONResponse:
        return body(400, "InvalidInput", describe_validation(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "HTTPNotFound", 405: "HTTPMethodNotAllowed"}
        return body(exc.status_code, kinds.get(exc.status_code, "HTTPError"), str(exc.detail))

    @app.exception_handler(NsdbError)
    async def _nsdb(_: Request, exc: NsdbError) -> JSONResponse:
        if isinstance(exc, NotFound):
            return body(404, "NotFound", str(exc))
        if isinstance(exc, (AlreadyExists, Conflict)):
            return body(409, "Conflict", str(exc))
        if isinstance(exc, IntegrityError):
            return body(400, "InvalidInput", str(exc))
        log.warning("NSDB unavailable: %s", exc)
        return body(503, "ServiceUnavailable", str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in the Neutron API")
        return body(500, "InternalServerError", "Request failed: internal server error.")
