"""The progress display: one updating line on a terminal, plain lines otherwise."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``update`` rewrites the status line (TTY) or prints it at most every
    ``plain_every_s`` (not a TTY); ``log`` prints a permanent line."""

    def __init__(
        self, stream: TextIO | None = None, *, tty: bool | None = None, plain_every_s: float = 5.0
    ) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._every = plain_every_s
        self._last_plain = -float("inf")
        self._shown = 0
        self._prefix = ""

    def stage(self, prefix: str) -> None:
        """Start a new stage; its updates are prefixed with ``prefix``."""
        self._prefix = prefix
        self._last_plain = -float("inf")
        self.update("")

    def update(self, text: str) -> None:
        line = f"{self._prefix} {text}".strip()
        if self._tty:
            width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
            line = line[:width]
            pad = " " * max(0, self._shown - len(line))
            self._stream.write("\r" + line + pad)
            self._shown = len(line)
            self._stream.flush()
            return
        now = time.monotonic()
        if now - self._last_plain >= self._every:
            self._last_plain = now
            self._stream.write(line + "\n")
            self._stream.flush()

    def log(self, text: str) -> None:
        self.clear()
        self._stream.write(text + "\n")
        self._stream.flush()

    def clear(self) -> None:
        if self._tty and self._shown:
            self._stream.write("\r" + " " * self._shown + "\r")
            self._stream.flush()
            self._shown = 0
