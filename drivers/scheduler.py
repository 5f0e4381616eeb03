"""The bus scheduler: who may use a shared wire next.

An RS-485 line (or a TCP-to-RS-485 converter) carries one transaction at a time, needs a quiet gap
between frames, and is shared by devices of very different importance. Every transaction asks the
scheduler for a slot at its priority: life-safety polls first, then writes, then ordinary polls,
then probes of devices believed dead. Within a priority, first come first served, so no device
can starve another of its class, and nobody waits forever: a request older than ``max_wait`` goes
next (after life-safety), so the probe that would notice a dead device coming back still gets the
wire on a line saturated with polls. What keeps a dead device from eating the bus is the breaker
in the poller; what keeps it from eating the bus *between* its failures is that each of its
transactions waits in this queue like everyone else's.
"""

from __future__ import annotations

import array
import asyncio
import enum
import heapq
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


class Urgency(enum.IntEnum):
    LIFE_SAFETY = 0  # fire panels, elevators: their polls go before anything else
    WRITE = 1  # a person or a rule is waiting for it
    POLL = 2
    PROBE = 3  # is that dead device back yet? Only when the bus has nothing better to do


@dataclass(slots=True)
class SchedulerStats:
    transactions: int = 0
    busy_seconds: float = 0.0
    waited: dict[Urgency, array.array[float]] = field(default_factory=lambda: {u: array.array("d") for u in Urgency})
    max_samples: int = 256  # per urgency per bus: enough for a p99; 8 bytes a sample (a float in a list: 32)

    def record_wait(self, urgency: Urgency, seconds: float) -> None:
        samples = self.waited[urgency]
        samples.append(seconds)
        if len(samples) > self.max_samples:
            del samples[: len(samples) - self.max_samples]


class BusScheduler:
    def __init__(self, *, concurrency: int = 1, gap: float = 0.0, max_wait: float = 2.0) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.concurrency = concurrency
        self.gap = gap
        self.max_wait = max_wait
        self.stats = SchedulerStats()
        self._busy = 0
        self._queue: list[tuple[int, int, float, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._last_end = 0.0

    @property
    def waiting(self) -> int:
        return sum(1 for entry in self._queue if not entry[3].done())

    def figures(self) -> dict[str, float]:
        """The wire's use since start, as ``Driver.wire`` gives it (bus utilisation is busy seconds per second)."""
        return {"transactions": self.stats.transactions, "busy_seconds": self.stats.busy_seconds,
                "concurrency": self.concurrency, "waiting": self.waiting}

    @asynccontextmanager
    async def slot(self, urgency: Urgency = Urgency.POLL) -> AsyncIterator[None]:
        """Hold the wire for one transaction (request and reply)."""
        asked = time.monotonic()
        await self._acquire(urgency)
        try:
            wait = self._last_end + self.gap - time.monotonic()
            if wait > 0:  # the inter-frame gap after the previous transaction
                await asyncio.sleep(wait)
            started = time.monotonic()
            self.stats.record_wait(urgency, started - asked)
            try:
                yield
            finally:
                self.stats.transactions += 1
                self.stats.busy_seconds += time.monotonic() - started
        finally:
            self._release()

    async def _acquire(self, urgency: Urgency) -> None:
        if self._busy < self.concurrency and not self.waiting:
            self._busy += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queue, (int(urgency), next(self._order), time.monotonic(), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # the slot was handed to us just as we were cancelled: pass it on
            else:
                fut.cancel()  # leave it in the heap; _release skips cancelled entries
            raise

    def _release(self) -> None:
        self._last_end = now = time.monotonic()
        while self._queue and self._queue[0][3].done():
            heapq.heappop(self._queue)  # cancelled, or already served out of turn
        if not self._queue:
            self._busy -= 1
            return
        head = self._queue[0]
        chosen = head
        if head[0] != Urgency.LIFE_SAFETY:
            overdue = [e for e in self._queue if not e[3].done() and now - e[2] > self.max_wait]
            if overdue:
                chosen = min(overdue, key=lambda e: e[1])  # the longest-waiting goes next
        if chosen is head:
            heapq.heappop(self._queue)
        chosen[3].set_result(None)  # the slot passes straight to the chosen waiter
