"""Progress of a long job on the command line: a bar with rate and ETA on a terminal, a plain
line every few seconds when the output is a file or a pipe (a log, a CI job).

The job calls ``advance(n)`` (or ``set(done)``) as work gets done; nothing is printed more
often than ``every_s`` (a terminal redraws at most 10 times a second); ``close()`` prints the
final count and the mean rate.  The clock is an input, so the output is testable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

BAR = 24


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class Progress:
    """Progress of ``label``: ``total`` units (None when not known ahead), in ``unit``."""

    def __init__(self, label: str, total: int | None = None, *, unit: str = "events",
                 stream: TextIO | None = None, tty: bool | None = None,
                 every_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s = every_s if every_s is not None else (0.1 if self.tty else 5.0)
        self.clock = clock
        self.done = 0
        self.started = clock()
        self._last = self.started
        self._closed = False
        self.note = ""

    def advance(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.set(self.done + n)

    def set(self, done: int, total: int | None = None, note: str | None = None) -> None:
        """``done`` units done so far (and the total, when it became known; a note such as
        what was found so far)."""
        self.done = done
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note
        now = self.clock()
        if now - self._last >= self.every_s:
            self._last = now
            self._print(self.line(now), final=False)

    def line(self, now: float | None = None) -> str:
        """The progress as one line of text."""
        elapsed = max(1e-9, (self.clock() if now is None else now) - self.started)
        rate = self.done / elapsed
        if self.total:
            frac = min(1.0, self.done / self.total)
            eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
            bar = f" [{'#' * int(frac * BAR):.<{BAR}}]" if self.tty else ":"
            text = (f"{self.label}{bar} {self.done:,}/{self.total:,} {self.unit} ({frac:.0%}), "
                    f"{rate:,.0f} {self.unit}/s, ETA {eta}")
        else:
            text = (f"{self.label}: {self.done:,} {self.unit}, {rate:,.0f} {self.unit}/s, "
                    f"{_duration(elapsed)} so far")
        return f"{text}; {self.note}" if self.note else text

    def close(self) -> None:
        """Print the final count and mean rate (once)."""
        if self._closed:
            return
        self._closed = True
        elapsed = max(1e-9, self.clock() - self.started)
        text = (f"{self.label}: {self.done:,} {self.unit} in {_duration(elapsed)} "
                f"({self.done / elapsed:,.0f} {self.unit}/s)")
        self._print(f"{text}; {self.note}" if self.note else text, final=True)

    def _print(self, text: str, *, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        elif not self._closed:  # the job failed: its error is the message, not a count
            self._closed = True
            if self.tty and self._last != self.started:
                self.stream.write("\n")
                self.stream.flush()
