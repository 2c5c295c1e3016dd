"""A minimal Keystone v3 for tempest, plus the auth_token middleware a Neutron sits behind.

tempest has no noauth mode: every client first asks Keystone v3 for a project-scoped
token (`POST /v3/auth/tokens`, the token in the `X-Subject-Token` header) and takes the
service URLs from the token's catalog. tessera's Neutron endpoint has no Keystone, so
the tempest harness (tests/support/tempest_run.py) serves this fake: static accounts
(the same ones written to tempest's accounts.yaml), tokens kept in memory, a catalog
with one `network` service pointing at the Neutron URL under test, and for an admin the
`Default` domain and projects made and deleted in memory (tempest's RoutersAdminTest
creates one to give a router its id).

In a real cloud Neutron never sees the password either: keystonemiddleware's auth_token
validates `X-Auth-Token` and hands the service `X-Project-Id`, `X-User-Id` and `X-Roles`.
`KeystoneContextMiddleware` does the same for an ASGI app served in the test process, so
a Neutron that honours those headers gets the project of the tempest account that sent
the request (tempest compares `project_id` of what it created with its own).
"""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from support.local import free_port

#: Keystone's default domain, which tempest uses when an account names none.
DEFAULT_DOMAIN = {"id": "default", "name": "Default"}
#: The one region of the catalog (tempest's default `[network] region` is empty: any).
REGION = "RegionOne"
#: How long a token lives; tempest re-authenticates 60 s before expiry.
TOKEN_LIFETIME = datetime.timedelta(hours=2)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Account:
    """One static user: what accounts.yaml lists and what the fake Keystone accepts."""

    username: str
    password: str
    project_name: str
    roles: tuple[str, ...]

    @property
    def user_id(self) -> str:
        """Stable ids (uuid5 of the name), so reruns and logs compare."""
        return uuid.uuid5(uuid.NAMESPACE_URL, f"user:{self.username}").hex

    @property
    def project_id(self) -> str:
        return project_id(self.project_name)


