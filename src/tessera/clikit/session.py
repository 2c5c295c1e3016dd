"""What one `tessera` invocation knows: where the API is and how to print.

The session lives in the root click context (`ctx.obj`) so that global options given
before the resource (`tessera --json bridge list`) and the same options given after it
(`tessera bridge list --json`) land in one place. Tests pass their own session, with an
`httpx.MockTransport`, as `CliRunner.invoke(..., obj=Session(transport=...))`.
Sub-apps registered by other packages may read it with `current_session(ctx)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import typer

from tessera.client.rest import ApiClient, resolve_api_url
from tessera.clikit.output import Output


@dataclass
class Session:
    api_url: str | None = None
    json_output: bool = False
    quiet: bool = False
    transport: httpx.BaseTransport | None = None
    wait: float | None = None  # `--wait`: seconds a write waits to be in effect
    _client: ApiClient | None = field(default=None, repr=False)

    def apply(self, *, api_url: str | None, json_output: bool, quiet: bool) -> None:
        """Options given on a command add to (never undo) those given globally."""
        if api_url and api_url != self.api_url:
            self.api_url = api_url
            self.close()  # a client made for another URL must not be reused
        self.json_output = self.json_output or json_output
        self.quiet = self.quiet or quiet

    @property
    def url(self) -> str:
        return resolve_api_url(self.api_url)

    @property
    def api(self) -> ApiClient:
        if self._client is None:
            self._client = ApiClient(self.url, transport=self.transport)
        self._client.wait = self.wait
        return self._client

    @property
    def out(self) -> Output:
        return Output(json_output=self.json_output, quiet=self.quiet)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def current_session(ctx: typer.Context) -> Session:
    """The invocation's session, created on first use."""
    root = ctx.find_root()
    if not isinstance(root.obj, Session):
        root.obj = Session()
    session: Session = root.obj
    return session
