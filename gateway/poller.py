"""One device's poll loop: deadline-scheduled, with a breaker, change events, and what the driver learns.

Field failures are state, not crashes: after ``offline_after`` failed polls in a row the device is
declared offline (an event, its points ``bad``) and only probed, cheaply and at the lowest bus
priority, on a doubling backoff up to ``probe_max``. A probe that gets an answer lets one poll
through (half open): if that poll fails too, the device stays offline and the probe backoff goes
on doubling, so a unit that answers garbage stays as isolated as a dead one.

Each failure kind is logged once when it starts (one structured line, never a traceback) and then
at most once a minute; the device's wire counters, what the driver learnt (read limits, counter
totals), its unreadable points and its pace (``poll``: configured and actual period, slots missed)
go to the store as ``device:<id>`` status, for `gateway status` and the next start.

A poll that outlasts the interval is followed at once by the next one: slots stretch evenly to the
poll's length, with no burst of catch-up polls. The slots it covered are missed and counted; a
device more than 10 % late over its last OVERRUN_WINDOW polls raises ``device.overrun`` (at most
once a minute), and ``device.overrun_cleared`` (``clears``) once it keeps up again.
"""

from __future__ import annotations

import collections
import random
from dataclasses import replace
from typing import Any

import structlog

from drivers.base import DeviceConfig, Driver
from gateway.bus import Sink
from gateway.core.data import DeviceState, Event, Priority, Quality, Reading, Value
from gateway.core.errors import DriverError, error_kind
from gateway.core.timing import SYSTEM_CLOCK, Backoff, Clock, RateLimiter
from gateway.supervisor import raise_if_cancelled

log = structlog.get_logger("gateway.poller")
CHATTER_LIMIT = 10
"""point.changed events per point per minute before the point counts as chattering."""
CHATTER_WINDOW = 60.0
STATUS_EVERY = 10.0
"""Seconds between stores of a device's counters when nothing else about it changed."""
OVERRUN_WINDOW = 10
"""Polls over which a device's pace is judged and its actual period measured."""
OVERRUN_LATE = 0.10
"""Slots missed per poll (over the window) beyond which a device is overrunning: more than 10 % late, and
behind after at least half of those polls (one long poll is a hiccup, counted but not an overrun)."""
OVERRUN_KEPT = 0.05
"""At or below this it keeps up again (a gap, so a device on the edge does not flap)."""
OVERRUN_EVERY = 60.0
"""Seconds: at most one device.overrun event per device in any such window."""


