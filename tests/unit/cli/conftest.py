"""Run the `tessera` command tree in-process against a fake API."""

from __future__ import annotations

import pytest
from cli_fake_api import FakeApi
from cli_harness import API_URL, Outcome, Run
from typer.testing import CliRunner

from support.local import free_port
from tessera.cli.main import build_app
from tessera.clikit.session import Session


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def run(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> Run:
    """`run(*args, session=None)`: one `tessera` invocation against `api`."""
    monkeypatch.delenv("TESSERA_API", raising=False)
    monkeypatch.delenv("TESSERA_DEBUG", raising=False)
    runner = CliRunner()
    app = build_app()

    def invoke(*args: str, session: Session | None = None) -> Outcome:
        obj = session or Session(api_url=API_URL, transport=api.transport())
        result = runner.invoke(app, list(args), obj=obj, catch_exceptions=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # an escaped exception is a bug in the CLI
        return Outcome(result.exit_code, result.stdout, result.stderr, result.exception)

    return invoke


@pytest.fixture
def unused_port() -> int:
    """A local TCP port nobody listens on (bound then released)."""
    return free_port()
