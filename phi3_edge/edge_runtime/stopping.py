"""User stop strings over streamed text: the output is cut right before the first stop string.

A stop string can span several tokens, so streamed text is held back while its tail could still be the start
of one ("\\n\\nUs" while waiting to see whether "\\n\\nUser:" follows); nothing past a stop string is ever shown.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStrings:
    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._pending = ""  # text received but not yet released
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add decoded text; returns what is safe to show now. Sets `stopped` once a stop string appears."""
        if self.stopped:
            return ""
        text = self._pending + piece
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped, self._pending = True, ""
            return text[:cut]
        hold = self._held_tail(text)
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """The held-back tail once generation ended without completing a stop string."""
        text, self._pending = self._pending, ""
        return "" if self.stopped else text

    def _first_stop(self, text: str) -> int | None:
        found = [index for index in (text.find(stop) for stop in self._stops) if index >= 0]
        return min(found) if found else None

    def _held_tail(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[-size:]):
                    longest = size
                    break
        return longest
