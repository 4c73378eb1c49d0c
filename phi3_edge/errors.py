"""The one error type users see: a one-line message naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class Phi3EdgeError(Exception):
    """A clean, user-facing failure. The CLI prints `error: <message>` and exits non-zero, no traceback."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


class CheckpointError(Phi3EdgeError):
    """The source checkpoint is missing, malformed, unsupported or unsafe."""


class ArtifactError(Phi3EdgeError):
    """An artifact folder is missing, damaged or not ours."""
