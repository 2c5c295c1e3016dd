"""The tempest harness itself: fake Keystone, auth_token middleware, workspace, parser.

In process and without tempest running (no sockets, under a second): what
test_tempest_network.py relies on must hold before its tempest run can mean anything,
e.g. a parser that lost failures would make "0 failures" vacuous.
"""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import subunit
import yaml
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from support.fake_keystone import FakeKeystone, KeystoneContextMiddleware, default_accounts
from support.tempest_run import FAILED, expand_test_ids, parse_subunit, write_workspace

NEUTRON = "http://neutron.example:9696"


def _password_body(user: str, password: str, project: str) -> dict[str, Any]:
    """The body tempest's V3TokenClient sends (user and project in the Default domain)."""
    return {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": user, "password": password, "domain": {"name": "Default"}}
                },
            },
            "scope": {"project": {"name": project, "domain": {"name": "Default"}}},
        }
    }


def _keystone() -> tuple[FakeKeystone, TestClient]:
    keystone = FakeKeystone(NEUTRON)
    keystone.base_url = "http://keystone.example"
    return keystone, TestClient(keystone.app())


def test_token_carries_the_network_endpoint_project_and_roles() -> None:
    keystone, client = _keystone()
    admin = next(a for a in keystone.accounts if "admin" in a.roles)
    response = client.post(
        "/v3/auth/tokens", json=_password_body(admin.username, admin.password, admin.project_name)
    )
    assert response.status_code == 201
    token = response.headers["X-Subject-Token"]
    body = response.json()["token"]
    network = next(s for s in body["catalog"] if s["type"] == "network")
    assert {e["url"] for e in network["endpoints"]} == {NEUTRON}
    assert {e["interface"] for e in network["endpoints"]} == {"public", "internal", "admin"}
    assert body["project"]["id"] == admin.project_id
    assert body["user"]["domain"] == {"id": "default", "name": "Default"}
    assert {r["name"] for r in body["roles"]} == set(admin.roles)
    assert body["expires_at"].endswith("Z")
    assert keystone.account_for(token) == admin
    assert keystone.requests == [("POST", "/v3/auth/tokens")]


def test_bad_credentials_get_keystones_401_body() -> None:
    keystone, client = _keystone()
    member = keystone.accounts[0]
    wrong = [
        _password_body(member.username, "not-the-password", member.project_name),
        _password_body("nobody", member.password, member.project_name),
        _password_body(member.username, member.password, "someone-elses-project"),
    ]
    for body in wrong:
        response = client.post("/v3/auth/tokens", json=body)
        assert response.status_code == 401, body
        assert response.json()["error"]["message"]  # tempest raises Unauthorized(message)
    assert keystone.tokens == {}


def test_version_discovery() -> None:
    _, client = _keystone()
    version = client.get("/v3").json()["version"]
    assert version["status"] == "stable"
    assert version["links"][0]["href"] == "http://keystone.example/v3/"


def test_token_validation_answers_the_same_token() -> None:
    keystone, client = _keystone()
    member = keystone.accounts[0]
    body = _password_body(member.username, member.password, member.project_name)
    token = client.post("/v3/auth/tokens", json=body).headers["X-Subject-Token"]
    same = client.get("/v3/auth/tokens", headers={"X-Auth-Token": token, "X-Subject-Token": token})
    assert same.status_code == 200
    assert same.json()["token"]["user"]["name"] == member.username
    bogus = client.get("/v3/auth/tokens", headers={"X-Auth-Token": token, "X-Subject-Token": "x"})
    assert bogus.status_code == 404


def _echo_behind_middleware(keystone: FakeKeystone) -> tuple[TestClient, list[dict[str, str]]]:
    seen: list[dict[str, str]] = []
    app = FastAPI()

    @app.get("/v2.0/networks")
    def networks(request: Request) -> dict[str, Any]:
        seen.append(dict(request.headers))
        return {"networks": []}

    @app.get("/")
    def versions(request: Request) -> dict[str, Any]:
        seen.append(dict(request.headers))
        return {"versions": []}

    return TestClient(KeystoneContextMiddleware(app, keystone)), seen


