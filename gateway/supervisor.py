"""Keeps every device's poll loop, and every core task, alive and independent.

A poll loop that raises something unexpected (a driver bug, a decode path nobody foresaw) is
reported and restarted with backoff; it never takes the rest of the gateway with it (the failure
mode of ThingsBoard gateway #2132). Field failures are not crashes: they move a device between
``online`` and ``offline``.
"""

from __future__ import annotations

import asyncio
import random
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import structlog

from drivers.base import DeviceConfig, Driver
from gateway.bus import Sink
from gateway.core.data import DeviceState, Event, Priority, Quality, Reading, Value
from gateway.core.errors import DriverError, error_kind
from gateway.core.timing import SYSTEM_CLOCK, Backoff, Clock, RateLimiter

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

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


class DevicePoller:
    """One device's poll loop: deadline-scheduled, with a circuit breaker and change events.

    After ``offline_after`` failed polls in a row the device is declared offline (an event,
    its points ``bad``) and the breaker opens: from then on it is only probed, cheaply and at the
    lowest bus priority, on a doubling backoff up to ``probe_max``, so a dead unit stops spending
    the bus's time. A successful probe closes the breaker and the device is online again.
    """

    def __init__(self, driver: Driver, device: DeviceConfig, sink: Sink, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.driver = driver
        self.device = device
        self.sink = sink
        self.clock = clock
        self.state = DeviceState(device.id, "unknown", clock.time())
        self.errors: dict[str, int] = {}
        self.breaker_open = False
        self._failures_in_a_row = 0
        self._probe_wait = max(device.interval, 1.0)
        self._last: dict[str, Value] = {}
        self._watched = device.change_events()
        self._chatter: dict[str, RateLimiter] = {}

    async def run(self) -> None:
        clock = self.clock
        interval = self.device.interval
        # Stagger first polls so devices sharing an interval do not all fire on the same tick.
        due = clock.monotonic() + random.uniform(0, min(interval, 2.0))
        while True:
            await clock.sleep(max(0.0, due - clock.monotonic()))
            raise_if_cancelled()
            if self.breaker_open:
                if not await self.probe_once():
                    due = clock.monotonic() + self._probe_wait * random.uniform(0.9, 1.1)
                    self._probe_wait = min(self._probe_wait * 2, self.device.probe_max)
                    continue
                due = clock.monotonic()
            await self.poll_once()
            raise_if_cancelled()
            due += interval
            if due < clock.monotonic():  # overran (slow device): skip missed slots rather than burst
                due = clock.monotonic() + interval

    async def poll_once(self) -> None:
        now = self.clock.time()
        try:
            readings = await self.driver.poll(self.device.id)
        except DriverError as exc:
            self._failed(exc, now)
        else:
            self._succeeded(readings, now)

    async def probe_once(self) -> bool:
        try:
            alive = await self.driver.probe(self.device.id)
        except DriverError as exc:
            self._count(exc)
            alive = False
        if alive:
            self.breaker_open = False
            self._failures_in_a_row = 0
            self._probe_wait = max(self.device.interval, 1.0)
        return alive

    def _count(self, exc: DriverError) -> str:
        kind = error_kind(exc)
        self.errors[kind] = self.errors.get(kind, 0) + 1
        return kind

    def _succeeded(self, readings: list[Reading], now: float) -> None:
        self._failures_in_a_row = 0
        s = self.state
        if s.state != "online":
            if s.state == "offline":
                self.sink.event(Event("device.online", self.device.id, Priority.EVENT,
                                      {"offline_for": round(now - s.since, 1)}, ts=now))
                log.info("device online", device=self.device.id)
            s = replace(s, state="online", since=now)
        self.state = replace(s, last_poll=now, last_ok=now, error=None, polls=s.polls + 1,
                             errors=dict(self.errors))
        self._changes(readings)
        if readings:  # a poll that only confirmed the device is alive (all else by COV) has nothing to store
            self.sink.snapshot(self.device.id, readings, now)
        self.sink.device_state(self.state)

    def pushed(self, readings: list[Reading]) -> None:
        """Readings the driver was told unasked (BACnet COV): the same change events and store as a poll."""
        if readings:
            self._changes(readings)
            self.sink.snapshot(self.device.id, readings, max(r.ts for r in readings))

    def _failed(self, exc: DriverError, now: float) -> None:
        self._failures_in_a_row += 1
        kind = self._count(exc)
        s = self.state
        error = f"{type(exc).__name__}: {exc}"
        if not self.breaker_open and self._failures_in_a_row >= self.device.offline_after:
            self.breaker_open = True
            if s.state != "offline":
                log.warning("device offline", device=self.device.id, error=error)
                self.sink.event(Event("device.offline", self.device.id, Priority.EVENT,
                                      {"error": error, "kind": kind, "failures": self._failures_in_a_row}, ts=now))
                bad = [Reading(self.device.id, p, None, None, Quality.BAD, now) for p in self.device.point_ids()]
                self.sink.snapshot(self.device.id, bad, now)
                self._last.clear()
                s = replace(s, state="offline", since=now)
        self.state = replace(s, last_poll=now, error=error, polls=s.polls + 1, failures=s.failures + 1,
                             errors=dict(self.errors))
        self.sink.device_state(self.state)

    def _changes(self, readings: list[Reading]) -> None:
        """point.changed events for watched points; at start-up only for a value away from normal.

        A point that changes more than CHATTER_LIMIT times a minute is rate-limited: further changes
        are counted, and one point.chatter event says how many were held back.
        """
        now, ts = self.clock.monotonic(), self.clock.time()
        for point, limiter in self._chatter.items():
            if limiter.first_refused is not None and now - limiter.first_refused >= CHATTER_WINDOW:
                self.sink.event(Event("point.chatter", self.device.id, Priority.EVENT,
                                      {"point": point, "suppressed": limiter.take_refused(),
                                       "window_s": int(CHATTER_WINDOW)}, ts=ts))
        for r in readings:
            urgency = self._watched.get(r.point)
            if urgency is None or r.quality is not Quality.GOOD:
                continue
            previous = self._last.get(r.point, _UNSEEN)
            self._last[r.point] = r.value
            if previous == r.value or (previous is _UNSEEN and self.device.is_normal(r.point, r.value)):
                continue
            priority = Priority.ALARM if urgency == "alarm" else Priority.EVENT
            if priority is Priority.EVENT:  # alarms are never held back: only routine change events
                limiter = self._chatter.setdefault(r.point, RateLimiter(CHATTER_LIMIT, CHATTER_WINDOW))
                if not limiter.allow(now):
                    continue
            data: dict[str, Any] = {"point": r.point, "value": r.value}
            if previous is not _UNSEEN:
                data["previous"] = previous
            if r.unit:
                data["unit"] = r.unit
            self.sink.event(Event("point.changed", self.device.id, priority, data, ts=ts))


_UNSEEN: Any = object()
