"""What the CLI tests share: the outcome of one invocation and how to judge an error.

(Kept out of conftest.py so that tests can import it by a name no other directory uses.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

API_URL = "http://tessera.test:8181/api/v1"


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    def assert_one_line_error(self, *fragments: str, code: int | None = None) -> None:
        """Failed, with exactly one line on stderr holding every fragment, no traceback."""
        assert self.exit_code != 0, self.stdout
        if code is not None:
            assert self.exit_code == code, (self.exit_code, self.stderr)
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("error: "), lines
        assert "Traceback" not in self.stderr + self.stdout
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])
        # A one-line error is all: nothing half-printed on stdout.
        assert self.stdout == "", self.stdout


Run = Callable[..., Outcome]
