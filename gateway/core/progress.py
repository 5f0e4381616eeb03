"""One redrawn line of progress for long CLI work (fetching models, migrating a store, probing a line).

A technician watching `gateway models fetch` over a slow SSH link wants to know it is not hung; a
script running ``--json`` wants stdout to stay exactly one JSON object and stderr free of carriage
returns. So the reporter draws only when its stream (stderr) is a terminal and the command was not
asked for JSON, redraws at most ``per_second`` times (a 100 MB download calls back thousands of
times; a redraw per chunk would cost more than the download over SSH), never wider than the
terminal (a wrapped line cannot be redrawn with a carriage return), and ends its line when done so
what follows starts on a clean one. Stdlib only: a dependency such as tqdm buys nothing here.

    with Progress("fetching faces.onnx", total=size, unit="bytes", quiet=args.json) as bar:
        for chunk in chunks:
            bar.advance(len(chunk))

Callers that take a plain callback (``on_progress(done, total)``) pass ``bar.update``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import TextIO

__all__ = ["Progress", "describe"]

_MB = 1_000_000


def describe(label: str, done: float, total: float | None, unit: str = "") -> str:
    """The line itself: ``fetching faces.onnx 42 % 12.1/28.9 MB``, ``migrating store: 12,000/40,000 rows``.

    ``unit="bytes"`` shows a percentage and megabytes; any other unit is a noun after whole counts.
    """
    if unit == "bytes":
        if total:
            pct = min(100, max(0, int(done * 100 / total)))
            return f"{label} {pct} % {done / _MB:.1f}/{total / _MB:.1f} MB"
        return f"{label} {done / _MB:.1f} MB"
    noun = f" {unit}" if unit else ""
    if total is not None:
        return f"{label} {int(done):,}/{int(total):,}{noun}"
    return f"{label} {int(done):,}{noun}"


class Progress:
    """A progress line on ``stream`` (stderr by default), silent unless it is a terminal and not ``quiet``."""

    def __init__(self, label: str, total: float | None = None, *, unit: str = "", quiet: bool = False,
                 stream: TextIO | None = None, per_second: float = 10.0) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done: float = 0
        self._stream = sys.stderr if stream is None else stream
        self.enabled = not quiet and _is_terminal(self._stream)
        self._gap = 1.0 / per_second if per_second > 0 else 0.0
        self._last_draw = float("-inf")
        self._width = 0  # characters on the line now, so a shorter line can blank the rest
        self._lock = threading.RLock()  # a store migration or a bench's ticker reports from another thread
        self._touched = False  # nothing reported, nothing drawn: opening a current store says nothing
        self._closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def update(self, done: float, total: float | None = None, *, label: str | None = None) -> None:
        """Set how far along the work is (and, when it becomes known, how much there is)."""
        self.done = done
        if total is not None:
            self.total = total
        if label is not None:
            self.label = label
        self._touched = True
        self._draw(force=False)

    def advance(self, amount: float = 1) -> None:
        self.update(self.done + amount)

    def stage(self, label: str, total: float | None = None) -> None:
        """A new piece of the work (downloading, then extracting): counted from zero, shown at once."""
        self.label, self.total, self.done, self._touched = label, total, 0, True
        self._draw(force=True)

    def clear(self) -> None:
        """Blank the line, so a message can be printed; the next update draws it again."""
        if not self.enabled:
            return
        with self._lock:
            if self._width:
                self._write("\r" + " " * self._width + "\r")
                self._width = 0
            self._last_draw = float("-inf")

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Blank the line and hold it blank while the caller prints (no other thread redraws meanwhile)."""
        with self._lock:
            self.clear()
            yield

    def close(self) -> None:
        """Draw the final state and end the line (once; safe to call again)."""
        if self._closed:
            return
        if self._touched:
            self._draw(force=True)
        self._closed = True
        if self.enabled and self._width:
            with self._lock:
                self._write("\n")
                self._width = 0

    def _draw(self, *, force: bool) -> None:
        if not self.enabled or self._closed:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_draw < self._gap:
                return
            self._last_draw = now
            text = describe(self.label, self.done, self.total, self.unit)[: self._columns() - 1]
            pad = " " * max(0, self._width - len(text))
            self._write("\r" + text + pad)
            self._width = len(text)

    def _columns(self) -> int:
        try:
            columns = os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        return max(20, columns) if columns else 80  # 0: a terminal that never said its size

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # the terminal went away (SSH dropped): the work goes on
            self.enabled = False


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):  # closed, or a stand-in without isatty
        return False
