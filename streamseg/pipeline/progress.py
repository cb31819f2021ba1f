"""A one-line progress bar for terminals; silent (apart from explicit lines) when piped."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """Shows `done/total`, rate and ETA on one redrawn line of a terminal.

    `clock` is injected so the arithmetic is testable; drawing is throttled to 4 Hz.
    """

    def __init__(
        self,
        total: int | None,
        *,
        unit: str = "frames",
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool | None = None,
    ) -> None:
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.clock = clock
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = clock()
        self.done = 0
        self._last_draw = -1.0
        self.extra = ""

    def rate(self) -> float:
        elapsed = self.clock() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def text(self) -> str:
        rate = self.rate()
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            head = f"[{bar:<30}] {self.done}/{self.total} {self.unit}"
            tail = f" {rate:.1f}/s ETA {eta:.0f}s" if rate > 0 else ""
        else:
            head, tail = f"{self.done} {self.unit}", f" {rate:.1f}/s"
        return head + tail + (f" {self.extra}" if self.extra else "")

    def update(self, n: int = 1, extra: str | None = None) -> None:
        self.done += n
        if extra is not None:
            self.extra = extra
        now = self.clock()
        if self.enabled and now - self._last_draw >= 0.25:
            self._last_draw = now
            self.stream.write("\r\x1b[2K" + self.text())
            self.stream.flush()

    def line(self, text: str) -> None:
        """Print a full line without garbling the bar."""
        if self.enabled:
            self.stream.write("\r\x1b[2K")
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_draw = -1.0

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[2K" + self.text() + "\n")
            self.stream.flush()
