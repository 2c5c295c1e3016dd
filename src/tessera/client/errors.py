"""Failures a user reads as one line (never a traceback), with an exit status.

Every failure a user can cause or meet — a bad argument, an unreachable API, an HTTP error,
a lab that cannot start — is a `UserError`, so the single handler of the command line
(`tessera.clikit.group`) prints them uniformly and code that drives the API (the lab)
can catch them all at once. They live with the HTTP client, the lowest of their users,
so that the client raises them without depending on any command-line code.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure explained by its message alone; `exit_code` tells scripts what kind."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))
        self.message = one_line(message)


class BadArgument(UserError):
    """A command-line value the CLI refuses before talking to the API (usage error)."""

    exit_code = 2


class ApiUnreachable(UserError):
    """No HTTP answer at all: refused, timed out, DNS, TLS..."""

    exit_code = 3


class ApiError(UserError):
    """The API answered with a 4xx/5xx; `message` is the API's own explanation."""

    exit_code = 1

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.api_message = one_line(message)


def one_line(text: str) -> str:
    """Collapse whitespace so that a message never spills onto several lines."""
    return " ".join(text.split())
