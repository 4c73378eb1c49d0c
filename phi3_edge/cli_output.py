"""How `phi3-edge` prints: rich tables for people, `--json` for programs, and nothing that an odd stdout
encoding can crash (an ASCII locale, a Windows code page, a pipe with PYTHONIOENCODING=ascii).

protect_streams() makes stdout/stderr replace what their encoding lacks instead of raising; JSON is written
with ensure_ascii, so it stays valid JSON on any of them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

PIPE_WIDTH = 120


def protect_streams() -> None:
    """stdout/stderr write '?' for a character their encoding lacks (rich's ellipsis on ASCII, a reply in Greek)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="replace")
            except (ValueError, OSError):  # a closed or detached stream: nothing to protect
                pass


def jsonable(value: Any) -> Any:
    """Dataclasses, paths, tuples and sets as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_json = getattr(value, "to_json", None)
        if callable(to_json):
            return jsonable(to_json())
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def print_json(value: Any) -> None:
    click.echo(json.dumps(jsonable(value), indent=2, ensure_ascii=True))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *,
                whole: Sequence[int] = ()) -> None:
    """A rich table; no `columns`: a two-column key/value table without a header. Columns in `whole` are
    never cut (a name the user types back, like a cache key); the others wrap to fit the width."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title or None, show_header=bool(columns))
    for index, name in enumerate(columns):
        width = max([len(name), *(len(row[index]) for row in rows)]) if index in whole else None
        table.add_column(name, no_wrap=index in whole, min_width=width)
    if not columns:
        table.add_column(style="bold")
        table.add_column()
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))  # "[batch_size, ...]" is data, not rich markup
    console = Console()
    if not console.is_terminal:  # a pipe or a log: 120 columns keep the notes readable (a terminal sets its own)
        console.width = max(console.width, PIPE_WIDTH)
    console.print(table)


def warn(message: str) -> None:
    """One line on stderr: an option that does nothing here, a fallback the user should know about."""
    click.echo(f"warning: {message}", err=True)


def size(nbytes: int) -> str:
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.2f} GiB"
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"
