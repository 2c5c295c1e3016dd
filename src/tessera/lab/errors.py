"""The lab's one error type: a failure explained in one line, shown without traceback."""

from __future__ import annotations

from tessera.client.errors import UserError


class LabError(UserError):
    """Something the lab cannot do; the message says what and where to look."""
