"""The lab's one error type: a failure explained in one line, shown without traceback."""

from __future__ import annotations

from tessera.cli.errors import CliError


class LabError(CliError):
    """Something the lab cannot do; the message says what and where to look."""
