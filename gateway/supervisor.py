"""Keeps every device's poll loop, and every core task, alive and independent.

A poll loop that raises something unexpected (a driver bug, a decode path nobody foresaw) is
reported and restarted with backoff; it never takes the rest of the gateway with it (the failure
mode of ThingsBoard gateway #2132). Field failures are not crashes: they move a device between
``online`` and ``offline``.
"""

from __future__ import annotations

import asyncio
import random
import time
import traceback
from collections.abc import Awaitable, Callable

import structlog

from drivers.base import DeviceConfig, Driver, DriverError
from gateway.model import Event, Priority, Quality, Reading
from gateway.recorder import Recorder
from gateway.store import DeviceState

log = structlog.get_logger("gateway.supervisor")


class Supervisor:
    def __init__(self, recorder: Recorder, *, min_backoff: float = 1.0, max_backoff: float = 60.0) -> None:
        self.recorder = recorder
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: dict[str, int] = {}

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        self.tasks[name] = asyncio.create_task(self._keep(name, factory), name=name)

    async def _keep(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        delay = self.min_backoff
        while True:
            started = time.monotonic()
            try:
                await factory()
                log.warning("task ended; restarting", task=name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.restarts[name] = self.restarts.get(name, 0) + 1
                if time.monotonic() - started > 10 * self.max_backoff:
                    delay = self.min_backoff  # it had been healthy for a long while: start over
                log.error("task crashed", task=name, error=repr(exc), restart_in=round(delay, 2))
                self.recorder.event(Event(
                    "gateway.task_crashed", name, Priority.EVENT,
                    {"error": repr(exc)[:500], "trace": traceback.format_exc(limit=5)[-2000:],
                     "restart_in": round(delay, 2), "restarts": self.restarts[name]},
                ))
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.max_backoff)

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


class DevicePoller:
    """One device's poll loop: deadline-scheduled, online/offline with events, points ``bad`` when down."""

    def __init__(self, driver: Driver, device: DeviceConfig, recorder: Recorder, *, offline_after: int = 2) -> None:
        self.driver = driver
        self.device = device
        self.recorder = recorder
        self.offline_after = offline_after
        self.state = DeviceState(device.id, "unknown", time.time())
        self._consecutive_failures = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.device.interval
        # Stagger first polls so devices sharing an interval do not all fire on the same tick.
        due = loop.time() + random.uniform(0, min(interval, 2.0))
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self.poll_once()
            due += interval
            if due < loop.time():  # overran (slow device): skip missed slots rather than burst
                due = loop.time() + interval

    async def poll_once(self) -> None:
        now = time.time()
        try:
            readings = await self.driver.read(self.device.id)
        except DriverError as exc:
            self._failed(exc, now)
        else:
            self._succeeded(readings, now)

    def _succeeded(self, readings: list[Reading], now: float) -> None:
        self._consecutive_failures = 0
        s = self.state
        if s.state != "online":
            if s.state == "offline":
                self.recorder.event(Event("device.online", self.device.id, Priority.EVENT,
                                          {"offline_for": round(now - s.since, 1)}))
                log.info("device online", device=self.device.id)
            s = DeviceState(s.id, "online", now, polls=s.polls, failures=s.failures)
        self.state = DeviceState(s.id, s.state, s.since, now, now, None, s.polls + 1, s.failures)
        self.recorder.snapshot(self.device.id, readings, now)
        self.recorder.device_state(self.state)

    def _failed(self, exc: DriverError, now: float) -> None:
        self._consecutive_failures += 1
        s = self.state
        error = f"{type(exc).__name__}: {exc}"
        if s.state != "offline" and self._consecutive_failures >= self.offline_after:
            log.warning("device offline", device=self.device.id, error=error)
            self.recorder.event(Event("device.offline", self.device.id, Priority.EVENT, {"error": error}))
            bad = [Reading(self.device.id, p, None, None, Quality.BAD, now) for p in self.device.point_ids()]
            self.recorder.snapshot(self.device.id, bad, now)
            s = DeviceState(s.id, "offline", now, polls=s.polls, failures=s.failures, last_ok=s.last_ok)
        self.state = DeviceState(s.id, s.state, s.since, now, s.last_ok, error, s.polls + 1, s.failures + 1)
        self.recorder.device_state(self.state)
