"""docs/api.md's reference is generated from the OpenAPI schema and must be current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_api_reference_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_api_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr or result.stdout


def test_the_reference_covers_every_operation() -> None:
    from tessera.api.app import create_app
    from tessera.nsdb.memory import MemoryNsdb

    text = (ROOT / "docs" / "api.md").read_text()
    spec = create_app(MemoryNsdb()).openapi()
    for path, item in spec["paths"].items():
        for method in item:
            assert f"`{method.upper()} {path}`" in text
    assert "## Errors" in text and "### RuleCreate" in text
