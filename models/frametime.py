"""A video file's frame times: one rule for the camera worker (``realtime = false``) and ``gateway vision falls``.

A frame's time is its position in the file as the container says (``CAP_PROP_POS_MSEC``), kept going forward:

- a timestamp that does not advance (stuck, missing, or a small step back, as some containers give for
  reordered frames) is replaced by the frame's index over the file's frame rate, or one frame period after
  the previous time if that is later; without a frame rate, the previous time (the frame then shares it);
- only a large jump back is a new turn of a looping file (the worker reopens a file at its end): back by
  more than half the clip, or to within a frame period of the start. A new turn carries on one frame period
  after the last frame of the previous one, so the times of a looping file never go back.

Pure arithmetic, no OpenCV: the callers read the position and the rate.
"""

from __future__ import annotations

import math

MAX_POSITION = 1e8
"""Seconds (three years): a position beyond it is garbage, not a timestamp."""
NO_RATE_PERIOD = 0.04
"""The frame period assumed for "near the start" when the file gives no frame rate (25 fps)."""


class FileTimes:
    """Feed each frame's container position (seconds, or anything unusable); get its time since the first frame."""

    def __init__(self, fps: float, length_s: float | None = None) -> None:
        self.fps = fps if math.isfinite(fps) and 0.01 <= fps <= 1000 else 0.0
        self.period = 1.0 / self.fps if self.fps else NO_RATE_PERIOD
        self.length = length_s if length_s is not None and math.isfinite(length_s) and length_s > 0 else None
        self.start = 0.0
        """Time of the first frame of this turn of the file."""
        self.base = 0.0
        """What this turn adds to the container's positions."""
        self.index = 0
        """Frames read in this turn."""
        self.raw_last: float | None = None
        """The container's last usable position in this turn."""
        self.last: float | None = None
        """The last time handed out (since the first frame of the first turn)."""

    def next(self, position: float) -> float:
        raw = position if isinstance(position, float | int) and 0 <= position <= MAX_POSITION else None
        if raw is not None and self.raw_last is not None and self._looped(raw, self.raw_last):
            assert self.last is not None
            self.start, self.index, self.raw_last = self.last + self.period, 0, None
            self.base = self.start - raw  # the turn's first frame comes one period after the last one
        at = self.base + raw if raw is not None else None
        by_index = self.start + self.index / self.fps if self.fps else None
        if self.last is None:
            t = at if at is not None else (by_index if by_index is not None else 0.0)
        elif at is not None and at > self.last and (self.raw_last is None or raw is None or raw > self.raw_last):
            t = at
        elif self.fps:  # stuck, missing or a small step back: the index, never going back
            t = max(by_index if by_index is not None else -math.inf, self.last + self.period)
        else:
            t = self.last
        self.index += 1
        if raw is not None:
            self.raw_last = raw if self.raw_last is None else max(raw, self.raw_last)
        self.last = t
        return t

    def _looped(self, raw: float, raw_last: float) -> bool:
        if raw >= raw_last - 2 * self.period:
            return False  # not a large jump back
        return raw <= self.period or (self.length is not None and raw_last - raw > self.length / 2)
