"""Time you can control, and the small helpers that depend on it: backoff, rate limits, percentiles.

Runtime components take a ``Clock`` rather than calling ``time`` and ``asyncio.sleep`` directly, so
tests can step time exactly (``ManualClock``) instead of sleeping and comparing rates.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock epoch seconds (for timestamps people and platforms read)."""

    def monotonic(self) -> float:
        """Seconds that never go back (for durations and deadlines)."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only when a test says so; sleepers wake in deadline order as it passes them.

    ``time()`` is ``epoch + monotonic()``, so wall and monotonic time move together.
    """

    def __init__(self, start: float = 0.0, epoch: float = 1_767_225_600.0) -> None:
        self._now = start
        self.epoch = epoch
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.epoch + self._now

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), fut))
        await fut

    @property
    def sleepers(self) -> int:
        return sum(1 for *_, fut in self._sleepers if not fut.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper whose deadline passes, in order, letting each run."""
        await settle()  # tasks just started get to their first sleep before time moves
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._now = max(self._now, due)
            fut.set_result(None)
            await settle()
        self._now = target
        await settle()


async def wait_until(condition: Callable[[], object], within: float, what: str = "the condition",
                     *, every: float = 0.02) -> None:
    """Wait for something other tasks or processes make true; TimeoutError naming it after ``within`` s.

    For tests and benches: a bound on a hang, never a measure of speed (the condition decides).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not within {within:g}s")
        await asyncio.sleep(every)


async def settle(turns: int = 20) -> None:
    """Let every ready task run until the loop has nothing left to do right now (bounded)."""
    for _ in range(turns):
        await asyncio.sleep(0)


class Backoff:
    """A doubling delay, randomised within ``jitter`` (factors of the nominal delay), reset after success.

    The default spreads ±20 %; an uplink uses (0.5, 1.0) so that a district's gateways reconnecting after an
    outage do not arrive in step; (1.0, 1.0) is exact, for retries a person reads in a log.
    """

    def __init__(self, first: float, cap: float, *, jitter: tuple[float, float] = (0.8, 1.2)) -> None:
        if first <= 0 or cap < first:
            raise ValueError("backoff needs 0 < first <= cap")
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self.current = first

    def next(self) -> float:
        """The delay to wait now; the following one doubles, up to the cap."""
        delay = self.current * random.uniform(*self.jitter)
        self.current = min(self.current * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.current = self.first


class RateLimiter:
    """At most ``limit`` passes in any ``window`` seconds (a sliding window); refusals are counted, not lost.

    Used wherever something chatty must not flood the outbox or the log: point change events, camera
    events, repeated field-error lines. Alarms never go through one.
    """

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._passed: collections.deque[float] = collections.deque(maxlen=max(limit, 1))
        self.refused = 0
        self.first_refused: float | None = None

    def allow(self, now: float) -> bool:
        if self.limit > 0 and (len(self._passed) < self.limit or now - self._passed[0] >= self.window):
            self._passed.append(now)
            return True
        self.refused += 1
        if self.first_refused is None:
            self.first_refused = now
        return False

    def take_refused(self) -> int:
        """How many were refused since the last call (for one summary event per window)."""
        refused, self.refused, self.first_refused = self.refused, 0, None
        return refused


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0 < q < 1) of unsorted samples, interpolated as ``statistics.quantiles`` does."""
    if not samples:
        raise ValueError("no samples")
    if len(samples) == 1:
        return float(samples[0])
    cuts = statistics.quantiles(samples, n=1000, method="inclusive")
    index = round(q * 1000)
    if index <= 0:
        return float(min(samples))
    if index >= 1000:
        return float(max(samples))
    return cuts[index - 1]
