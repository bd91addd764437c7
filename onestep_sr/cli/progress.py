"""A one-line text progress bar for terminals: ``[2/5] photo.png  [######......] 12/30 tiles``.

The line is redrawn in place with a carriage return and only when its text changes; ``close``
blanks it so that the next line printed starts on a clean line.
"""
from __future__ import annotations

from typing import TextIO


class TextBar:
    """``update(done, total)`` redraws the bar on ``stream``; ``close()`` erases it."""

    def __init__(self, stream: TextIO, label: str, width: int = 24, unit: str = "tiles"):
        self.stream, self.label, self.width, self.unit = stream, label, width, unit
        self._shown = ""

    def render(self, done: int, total: int) -> str:
        done = max(0, min(done, total)) if total > 0 else 0
        filled = self.width * done // total if total > 0 else 0
        bar = "#" * filled + "." * (self.width - filled)
        return f"{self.label}  [{bar}] {done}/{total} {self.unit}"

    def update(self, done: int, total: int) -> None:
        line = self.render(done, total)
        if line == self._shown:
            return
        padding = " " * max(0, len(self._shown) - len(line))  # wipe the tail of a longer old line
        self.stream.write("\r" + line + padding)
        self.stream.flush()
        self._shown = line

    def close(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * len(self._shown) + "\r")
            self.stream.flush()
            self._shown = ""