class DevicePoller:

    def __init__(self, driver: Driver, device: DeviceConfig, sink: Sink, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.driver = driver
        self.device = device
        self.sink = sink
        self.clock = clock
        self.state = DeviceState(device.id, "unknown", clock.time())
        self.errors: dict[str, int] = {}
        self.breaker_open = False
        self._failures_in_a_row = 0
        self._probe = Backoff(max(device.interval, 1.0), max(device.probe_max, device.interval, 1.0), jitter=(0.9, 1.1))
        self._last: dict[str, Value] = {}
        self._watched = device.change_events()
        self._chatter: dict[str, RateLimiter] = {}
        self._half_open = False
        self._fresh: dict[str, tuple[float, Reading]] = {}
        """Point -> (monotonic time of its last good reading, that reading): what goes stale."""
        self._stale_after = device.stale_after or 3 * device.interval
        self._said: dict[str, RateLimiter] = {}
        self._status_at = -STATUS_EVERY
        self._status_sent: dict[str, Any] = {}
        self._learning = -1
        self.unreadable: dict[str, dict[str, Any]] = {}
        self.missed = 0.0
        """Slots missed since start, fractional: a 0.31 s poll every 0.1 s misses 2.1 slots."""
        self._pace: collections.deque[float] = collections.deque(maxlen=OVERRUN_WINDOW)
        """Slots missed after each of the last polls."""
        self.overrunning = False
        self._overrun_said = RateLimiter(1, OVERRUN_EVERY)
        self._overrun_open = False
        """A device.overrun event is out and its clear is owed."""
        self._missed_said = 0
        """``overruns`` when the last device.overrun event went out."""

    @property
    def overruns(self) -> int:
        """Whole slots missed since start: polls that should have started but were not (the poll before
        was still running)."""
        return int(self.missed + 1e-6)  # 0.21 / 0.1 is 2.0999999999999996 in floating point

    @property
    def actual(self) -> float:
        """The period the device is really polled at, over the last polls (the configured one when it keeps up)."""
        if not self._pace:
            return float(self.device.interval)
        return self.device.interval * (1 + sum(self._pace) / len(self._pace))

    async def run(self) -> None:
        clock = self.clock
        interval = self.device.interval
        # Stagger first polls so devices sharing an interval do not all fire on the same tick.
        due = clock.monotonic() + random.uniform(0, min(interval, 2.0))
        while True:
            await clock.sleep(max(0.0, due - clock.monotonic()))
            raise_if_cancelled()
            if self.breaker_open:
                self._pace.clear()  # offline: the failures that got it there say nothing of its pace
                if not await self.probe_once():
                    raise_if_cancelled()  # a library that swallowed our cancel must not cost a whole backoff
                    due = clock.monotonic() + self._probe.next()
                    continue
                due = clock.monotonic()
            await self.poll_once()
            raise_if_cancelled()
            due += interval
            now = clock.monotonic()
            if due < now:  # overran (slow device): the next poll starts now; the slots in between are missed
                self._kept_pace((now - due) / interval)
                due = now
            else:
                self._kept_pace(0.0)

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
        if alive:  # half open: one poll may go through; the probe backoff resets only when it succeeds
            self.breaker_open = False
            self._half_open = True
        return alive

    def _count(self, exc: DriverError) -> str:
        kind = error_kind(exc)
        self.errors[kind] = self.errors.get(kind, 0) + 1
        return kind

    def _succeeded(self, readings: list[Reading], now: float) -> None:
        self._failures_in_a_row = 0
        if self._half_open:
            self._half_open = False
            self._probe.reset()
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
        readings = self._freshen(readings)
        if readings:  # a poll that only confirmed the device is alive (all else by COV) has nothing to store
            self.sink.snapshot(self.device.id, readings, now)
        self.sink.device_state(self.state)
        self._learnt(now)

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
        self._say(kind, error)
        if self._half_open:  # the probe's answer was not worth a poll: closed again, backoff goes on
            self._half_open = False
            self.breaker_open = True
            self._probe.next()  # the probe that let this poll through counts as a failed one
        elif not self.breaker_open and self._failures_in_a_row >= self.device.offline_after:
            self.breaker_open = True
            if s.state != "offline":
                log.warning("device offline", device=self.device.id, error=error)
                self.sink.event(Event("device.offline", self.device.id, Priority.EVENT,
                                      {"error": error, "kind": kind, "failures": self._failures_in_a_row}, ts=now))
                bad = [Reading(self.device.id, p, None, None, Quality.BAD, now) for p in self.device.point_ids()]
                self.sink.snapshot(self.device.id, bad, now)
                self._last.clear()
                self._fresh.clear()
                s = replace(s, state="offline", since=now)
        if not self.breaker_open:
            stale = self._freshen([])
            if stale:  # not yet offline, but what we hold is too old to pass for the present
                self.sink.snapshot(self.device.id, stale, now)
        self.state = replace(s, last_poll=now, error=error, polls=s.polls + 1, failures=s.failures + 1,
                             errors=dict(self.errors))
        self.sink.device_state(self.state)
        self._learnt(now)

    def _kept_pace(self, missed: float) -> None:
        """Count the slots the last poll made the device miss; say when it stops keeping up, and when it
        keeps up again."""
        self._pace.append(missed)
        self.missed += missed
        if (missed == 0.0 and not self.overrunning) or len(self._pace) < OVERRUN_WINDOW:
            return  # an on-time poll cannot start an overrun
        late = sum(self._pace) / OVERRUN_WINDOW
        if self.overrunning and late <= OVERRUN_KEPT:
            self.overrunning = False
            if self._overrun_open:
                self._overrun_open = False
                log.info("device keeps its poll interval again", device=self.device.id)
                self._overrun_event("device.overrun_cleared", {"clears": "device.overrun"})
        elif not self.overrunning and late > OVERRUN_LATE \
                and sum(1 for m in self._pace if m > 1e-6) * 2 >= OVERRUN_WINDOW:  # behind half the time: no hiccup
            self.overrunning = True
        if self.overrunning and not self._overrun_open and self._overrun_said.allow(self.clock.monotonic()):
            self._overrun_open = True
            log.warning("device cannot keep its poll interval", device=self.device.id,
                        interval=self.device.interval, actual=round(self.actual, 3))
            self._overrun_event("device.overrun", {})
            self._missed_said = self.overruns

    def _overrun_event(self, kind: str, extra: dict[str, Any]) -> None:
        now = self.clock.time()
        data = {"interval": self.device.interval, "actual": round(self.actual, 3),
                "missed": self.overruns - self._missed_said, **extra}
        self.sink.event(Event(kind, self.device.id, Priority.EVENT, data, ts=now))
        self._status(now, self.driver.learning(self.device.id))  # `gateway status` shows it at once

    def _say(self, kind: str, error: str) -> None:
        """One structured line when a kind of failure starts, then at most one a minute (no tracebacks)."""
        limiter = self._said.setdefault(kind, RateLimiter(1, 60.0))
        if limiter.allow(self.clock.monotonic()):
            log.warning("device failure", device=self.device.id, kind=kind, error=error[:300],
                        repeated=limiter.take_refused())

    def _freshen(self, readings: list[Reading]) -> list[Reading]:
        """Remember good values; points not refreshed within ``stale_after`` come back once, marked stale."""
        now = self.clock.monotonic()
        for r in readings:
            if r.quality is Quality.GOOD:
                self._fresh[r.point] = (now, r)
            else:
                self._fresh.pop(r.point, None)
        heard = {r.point for r in readings}
        stale = [replace(r, quality=Quality.STALE) for point, (at, r) in self._fresh.items()
                 if point not in heard and now - at > self._stale_after]
        for r in stale:
            del self._fresh[r.point]  # said once; a fresh value brings it back
        return readings + stale

    def _learnt(self, now: float) -> None:
        """Findings become events; counters and what was learnt become the device's stored status."""
        device = self.device.id
        for kind, data in self.driver.findings(device):
            if kind == "device.point_unreadable":
                self.unreadable[str(data.get("point"))] = data
                log.warning("point unreadable: check its address", device=device, **data)
            self.sink.event(Event(kind, device, Priority.EVENT, data, ts=now))
        version = self.driver.learning(device)
        due = self.clock.monotonic() - self._status_at >= STATUS_EVERY
        if version == self._learning and not due:  # nothing new learnt: the counters wait for the next round
            return
        self._status(now, version)

    def _status(self, now: float, version: int) -> None:
        device = self.device.id
        known = self.driver.unreadable(device)
        for point in [p for p in self.unreadable if p not in known]:  # readable again (relearnt, map fixed)
            del self.unreadable[point]
        status = {"counters": self.driver.counters(device), "learned": self.driver.learned(device),
                  "unreadable": dict(self.unreadable),
                  "poll": {"interval": self.device.interval, "actual": round(self.actual, 3),
                           "overruns": self.overruns, "overrunning": self.overrunning}}
        self._status_at, self._learning = self.clock.monotonic(), version
        if status != self._status_sent:
            self._status_sent = status
            self.sink.meta(f"device:{device}", {**status, "ts": now})

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
