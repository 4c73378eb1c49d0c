"""Terminal plumbing for `phi3-edge chat`: reading lines that may not be UTF-8, writing text any stdout takes.

Two readers with one interface, `read(prompt) -> str | None` (None at end of input):
  TerminalReader  input() with readline's line editing and history; a terminal gets the prompt
  StreamReader    a binary stream (a pipe, a file, a test's BytesIO), decoded line by line
Both raise InvalidInput for a line that is not UTF-8, so the chat says so in one line and goes on.
"""

from __future__ import annotations

import re
from typing import BinaryIO, Protocol, TextIO

# What Python's surrogateescape puts in a str for undecodable bytes (stdin under a C/POSIX locale).
_ESCAPED_BYTES = re.compile("[\udc80-\udcff]")


class InvalidInput(ValueError):
    """A line of input that is not valid UTF-8."""


class LineReader(Protocol):
    def read(self, prompt: str) -> str | None: ...


class TerminalReader:
    """input(): Ctrl-C raises KeyboardInterrupt here, Ctrl-D ends the input, arrows edit and recall lines."""

    def __init__(self) -> None:
        try:
            import readline  # noqa: F401 - importing it is what turns on line editing for input()
        except ImportError:  # pragma: no cover - Windows without pyreadline
            pass

    def read(self, prompt: str) -> str | None:
        try:
            line = input(prompt)
        except EOFError:
            return None
        except UnicodeDecodeError:
            raise InvalidInput("not UTF-8") from None
        return _checked(line)


class StreamReader:
    """Lines from a binary stream; the prompt, when `prompt_to` is given, is written there first."""

    def __init__(self, stream: BinaryIO, prompt_to: TextIO | None = None) -> None:
        self._stream = stream
        self._prompt_to = prompt_to

    def read(self, prompt: str) -> str | None:
        if self._prompt_to is not None and prompt:
            write_text(self._prompt_to, prompt)
        raw = self._stream.readline()
        if not raw:
            return None
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("not UTF-8") from None
        return _checked(line.removesuffix("\n").removesuffix("\r"))


def _checked(line: str) -> str:
    if _ESCAPED_BYTES.search(line):
        raise InvalidInput("not UTF-8")
    return line


def write_text(stream: TextIO, text: str) -> None:
    """Write and flush; characters the stream's encoding lacks become '?' instead of an exception."""
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, errors="replace").decode(encoding, errors="replace"))
    stream.flush()