def test_middleware_gives_the_app_the_tokens_project_and_drops_forged_headers() -> None:
    keystone, client = _keystone()
    reader = next(a for a in keystone.accounts if a.roles == ("reader",))
    body = _password_body(reader.username, reader.password, reader.project_name)
    token = client.post("/v3/auth/tokens", json=body).headers["X-Subject-Token"]
    neutron, seen = _echo_behind_middleware(keystone)
    response = neutron.get(
        "/v2.0/networks",
        headers={"X-Auth-Token": token, "X-Project-Id": "forged", "X-Roles": "admin"},
    )
    assert response.status_code == 200
    (headers,) = seen
    assert headers["x-project-id"] == reader.project_id
    assert headers["x-tenant-id"] == reader.project_id
    assert headers["x-roles"] == "reader"
    assert headers["x-user-id"] == reader.user_id


def test_middleware_refuses_unknown_tokens_before_the_app() -> None:
    keystone, _ = _keystone()
    neutron, seen = _echo_behind_middleware(keystone)
    for headers in ({}, {"X-Auth-Token": "made-up"}):
        response = neutron.get("/v2.0/networks", headers=headers)
        assert response.status_code == 401
        assert "Keystone uri=" in response.headers["WWW-Authenticate"]
    assert seen == []


def test_workspace_configures_static_accounts_and_the_listed_extensions(tmp_path: Path) -> None:
    accounts = default_accounts()
    conf_path = write_workspace(
        tmp_path, "http://keystone.example", ["binding", "external-net", "port-security"], accounts
    )
    conf = configparser.ConfigParser()
    conf.read(conf_path)
    assert conf["auth"]["use_dynamic_credentials"] == "false"
    assert conf["identity"]["uri_v3"] == "http://keystone.example/v3"
    assert conf["network-feature-enabled"]["api_extensions"] == "binding,external-net,port-security"
    assert conf["network-feature-enabled"]["port_security"] == "true"
    assert conf["service_available"]["neutron"] == "true"
    assert conf["service_available"]["nova"] == "false"
    listed = yaml.safe_load(Path(conf["auth"]["test_accounts_file"]).read_text())
    assert [(a["username"], a["password"], a["project_name"], a["roles"]) for a in listed] == [
        (a.username, a.password, a.project_name, list(a.roles)) for a in accounts
    ]
    roles = {r for a in listed for r in a["roles"]}
    assert {"member", "reader", "admin"} <= roles


def test_parser_keeps_every_status_skip_reason_and_class_fixture_failure() -> None:
    import io

    stream = io.BytesIO()
    out = subunit.StreamResultToBytes(stream)
    cls = "tempest.api.network.test_ports.PortsTestJSON"
    events: list[tuple[str, str, bytes]] = [
        (f"{cls}.test_ok[id-1,smoke]", "success", b""),
        (f"{cls}.test_skipped[id-2]", "skip", b"security-group extension not enabled."),
        (f"{cls}.test_broken[id-3]", "fail", b"Traceback: NotFound"),
        (f"setUpClass ({cls}Other)", "fail", b"Traceback: setUpClass"),
    ]
    for test_id, status, detail in events:
        out.status(test_id=test_id, test_status="inprogress")
        if detail:
            name = "reason" if status == "skip" else "traceback"
            out.status(
                test_id=test_id,
                file_name=name,
                file_bytes=detail,
                mime_type="text/plain; charset=utf8",
                eof=True,
            )
        out.status(test_id=test_id, test_status=status)
    stream.write(b"a stray print from a test\n")
    outcomes = parse_subunit(stream.getvalue())
    assert [(o.test_id, o.status) for o in outcomes] == [(t, s) for t, s, _ in events]
    assert outcomes[1].reason == "security-group extension not enabled."
    assert outcomes[2].reason == "Traceback: NotFound"

    from support.tempest_run import TempestResult

    result = TempestResult(outcomes, 0, False, Path("."))
    assert [o.test_id for o in result.of(FAILED, [cls])] == [f"{cls}.test_broken[id-3]"]
    assert [o.test_id for o in result.of(FAILED, [cls + "Other"])] == [f"setUpClass ({cls}Other)"]
    assert len(result.passed) == 1 and len(result.skipped) == 1 and len(result.failed) == 2
    summary = result.summary()
    assert "1 passed, 1 skipped, 2 failed" in summary
    assert "SKIP " + events[1][0] + ": security-group extension not enabled." in summary


