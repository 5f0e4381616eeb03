"""Keeps every device's poll loop, and every core task, alive and independent.

A poll loop that raises something unexpected (a driver bug, a decode path nobody foresaw) is
reported and restarted with backoff; it never takes the rest of the gateway with it (the failure
mode of ThingsBoard gateway #2132). Field failures are not crashes: they move a device between
``online`` and ``offline``.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable, Iterable

import structlog

from gateway.bus import Sink
from gateway.core.data import Event, Priority
from gateway.core.timing import SYSTEM_CLOCK, Backoff, Clock

log = structlog.get_logger("gateway.supervisor")
CHATTER_LIMIT = 10
"""point.changed events per point per minute before the point counts as chattering."""
CHATTER_WINDOW = 60.0


def raise_if_cancelled() -> None:
    """Honour a cancellation that a library swallowed (pymodbus turns CancelledError into its own errors).

    Loops call this every turn, so shutdown can never hang on a task whose cancel was eaten.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Supervisor:
    def __init__(self, sink: Sink, *, min_backoff: float = 1.0, max_backoff: float = 60.0,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.sink = sink
        self.clock = clock
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: dict[str, int] = {}

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        self.tasks[name] = asyncio.create_task(self._keep(name, factory), name=name)

    async def _keep(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(self.min_backoff, self.max_backoff)
        while True:
            started = self.clock.monotonic()
            delay = backoff.current
            try:
                await factory()
                log.warning("task ended; restarting", task=name)
                self.sink.event(Event("gateway.task_ended", name, Priority.EVENT, {"restart_in": round(delay, 2)},
                                      ts=self.clock.time()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.restarts[name] = self.restarts.get(name, 0) + 1
                if self.clock.monotonic() - started > 10 * self.max_backoff:
                    backoff.reset()  # it had been healthy for a long while: start over
                    delay = backoff.current
                log.error("task crashed", task=name, error=repr(exc), restart_in=round(delay, 2))
                self.sink.event(Event(
                    "gateway.task_crashed", name, Priority.EVENT,
                    {"error": repr(exc)[:500], "trace": traceback.format_exc(limit=5)[-2000:],
                     "restart_in": round(delay, 2), "restarts": self.restarts[name]}, ts=self.clock.time(),
                ))
            await self.clock.sleep(backoff.next())

    async def end(self, names: Iterable[str], *, within: float = 10.0) -> list[str]:
        """Stop these tasks for good (a reload removes or replaces them) and wait for them, at most ``within``
        seconds; the names of those that had not ended by then (they were cancelled and go on ending)."""
        tasks = {name: self.tasks.pop(name) for name in names if name in self.tasks}
        for task in tasks.values():
            task.cancel()
        if not tasks:
            return []
        _, pending = await asyncio.wait(tasks.values(), timeout=within)
        return sorted(name for name, task in tasks.items() if task in pending)

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