def project_id(project_name: str) -> str:
    """The id the fake Keystone gives a project name (same name, same id)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"project:{project_name}").hex


def default_accounts() -> list[Account]:
    """The accounts tempest's static credentials need for the network API tests.

    `primary` is the project member of the project with the most personas (tempest
    scores projects so), `admin` the account with the admin role; member and reader share
    a project so the project-scoped personas (`project_member`, `project_reader`) resolve
    too. `alt` is the first free account without admin in this list's order, so the
    account in another project comes before the reader: a reader as `alt` would share
    primary's project, and the tests of isolation between projects (an alt's floating IP
    invisible to primary) could not hold.
    """
    return [
        Account("tempest-member", "member-secret", "tempest-project", ("member",)),
        Account("tempest-alt", "alt-secret", "tempest-alt-project", ("member",)),
        Account("tempest-reader", "reader-secret", "tempest-project", ("reader",)),
        Account("tempest-admin", "admin-secret", "tempest-admin-project", ("admin", "member")),
    ]


@dataclass
class Token:
    account: Account
    expires_at: datetime.datetime


def _keystone_error(code: int, title: str, message: str) -> JSONResponse:
    """Keystone's error body: tempest's token client reads `error.message`."""
    return JSONResponse({"error": {"code": code, "title": title, "message": message}}, code)


def _iso(moment: datetime.datetime) -> str:
    # tempest parses exactly '%Y-%m-%dT%H:%M:%S.%fZ' or '%Y-%m-%dT%H:%M:%SZ'.
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class FakeKeystone:
    """Accounts, issued tokens and the catalog; `app()` is the HTTP face of it.

    `neutron_url` is the network endpoint as the catalog lists it, without the `/v2.0`
    suffix (tempest's network clients append `v2.0/...` themselves).
    """

    neutron_url: str
    accounts: list[Account] = field(default_factory=default_accounts)
    base_url: str = ""  # set once served: the identity endpoint of the catalog
    tokens: dict[str, Token] = field(default_factory=dict)
    #: Projects an admin created through `POST /v3/projects`, by id (tempest's
    #: RoutersAdminTest creates one to give a router another project's id).
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: (method, path) of every request the fake answered, for tests and diagnostics.
    requests: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def account_for(self, token: str) -> Account | None:
        """The account a live token was issued to (None: unknown or expired)."""
        with self._lock:
            issued = self.tokens.get(token)
        if issued is None or issued.expires_at <= datetime.datetime.now(datetime.UTC):
            return None
        return issued.account

    def _authenticate(self, body: dict[str, Any]) -> Account | str:
        """The account the request's password credentials and scope name, or why not."""
        identity = body.get("auth", {}).get("identity", {})
        if "password" not in identity.get("methods", []):
            return "the fake Keystone only supports the password method"
        user = identity.get("password", {}).get("user", {})
        scope = body.get("auth", {}).get("scope", {})
        if "project" not in scope:
            return "the fake Keystone only issues project-scoped tokens"
        project = scope["project"]
        for account in self.accounts:
            if user.get("name", user.get("id")) not in (account.username, account.user_id):
                continue
            if user.get("password") != account.password:
                return "invalid password"
            if project.get("name", project.get("id")) not in (
                account.project_name,
                account.project_id,
            ):
                return f"user {account.username} has no role on that project"
            return account
        return "unknown user"

    def _token_body(self, account: Account, expires_at: datetime.datetime) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.UTC)
        endpoints = {
            "network": ("neutron", self.neutron_url),
            "identity": ("keystone", f"{self.base_url}/v3"),
        }
        catalog = [
            {
                "id": uuid.uuid5(uuid.NAMESPACE_URL, f"service:{kind}").hex,
                "type": kind,
                "name": name,
                "endpoints": [
                    {
                        "id": uuid.uuid5(uuid.NAMESPACE_URL, f"endpoint:{kind}:{face}").hex,
                        "interface": face,
                        "region": REGION,
                        "region_id": REGION,
                        "url": url,
                    }
                    for face in ("public", "internal", "admin")
                ],
            }
            for kind, (name, url) in endpoints.items()
        ]
        return {
            "token": {
                "methods": ["password"],
                "user": {
                    "id": account.user_id,
                    "name": account.username,
                    "domain": DEFAULT_DOMAIN,
                    "password_expires_at": None,
                },
                "project": {
                    "id": account.project_id,
                    "name": account.project_name,
                    "domain": DEFAULT_DOMAIN,
                },
                "roles": [
                    {"id": uuid.uuid5(uuid.NAMESPACE_URL, f"role:{r}").hex, "name": r}
                    for r in account.roles
                ],
                "is_domain": False,
                "catalog": catalog,
                "audit_ids": [uuid.uuid4().hex[:22]],
                "issued_at": _iso(now),
                "expires_at": _iso(expires_at),
            }
        }

    def _domain(self) -> dict[str, Any]:
        return {
            **DEFAULT_DOMAIN,
            "description": "The default domain",
            "enabled": True,
            "tags": [],
            "options": {},
            "links": {"self": f"{self.base_url}/v3/domains/{DEFAULT_DOMAIN['id']}"},
        }

    def _version(self) -> dict[str, Any]:
        return {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{self.base_url}/v3/"}],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
            ],
        }

    def app(self) -> FastAPI:
        """The identity endpoint: version discovery, token issue and validation."""
        app = FastAPI(title="fake keystone", openapi_url=None, docs_url=None, redoc_url=None)

        @app.middleware("http")
        async def record(request: Request, call_next: Any) -> Any:
            self.requests.append((request.method, request.url.path))
            return await call_next(request)

        @app.get("/")
        def versions() -> JSONResponse:
            return JSONResponse({"versions": {"values": [self._version()]}}, 300)

        @app.get("/v3")
        @app.get("/v3/")
        def version() -> dict[str, Any]:
            return {"version": self._version()}

        @app.post("/v3/auth/tokens")
        async def issue(request: Request) -> JSONResponse:
            try:
                body = await request.json()
            except ValueError:
                return _keystone_error(400, "Bad Request", "the body is not JSON")
            if not isinstance(body, dict):
                return _keystone_error(400, "Bad Request", "the body is not a JSON object")
            account = self._authenticate(body)
            if isinstance(account, str):
                return _keystone_error(401, "Unauthorized", account)
            token = uuid.uuid4().hex
            expires_at = datetime.datetime.now(datetime.UTC) + TOKEN_LIFETIME
            with self._lock:
                self.tokens[token] = Token(account, expires_at)
            return JSONResponse(
                self._token_body(account, expires_at),
                201,
                headers={"X-Subject-Token": token},
            )

        def admin_of(request: Request) -> Account | JSONResponse:
            """The admin account of the request's token, or Keystone's 401/403."""
            account = self.account_for(request.headers.get("x-auth-token", ""))
            if account is None:
                return _keystone_error(401, "Unauthorized", "the X-Auth-Token is not valid")
            if "admin" not in account.roles:
                return _keystone_error(403, "Forbidden", "only an admin may do that")
            return account

        @app.get("/v3/domains")
        def domains(request: Request, name: str | None = None) -> JSONResponse:
            # tempest's V3CredsClient looks its credentials' domain up by name before it
            # creates a project in it; the fake has the one domain its accounts live in.
            caller = admin_of(request)
            if isinstance(caller, JSONResponse):
                return caller
            found = [self._domain()] if name in (None, DEFAULT_DOMAIN["name"]) else []
            return JSONResponse(
                {"domains": found, "links": {"self": f"{self.base_url}/v3/domains"}}
            )

        @app.post("/v3/projects")
        async def create_project(request: Request) -> JSONResponse:
            caller = admin_of(request)
            if isinstance(caller, JSONResponse):
                return caller
            try:
                body = (await request.json())["project"]
                name = body["name"]
            except (ValueError, KeyError, TypeError):
                return _keystone_error(400, "Bad Request", "expected {'project': {'name': ...}}")
            domain_id = body.get("domain_id", DEFAULT_DOMAIN["id"])
            if domain_id != DEFAULT_DOMAIN["id"]:
                return _keystone_error(404, "Not Found", f"no domain {domain_id}")
            taken = {a.project_name for a in self.accounts} | {
                p["name"] for p in self.projects.values()
            }
            if name in taken:
                return _keystone_error(409, "Conflict", f"project {name} exists")
            project = {
                "id": uuid.uuid4().hex,
                "name": name,
                "description": body.get("description", ""),
                "domain_id": domain_id,
                "enabled": True,
                "is_domain": False,
                "parent_id": domain_id,
                "tags": [],
            }
            project["links"] = {"self": f"{self.base_url}/v3/projects/{project['id']}"}
            with self._lock:
                self.projects[project["id"]] = project
            return JSONResponse({"project": project}, 201)

        @app.get("/v3/projects/{project_id}")
        def show_project(request: Request, project_id: str) -> JSONResponse:
            caller = admin_of(request)
            if isinstance(caller, JSONResponse):
                return caller
            if project_id not in self.projects:
                return _keystone_error(404, "Not Found", f"no project {project_id}")
            return JSONResponse({"project": self.projects[project_id]})

        @app.delete("/v3/projects/{project_id}")
        def delete_project(request: Request, project_id: str) -> Response:
            caller = admin_of(request)
            if isinstance(caller, JSONResponse):
                return caller
            with self._lock:
                gone = self.projects.pop(project_id, None)
            if gone is None:
                return _keystone_error(404, "Not Found", f"no project {project_id}")
            return Response(status_code=204)

        @app.get("/v3/auth/tokens")
        def validate(request: Request) -> JSONResponse:
            token = request.headers.get("x-subject-token", "")
            if self.account_for(request.headers.get("x-auth-token", "")) is None:
                return _keystone_error(401, "Unauthorized", "the X-Auth-Token is not valid")
            with self._lock:
                issued = self.tokens.get(token)
            if issued is None or self.account_for(token) is None:
                return _keystone_error(404, "Not Found", "the X-Subject-Token is not valid")
            return JSONResponse(
                self._token_body(issued.account, issued.expires_at),
                headers={"X-Subject-Token": token},
            )

        return app


