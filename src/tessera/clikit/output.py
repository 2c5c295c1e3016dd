"""Printing results in the three modes a user can ask for.

- human (default): a rich table for lists, key/value lines for one object; ids always
  in full, never truncated or wrapped, because users copy them into the next command;
- `--json`: exactly the JSON the API answered, for scripts;
- `-q/--quiet`: only ids (one per line), for `ID=$(tessera bridge create -q)`.

Whatever the API answered is shown through `printable`: a name holding ESC, a newline
or a bidi override (stored before the API refused them, or by another client) must not
drive the terminal, split a table row or reorder what the user reads. JSON output stays
exact JSON (which escapes control characters itself).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

Row = Mapping[str, Any]
WIDE = 1000  # the virtual page: wider than any row, so rows are never squeezed


@dataclass(frozen=True)
class Column:
    """A list column: a header and how to draw the cell from the API object."""

    header: str
    cell: Callable[[Row], str]
    is_id: bool = False


def column(name: str, header: str | None = None) -> Column:
    """A column showing one field as `fmt` renders it."""
    return Column(header or name, lambda row: fmt(row.get(name)), is_id=_is_id_field(name))


def id_column(name: str = "id", header: str | None = None) -> Column:
    return Column(header or name, lambda row: fmt(row.get(name)), is_id=True)


def _is_id_field(name: str) -> bool:
    return (
        name == "id" or (name.endswith("_id") and name != "tenant_id") or name in ("next_hop_port",)
    )


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """`text` with every non-printable character (control, format such as bidi
    overrides, separators, surrogates, unassigned) written as a Python-style escape:
    `\\x1b`, `\\n`, `\\u202e`. Printable text, spaces included, is unchanged."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


def _escape_char(ch: str) -> str:
    named = _NAMED_ESCAPES.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable_data(value: Any) -> Any:
    """A JSON-like answer with every string (keys included) made `printable`, so that
    whatever renders it afterwards only ever sees safe text."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, Mapping):
        return {printable(str(k)): printable_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable_data(v) for v in value]
    return value


def fmt(value: Any) -> str:
    """One value as a human reads it: `-` for unset, ranges as `80-90`, lists joined."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        if set(value) == {"start", "end"}:
            return port_range(value)
        return " ".join(f"{k}={fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        if not value:
            return "-"
        if any(isinstance(v, Mapping) for v in value):
            return "\n".join(fmt(v) for v in value)
        return ", ".join(fmt(v) for v in value)
    return str(value)


def port_range(value: Mapping[str, Any]) -> str:
    start, end = value.get("start"), value.get("end")
    return str(start) if start == end else f"{start}-{end}"


class Output:
    def __init__(self, *, json_output: bool, quiet: bool) -> None:
        self.json_output = json_output
        self.quiet = quiet

    # -- one object (show, create, update) --
    def obj(self, obj: Any) -> None:
        if self.json_output and not self.quiet:
            self.raw(obj)
            return
        obj = printable_data(obj)
        if self.quiet:
            if isinstance(obj, Mapping) and "id" in obj:
                print(obj["id"])
            return
        if not isinstance(obj, Mapping):
            self.raw(obj)
            return
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        for key, value in obj.items():
            grid.add_row(Text(key), Text(fmt(value)))
        _print(grid)

    # -- a list (list commands) --
    def objects(self, rows: Sequence[Row], columns: Sequence[Column], *, empty: str) -> None:
        if self.json_output and not self.quiet:
            self.raw(list(rows))
            return
        rows = [printable_data(row) for row in rows]
        if self.quiet:
            for row in rows:
                if "id" in row:
                    print(row["id"])
            return
        if not rows:
            print(empty)
            return
        cells = [[col.cell(row) for col in columns] for row in rows]
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for col in columns:
            table.add_column(col.header, no_wrap=col.is_id)
        for r in cells:
            table.add_row(*(Text(c) for c in r))
        _print(table)

    # -- an action without an object to show (delete, link, add-port...) --
    def done(self, message: str, payload: Any = None) -> None:
        """`message` for humans; with --json the API's answer if it gave one."""
        if self.quiet:
            return
        if self.json_output:
            if payload is not None:
                self.raw(payload)
            return
        print(printable(message))

    @staticmethod
    def raw(payload: Any) -> None:
        print(json.dumps(payload, indent=2))


def _print(renderable: Any) -> None:
    # Tables keep their natural width, on a terminal or not: a row wider than the
    # terminal wraps there, which is ugly but loses nothing, whereas squeezing columns
    # to the terminal would fold or crop ids that users need to copy whole. Padding
    # spaces at line ends only get in the way of copy and paste: they are dropped.
    console = Console(file=sys.stdout, highlight=False, width=WIDE)
    with console.capture() as capture:
        console.print(renderable, crop=False)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in capture.get().splitlines()))
