"""End to end, in process: a name an older version stored with control characters
(written here straight to the in-memory NSDB) is served by the real API and shown
escaped by the CLI, never raw (issue 13, item 5)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from tessera.api.app import create_app
from tessera.cli.main import build_app
from tessera.clikit.session import Session
from tessera.model import Bridge, new_id
from tessera.nsdb.memory import MemoryNsdb

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

URL = "http://tessera.test/api/v1"
NAME = "ops\x1b]0;pwned\x07\x1b[2J\nfake row\u202etxt.exe"


@pytest.fixture
def served() -> Iterator[tuple[MemoryNsdb, httpx.MockTransport]]:
    """The real API over a private memory NSDB, reached by the CLI's own HTTP client."""
    nsdb = MemoryNsdb()
    with TestClient(create_app(nsdb), base_url="http://tessera.test") as client:

        def forward(request: httpx.Request) -> httpx.Response:
            answer = client.request(
                request.method, request.url.raw_path.decode(), content=request.content,
                headers={"content-type": "application/json"},
            )  # fmt: skip
            return httpx.Response(
                answer.status_code, headers=answer.headers, content=answer.content
            )

        yield nsdb, httpx.MockTransport(forward)
    nsdb.close()


def test_a_stored_name_with_control_characters_is_shown_escaped(
    served: tuple[MemoryNsdb, httpx.MockTransport],
) -> None:
    nsdb, transport = served
    legacy = Bridge.model_construct(id=new_id(), name=NAME, tenant_id=None)
    nsdb.create(legacy)
    runner, app = CliRunner(), build_app()

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args), obj=Session(api_url=URL, transport=transport))
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result.stdout

    for out in (run("bridge", "list"), run("bridge", "show", legacy.id)):
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
        assert "ops\\x1b]0;pwned\\x07\\x1b[2J\\nfake row\\u202etxt.exe" in out
    assert len(run("bridge", "list").splitlines()) == 3  # header, rule, one row
    assert json.loads(run("--json", "bridge", "show", legacy.id))["name"] == NAME
    # And the API refuses a new one like it (the CLI reports the API's one-line error).
    refused = runner.invoke(
        app, ["bridge", "create", "--name", "a\x1bb"], obj=Session(api_url=URL, transport=transport)
    )
    assert refused.exit_code != 0 and "U+001B" in refused.stderr and "\x1b" not in refused.stderr
