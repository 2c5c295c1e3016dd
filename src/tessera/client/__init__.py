"""tessera.client: the REST API's HTTP client and the one-line errors of every front end.

    rest.py     `ApiClient` (JSON over HTTP, timeouts, API errors as exceptions), URL checks
    errors.py   `UserError` and its kinds: `BadArgument`, `ApiUnreachable`, `ApiError`

It imports no other tessera package and neither typer nor rich, so the agent's commands,
the command toolkit (`tessera.clikit`), the lab and the API's tests can all use it
(the layering is checked by tests/unit/test_import_graph.py).
"""
