"""The root command group: one-line errors for everything, and lazily loaded sub-apps.

Errors. The contract wants one line on stderr and a non-zero status for any failure, and
never a traceback. Typer would print usage errors as a multi-line box and let other
exceptions escape, so the root group runs the command tree itself and reports:

    usage errors (typer's own, and `BadArgument`)   exit 2
    API errors (4xx/5xx, with the API's message)    exit 1
    API unreachable                                  exit 3
    anything unexpected                              exit 1 (TESSERA_DEBUG=1 re-raises)

Sub-apps. `tessera agent`, `tessera lab`, `tessera trace`... live in other packages and
pull in heavy imports (pyroute2, uvicorn). A `Plugin` names a module attribute holding a
`typer.Typer` (or a click-style command); it is imported only when its command runs, is
listed in `tessera --help` only if its module exists, and a broken one fails alone.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from tessera.client.errors import UserError, one_line
from tessera.clikit.output import printable

DEBUG_ENV = "TESSERA_DEBUG"


@dataclass(frozen=True)
class Plugin:
    """A sub-app another package provides: `target` is `"package.module:attribute"`."""

    name: str
    target: str
    help: str
    panel: str | None = None
    #: A command group even with one subcommand (`tessera api serve`); else a typer
    #: app of one command is that command (`tessera trace ...`).
    group: bool = False

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    def available(self) -> bool:
        """Whether the module exists, found without importing (executing) it."""
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False

    def load(self) -> Any:
        """The plugin's command object (a click-style command, from typer's vendored click)."""
        module_name, _, attribute = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UserError(f"'tessera {self.name}' is unavailable: {exc}") from None
        app = getattr(module, attribute or "app", None)
        if isinstance(app, typer.Typer):
            return typer.main.get_group(app) if self.group else typer.main.get_command(app)
        if app is None or not hasattr(app, "make_context"):
            raise UserError(f"'tessera {self.name}': {self.target} is not a typer app")
        return app


class LazyCommand(TyperCommand):
    """Stands in for a plugin in help listings; parsing its arguments loads the real one."""

    def __init__(self, plugin: Plugin) -> None:
        super().__init__(plugin.name, help=plugin.help, rich_help_panel=plugin.panel)
        self.plugin = plugin

    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        return self.plugin.load().make_context(info_name, args, parent=parent, **extra)


class TesseraGroup(TyperGroup):
    plugins: Sequence[Plugin] = ()
    # Other spellings, resolved to a command path and never listed in help (a second
    # registration of each sub-app would double the tree typer builds at every start).
    aliases: Mapping[str, tuple[str, ...]] = {}

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        return names + [p.name for p in self.plugins if p.name not in names and p.available()]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        own = super().get_command(ctx, cmd_name)
        if own is not None:
            return own
        if cmd_name in self.aliases:
            command: Any = self
            for part in self.aliases[cmd_name]:
                if isinstance(command, LazyCommand):
                    command = command.plugin.load()
                command = command.get_command(ctx, part) if command is not None else None
            return command
        for plugin in self.plugins:
            if plugin.name == cmd_name and plugin.available():
                return LazyCommand(plugin)
        return None

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        code = run_reporting_errors(
            lambda: super(TesseraGroup, self).main(
                args=args,
                prog_name=prog_name or "tessera",
                complete_var=complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
        )
        if standalone_mode:
            sys.exit(code)
        return code


def run_reporting_errors(run: Any) -> int:
    """Run the command tree; turn every failure into one line on stderr and a status."""
    try:
        result = run()
    except UserError as exc:
        return _fail(exc.message, exc.exit_code)
    except typer.Abort:
        return _fail("aborted", 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except OSError as exc:
        if exc.errno == errno.EPIPE:  # `tessera bridge list | head`
            return 1
        if os.environ.get(DEBUG_ENV):
            raise
        return _fail(str(exc), 1)
    except Exception as exc:
        if _is_click_error(exc):
            return _usage_error(exc)
        if os.environ.get(DEBUG_ENV):
            raise
        return _fail(
            f"internal error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for a traceback)",
            1,
        )
    # Non-standalone click returns the command's value, or the code of a `typer.Exit`.
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _is_click_error(exc: Exception) -> bool:
    """Typer's usage errors: click's exception family, which typer vendors since 0.26
    (as subclasses of `typer.TyperException`) and imported from click before."""
    return callable(getattr(exc, "format_message", None)) and isinstance(
        getattr(exc, "exit_code", None), int
    )


def _usage_error(exc: Exception) -> int:
    ctx = getattr(exc, "ctx", None)
    code = int(getattr(exc, "exit_code", 2))
    if type(exc).__name__ == "NoArgsIsHelpError":
        # `tessera bridges` alone: the group's help is the most useful answer. The error
        # built it already (click calls ctx.get_help(), which typer's rich formatter
        # prints and answers with ""): print it only when it was not printed.
        text = exc.format_message()  # type: ignore[attr-defined]
        if text:
            typer.echo(text)
        return code
    message = one_line(exc.format_message())  # type: ignore[attr-defined]
    if ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return _fail(message, code)


def _fail(message: str, code: int) -> int:
    # printable: an API message may quote a value (a name) holding control characters.
    typer.echo(f"error: {printable(one_line(message))}", err=True)
    return code