class KeystoneContextMiddleware:
    """What keystonemiddleware's auth_token does in front of a real Neutron.

    A request whose `X-Auth-Token` the fake Keystone issued reaches the app with
    `X-Project-Id`, `X-Tenant-Id`, `X-User-Id`, `X-Roles` (comma separated) and
    `X-Identity-Status: Confirmed`; any such headers the client sent are dropped first
    (a client must not choose its project). An unknown token is answered 401 here, as
    auth_token does, without reaching the app. Version discovery (`GET /`) is outside
    Neutron's auth pipeline (api-paste.ini), so it passes without a token.
    """

    #: Paths served without a token, as Neutron's `neutronversions` pipeline does.
    UNAUTHENTICATED_PATHS = frozenset({"/"})

    IDENTITY_HEADERS = frozenset(
        {b"x-project-id", b"x-tenant-id", b"x-user-id", b"x-roles", b"x-identity-status"}
    )

    def __init__(self, app: AsgiApp, keystone: FakeKeystone) -> None:
        self.app = app
        self.keystone = keystone

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in self.IDENTITY_HEADERS]
        token = next((v.decode() for k, v in headers if k == b"x-auth-token"), "")
        account = self.keystone.account_for(token)
        if account is None and scope["path"] in self.UNAUTHENTICATED_PATHS:
            await self.app({**scope, "headers": headers}, receive, send)
            return
        if account is None:
            await JSONResponse(
                {"error": {"code": 401, "title": "Unauthorized", "message": "bad token"}},
                401,
                headers={"WWW-Authenticate": f'Keystone uri="{self.keystone.base_url}"'},
            )(scope, receive, send)
            return
        headers += [
            (b"x-project-id", account.project_id.encode()),
            (b"x-tenant-id", account.project_id.encode()),
            (b"x-user-id", account.user_id.encode()),
            (b"x-roles", ",".join(account.roles).encode()),
            (b"x-identity-status", b"Confirmed"),
        ]
        await self.app({**scope, "headers": headers}, receive, send)


@contextmanager
def serve_in_thread(app: AsgiApp, name: str, probe: str = "/") -> Iterator[str]:
    """Serve an ASGI app on a free local port from a daemon thread; yield its base URL.

    Ready once `probe` answers at all (any status), within 20 s; stopped (and the thread
    joined) on exit. tempest runs in a subprocess, so these servers must be real sockets.
    """
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20.0
        while True:
            if not thread.is_alive():
                raise RuntimeError(f"{name} stopped while starting")
            try:
                httpx.get(url + probe, timeout=1.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not answer within 20 s") from None
                time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def serve_keystone(keystone: FakeKeystone) -> Iterator[FakeKeystone]:
    """Serve `keystone` on a free port (its `base_url` is set once it answers).

    `keystone.neutron_url` may be filled in later, before the first token is issued: the
    Neutron app, wrapped in `KeystoneContextMiddleware(app, keystone)`, is usually served
    after the Keystone it refers to, and the catalog is built per token.
    """
    with serve_in_thread(keystone.app(), "fake-keystone", probe="/v3") as url:
        keystone.base_url = url
        yield keystone
