"""Build logs that read well in a CI log file: plain lines, colour only on a terminal that wants it.

No spinners or carriage returns when stderr is not a terminal; no colour when NO_COLOR is set
(https://no-color.org) or stderr is not a terminal, unless FORCE_COLOR is set. Under GitHub Actions a failed
target is also written as an `::error::` workflow command, which the run's page shows as an annotation.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

_COLOURS = {"ok": "32", "fail": "31", "info": "36"}


def use_colour(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR"):
        return False
    if env.get("FORCE_COLOR"):
        return True
    is_tty = getattr(stream, "isatty", None)
    return bool(is_tty and is_tty()) and env.get("TERM") != "dumb"


def is_interactive(stream: TextIO) -> bool:
    """A live progress display only makes sense on a terminal."""
    is_tty = getattr(stream, "isatty", None)
    return bool(is_tty and is_tty())


class BuildLog:
    """One line per event, flushed at once (a CI log shows it as it happens)."""

    def __init__(self, stream: TextIO | None = None, environ: dict[str, str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        env = os.environ if environ is None else environ
        self.colour = use_colour(self.stream, dict(env))
        self.github = env.get("GITHUB_ACTIONS") == "true"

    def line(self, text: str, kind: str = "info") -> None:
        if self.colour and kind in _COLOURS:
            text = f"\x1b[{_COLOURS[kind]}m{text}\x1b[0m"
        print(text, file=self.stream, flush=True)

    def failure(self, title: str, message: str) -> None:
        self.line(f"FAILED {title}: {message}", "fail")
        if self.github:
            # Workflow command: '%', CR and LF must be escaped in the message, ':' and ',' too in properties.
            safe_title = _escape(title).replace(":", "%3A").replace(",", "%2C")
            print(f"::error title={safe_title}::{_escape(message)}", file=self.stream, flush=True)


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
