"""Errors the CLI reports to users as one line on stderr (never a traceback).

Every failure a user can cause or meet — a bad argument, an unreachable API, an HTTP error
— is one of these, so the single handler in `tessera.cli.group` can print it uniformly.
"""

from __future__ import annotations


class CliError(Exception):
    """A failure explained by its message alone; `exit_code` tells scripts what kind."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))
        self.message = one_line(message)


class BadArgument(CliError):
    """A command-line value the CLI refuses before talking to the API (usage error)."""

    exit_code = 2


class ApiUnreachable(CliError):
    """No HTTP answer at all: refused, timed out, DNS, TLS..."""

    exit_code = 3


class ApiError(CliError):
    """The API answered with a 4xx/5xx; `message` is the API's own explanation."""

    exit_code = 1

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.api_message = one_line(message)


def one_line(text: str) -> str:
    """Collapse whitespace so that a message never spills onto several lines."""
    return " ".join(text.split())