def test_a_package_id_becomes_its_test_modules() -> None:
    """unittest's loader finds nothing in a package id: the runner lists its modules."""
    ids = expand_test_ids(["tempest.api.network", "tempest.api.network.test_ports.PortsTestJSON"])
    assert "tempest.api.network.test_networks" in ids
    assert "tempest.api.network.admin.test_ports" in ids
    assert "tempest.api.network.base" not in ids
    assert ids[-1] == "tempest.api.network.test_ports.PortsTestJSON"


def test_middleware_lets_version_discovery_through_without_identity() -> None:
    keystone, _ = _keystone()
    neutron, seen = _echo_behind_middleware(keystone)
    response = neutron.get("/", headers={"X-Project-Id": "forged"})
    assert response.status_code == 200
    (headers,) = seen
    assert "x-project-id" not in headers and "x-roles" not in headers


def _token(client: TestClient, account: Any) -> str:
    body = _password_body(account.username, account.password, account.project_name)
    token: str = client.post("/v3/auth/tokens", json=body).headers["X-Subject-Token"]
    return token


def test_admin_finds_the_domain_and_creates_and_deletes_a_project() -> None:
    """What tempest's V3CredsClient does for RoutersAdminTest; a member may not."""
    keystone, client = _keystone()
    admin = next(a for a in keystone.accounts if "admin" in a.roles)
    member = next(a for a in keystone.accounts if a.roles == ("member",))
    as_admin = {"X-Auth-Token": _token(client, admin)}
    domains = client.get("/v3/domains", params={"name": "Default"}, headers=as_admin).json()
    assert [d["id"] for d in domains["domains"]] == ["default"]
    none = client.get("/v3/domains", params={"name": "Elsewhere"}, headers=as_admin).json()
    assert none["domains"] == []
    body = {"project": {"name": "p1", "description": "d", "domain_id": "default"}}
    created = client.post("/v3/projects", json=body, headers=as_admin)
    assert created.status_code == 201
    project = created.json()["project"]
    assert (project["name"], project["domain_id"]) == ("p1", "default")
    assert client.post("/v3/projects", json=body, headers=as_admin).status_code == 409
    as_member = {"X-Auth-Token": _token(client, member)}
    assert client.post("/v3/projects", json=body, headers=as_member).status_code == 403
    assert client.delete(f"/v3/projects/{project['id']}", headers=as_member).status_code == 403
    assert client.delete(f"/v3/projects/{project['id']}", headers=as_admin).status_code == 204
    assert client.delete(f"/v3/projects/{project['id']}", headers=as_admin).status_code == 404
    assert client.get("/v3/domains").status_code == 401


def test_alt_is_in_another_project_than_primary() -> None:
    """tempest hands out `alt` as the first free account without admin in file order,
    after `primary` took the member of the project with the most personas: that must be
    an account of another project, or isolation tests (FloatingIPAdminTestJSON) break."""
    accounts = default_accounts()
    non_admin = [a for a in accounts if "admin" not in a.roles]
    by_project = {
        a.project_name: sum(b.project_name == a.project_name for b in non_admin) for a in non_admin
    }
    primary = max(
        (a for a in non_admin if "member" in a.roles), key=lambda a: by_project[a.project_name]
    )
    alt = next(a for a in non_admin if a != primary)
    assert alt.project_name != primary.project_name
