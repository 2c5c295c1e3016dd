"""The CLI never prints a value's control characters raw (issue 13, item 5): names that
reached the API some other way (an older version, a direct NSDB write) show escaped,
in tables, object views, messages, errors and traces; JSON output stays exact JSON."""

from __future__ import annotations

import json

import pytest
from cli_fake_api import FakeApi
from cli_harness import Run

from tessera.cli.trace import render_text
from tessera.clikit.output import printable

BRIDGE = "11111111-1111-4111-8111-111111111111"
EVIL = "evil\x1b[2J\x1b]0;owned\x07\nfake-row\u202egnp.exe\u2028x\x00"
SHOWN = "evil\\x1b[2J\\x1b]0;owned\\x07\\nfake-row\\u202egnp.exe\\u2028x\\x00"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain name", "plain name"),
        ("Zoë 日本 😀", "Zoë 日本 😀"),
        ("a\tb\rc\nd", "a\\tb\\rc\\nd"),
        ("\x1b[31m", "\\x1b[31m"),
        ("\x9b", "\\x9b"),
        ("\u202e\u2066\u200b\ufeff", "\\u202e\\u2066\\u200b\\ufeff"),
        ("\U000e0041", "\\U000e0041"),
        ("nbsp\u00a0", "nbsp\\xa0"),
    ],
)
def test_printable_escapes_what_a_terminal_would_interpret(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert printable(shown) == shown  # escaping is idempotent on its own output


def _assert_safe(output: str) -> None:
    assert "\x1b" not in output and "\x07" not in output and "\x00" not in output
    assert "\u202e" not in output and "\u2028" not in output


def test_tables_and_object_views_escape_stored_names(api: FakeApi, run: Run) -> None:
    api.add("/bridges", id=BRIDGE, name=EVIL, tenant_id="t\x1bx", admin_state_up=True)
    listed = run("bridge", "list")
    assert listed.exit_code == 0
    _assert_safe(listed.stdout)
    assert SHOWN in listed.stdout and "t\\x1bx" in listed.stdout
    assert len(listed.stdout.splitlines()) == 3  # header, rule, one row: no row split off
    shown = run("bridge", "show", BRIDGE)
    assert shown.exit_code == 0
    _assert_safe(shown.stdout)
    assert SHOWN in shown.stdout


def test_json_output_stays_exact_json(api: FakeApi, run: Run) -> None:
    api.add("/bridges", id=BRIDGE, name=EVIL)
    out = run("--json", "bridge", "show", BRIDGE)
    assert out.exit_code == 0
    _assert_safe(out.stdout)  # JSON escapes control characters itself
    assert json.loads(out.stdout)["name"] == EVIL


def test_quiet_ids_and_messages_are_escaped(api: FakeApi, run: Run) -> None:
    api.on("GET", "/bridges", 200, [{"id": "x\x1b[2Jy", "name": "n"}])
    out = run("-q", "bridge", "list")
    assert out.stdout == "x\\x1b[2Jy\n"


def test_errors_quoting_a_value_are_escaped(api: FakeApi, run: Run) -> None:
    api.on("GET", f"/bridges/{BRIDGE}", 404, {"message": f"no bridge named {EVIL}"})
    out = run("bridge", "show", BRIDGE)
    _assert_safe(out.stderr)
    out.assert_one_line_error("no bridge named evil\\x1b[2J")


def test_traces_escape_the_names_they_quote() -> None:
    answer = {
        "trace": {
            "kind": "packet",
            "text": "packet",
            "children": [{"kind": "bridge", "text": f"bridge {EVIL}", "children": []}],
        },
        "verdict": "DROP",
        "drop_reason": f"dropped by rule of chain {EVIL}",
    }
    text = render_text(answer)
    _assert_safe(text)
    assert "bridge evil\\x1b" in text and "chain evil\\x1b" in text
