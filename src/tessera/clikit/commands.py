"""Registering CLI commands: every command gets the session and the output options.

`--json`, `-q/--quiet` and `--api URL` are accepted both before the resource
(`tessera --json bridge list`) and on the command itself (`tessera bridge list --json`),
because users and scripts write both. Rather than repeat three parameters in ~80
functions, `command` rewrites each function's signature to add them and hands the
function the invocation's `Session` as its first argument.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import typer

from tessera.clikit.session import current_session

F = TypeVar("F", bound=Callable[..., Any])

JSON_HELP = "Print the API's JSON answer, for scripts."
QUIET_HELP = "Print only ids (one per line)."
API_HELP = "API base URL (default: $TESSERA_API, else http://127.0.0.1:8181/api/v1)."

_EXTRA = (
    inspect.Parameter("_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
    inspect.Parameter(
        "_json",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[bool, typer.Option("--json", help=JSON_HELP)],
    ),
    inspect.Parameter(
        "_quiet",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)],
    ),
    inspect.Parameter(
        "_api",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[str | None, typer.Option("--api", metavar="URL", help=API_HELP)],
    ),
)

WAIT_HELP = (
    "Return only once every agent the change concerns has applied it (flows included); "
    "fail after --wait-timeout."
)
WAIT_TIMEOUT_HELP = "Seconds --wait waits at most (the change stays made if it runs out)."
DEFAULT_WAIT_TIMEOUT = 30.0
_READS = frozenset({"list", "show", "trace", "mac-table", "arp-table", "bindings"})
_WAIT_EXTRA = (
    inspect.Parameter(
        "_wait",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[bool, typer.Option("--wait", help=WAIT_HELP)],
    ),
    inspect.Parameter(
        "_wait_timeout",
        inspect.Parameter.KEYWORD_ONLY,
        default=DEFAULT_WAIT_TIMEOUT,
        annotation=Annotated[
            float,
            typer.Option(
                "--wait-timeout", metavar="SECONDS", min=0.001, max=600.0, help=WAIT_TIMEOUT_HELP
            ),
        ],
    ),
)


def is_write(name: str) -> bool:
    """Commands that change the topology take `--wait` (reads would ignore it)."""
    return name not in _READS


def command(
    app: typer.Typer, name: str, *, hidden: bool = False, panel: str | None = None
) -> Callable[[F], F]:
    """Register `fn(session, **options)` as `name` on `app`; its docstring is the help."""

    def register(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        own = list(signature.parameters.values())[1:]  # the first one is the Session
        write = is_write(name)
        params = [*own, *_EXTRA, *(_WAIT_EXTRA if write else ())]

        @functools.wraps(fn)
        def run(**kwargs: Any) -> Any:
            session = current_session(kwargs.pop("_ctx"))
            if write:
                wait, timeout = kwargs.pop("_wait"), kwargs.pop("_wait_timeout")
                session.wait = timeout if wait else None
            session.apply(
                api_url=kwargs.pop("_api"),
                json_output=kwargs.pop("_json"),
                quiet=kwargs.pop("_quiet"),
            )
            return fn(session, **kwargs)

        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        app.command(name, hidden=hidden, rich_help_panel=panel)(run)
        return fn

    return register


def option_group(name: str, options: Sequence[inspect.Parameter]) -> Callable[[F], F]:
    """Declare a set of options once and use it in several commands (a rule's ~30
    condition options in both `create` and `update`): the function's parameter `name`
    is replaced by `options`, whose values it receives as one dict."""

    def apply(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        params: list[inspect.Parameter] = []
        for param in signature.parameters.values():
            if param.name == name:
                params.extend(options)
            else:
                params.append(param)
        option_names = {p.name for p in options}

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            group = {k: kwargs.pop(k) for k in list(kwargs) if k in option_names}
            return fn(*args, **{name: group}, **kwargs)

        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run  # type: ignore[return-value]

    return apply


def option(
    name: str,
    *decls: str,
    help: str,
    metavar: str | None = None,
    flag: bool = False,
    multiple: bool = False,
    panel: str | None = None,
) -> inspect.Parameter:
    """One option of an `option_group`; unset means None, so commands can tell
    "not given" from any value."""
    annotation: Any
    if flag:
        annotation = Annotated[
            bool | None,
            typer.Option(*decls, help=help, show_default=False, rich_help_panel=panel),
        ]
    elif multiple:
        annotation = Annotated[
            list[str] | None,
            typer.Option(*decls, help=help, metavar=metavar, rich_help_panel=panel),
        ]
    else:
        annotation = Annotated[
            str | None, typer.Option(*decls, help=help, metavar=metavar, rich_help_panel=panel)
        ]
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


def sub_app(help_text: str, **kwargs: Any) -> typer.Typer:
    """A resource group (`tessera bridge ...`): shows its help when called bare."""
    return typer.Typer(help=help_text, no_args_is_help=True, **kwargs)
