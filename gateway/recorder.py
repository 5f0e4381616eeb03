"""The single writer between the bus and the disk.

It subscribes to the bus and commits what it hears in batches (one transaction per flush) on the
store's own thread, so a slow SD card never delays a poll and SQLite sees a handful of commits a
second instead of thousands. Alarms, alarm state and audit entries skip the batching delay: they
are committed and handed to the uplink at once.

A full disk is a state, not a crash. The first commit that finds it full releases the data
directory's reserve and commits only what matters (alarms, events, alarm state, audit, device
state); telemetry, readings history and raw lines are shed, with a count, until space returns. A
``store.disk_full`` alarm is raised once and ``store.disk_recovered`` said when it is over. If even
the reserve is not enough, alarms and events wait in memory (bounded: events go before alarms), the
uplink publishes them straight from there (same ids: the platform de-duplicates), and they are
written as soon as space returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from gateway.bus import LocalBus
from gateway.core.data import DeviceState, Event, Priority
from gateway.core.timing import SYSTEM_CLOCK, Clock, RateLimiter
from gateway.facts import Fact
from gateway.headroom import Headroom, is_disk_full
from gateway.store import Batch, Store

log = structlog.get_logger("gateway.recorder")
T = TypeVar("T")
HELD_LIMIT = 50_000
"""Alarm and event messages kept in memory while nothing can be written; beyond it events go, then alarms."""
FULL_RETRY = 1.0
"""Seconds between tries to write while the disk is full."""


class Broadcast(asyncio.Event):
    """An event that also sets each of its subscribers' own events: every uplink waits on its own, so one that
    clears its event after a round never swallows the wake-up another was about to wait for."""

    def __init__(self) -> None:
        super().__init__()
        self._subscribers: weakref.WeakSet[asyncio.Event] = weakref.WeakSet()

    def subscribe(self) -> asyncio.Event:
        event = asyncio.Event()
        event.set()  # whatever was committed before it subscribed is looked at once
        self._subscribers.add(event)
        return event

    def set(self) -> None:
        super().set()
        for event in list(self._subscribers):
            event.set()


class AsyncStore:
    """Runs every call on the store's single thread: SQLite connections are not for sharing."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()


class Recorder:
    def __init__(self, store: AsyncStore, bus: LocalBus, *, flush_interval: float = 0.05,
                 cap_check_interval: float = 5.0, clock: Clock = SYSTEM_CLOCK,
                 headroom: Headroom | None = None) -> None:
        self.store = store
        self.bus = bus
        self.clock = clock
        self.headroom = headroom
        self.disk_full = False
        self.shed: dict[str, int] = {}
        """What was not written while the disk was full, by kind (telemetry, readings, raw lines, events)."""
        self._said = RateLimiter(1, 60.0)
        self.flush_interval = flush_interval
        self.cap_check_interval = cap_check_interval
        self.committed = Broadcast()
        """Set after every commit that added outbox messages; each uplink waits on its own subscription."""
        self._pending = Batch()
        self._wake = asyncio.Event()
        self._urgent = False
        bus.on_event(self._event)
        bus.on_device_state(self._device_state)
        bus.on_alarm_state(self._alarm_state)
        bus.on_raw(self._raw)
        bus.on_audit(self._audit)
        bus.on_status(self._meta)

    # -- what the bus hands over (never blocks) --------------------------------------------------

    def outgoing(self, fact: Fact) -> None:
        """A fact bound upstream, committed to the outbox with the batch it belongs to."""
        self._pending.facts.append(fact)
        if fact.priority is Priority.ALARM:
            self._urgent = True
        self._wake.set()

    def history(self, device: str, ts: float, body: bytes) -> None:
        """A poll kept in the readings history (the same points body as its outbox fact)."""
        self._pending.history.append((device, ts, body))
        self._wake.set()

    def _event(self, ev: Event) -> None:
        self._pending.events.append(ev)
        self._wake.set()

    def _device_state(self, state: DeviceState) -> None:
        self._pending.devices[state.id] = state
        self._wake.set()

    def _alarm_state(self, key: str, record: dict[str, Any]) -> None:
        self._pending.alarms[key] = record
        self._urgent = True
        self._wake.set()

    def _raw(self, device: str, ts: float, data: bytes, parsed: dict[str, Any] | None) -> None:
        self._pending.raw_lines.append((device, ts, data, parsed))
        self._wake.set()

    def _audit(self, ts: float, action: str, data: dict[str, Any]) -> None:
        self._pending.audit.append((ts, action, data))
        self._urgent = True
        self._wake.set()

    def _meta(self, key: str, value: Any) -> None:
        self._pending.meta[key] = value
        self._wake.set()

    # -- the writer task -------------------------------------------------------------------------

    async def run(self) -> None:
        last_cap_check = self.clock.monotonic()
        if self.headroom is not None and self.headroom.reserve_bytes and not await self.store.run(self.headroom.hold):
            # the reserve was spent on alarms (a disk full before a restart) and there is no room to make it again
            self._enter_full("no room to make the reserve: the disk is still full", released=False)
        while True:
            if self.disk_full:  # wake to try again even when nothing new arrives
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FULL_RETRY):
                        await self._wake.wait()
            else:
                await self._wake.wait()
            if not self._urgent:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval):
                        while not self._urgent:  # an alarm arriving mid-wait cuts the wait short
                            self._wake.clear()
                            await self._wake.wait()
            await self.flush()
            now = self.clock.monotonic()
            if now - last_cap_check >= (FULL_RETRY if self.disk_full else self.cap_check_interval):
                last_cap_check = now
                await self.check_cap()

    async def flush(self) -> None:
        batch, self._pending, self._urgent = self._pending, Batch(), False
        self._wake.clear()
        if self.disk_full:
            batch = self._essential(batch)
        if not batch:
            return
        try:
            await self.store.run(self.store.store.commit, batch)
        except Exception as exc:
            if not is_disk_full(exc):
                self._requeue(batch)
                raise
            await self._full(batch, exc)
            return
        except BaseException:
            # Disk full, an I/O error, a cancel mid-commit: the transaction rolled back, so the batch
            # goes back in front of whatever arrived since, to be committed by the next flush.
            self._requeue(batch)
            raise
        if batch.facts:
            self.committed.set()

    def _requeue(self, batch: Batch) -> None:
        """A commit that did not happen: the batch goes back in front of whatever arrived since."""
        self._pending = batch.then(self._pending)
        self._urgent = self._urgent or any(f.priority is Priority.ALARM for f in batch.facts)
        self._wake.set()

    # -- a full disk ------------------------------------------------------------------------------

    async def _full(self, batch: Batch, exc: BaseException) -> None:
        first = not self.disk_full
        essential = self._essential(batch)
        released = self.headroom is not None and await self.store.run(self.headroom.release)
        try:
            if essential:
                await self.store.run(self.store.store.commit, essential)
        except Exception as again:
            if not is_disk_full(again):
                self._requeue(essential)
                raise
            self._requeue(essential)
            self._bound()
        else:
            if essential.facts:
                self.committed.set()
        if first:
            self._enter_full(str(exc), released=released)
        elif self._said.allow(self.clock.monotonic()):
            log.warning("disk still full", held=len(self._pending.facts), shed=dict(self.shed))

    def _enter_full(self, reason: str, *, released: bool) -> None:
        self.disk_full = True
        log.error("disk full: only alarms and events are written until space returns", error=reason,
                  reserve_released=released)
        self.bus.event(Event("store.disk_full", "store", Priority.ALARM,
                             {"error": reason[:200], "reserve_released": released}, ts=self.clock.time()))

    def _essential(self, batch: Batch) -> Batch:
        """What a full disk still gets: alarms, events, their state and the audit; the rest is counted and shed."""
        kept = [f for f in batch.facts if f.priority is not Priority.TELEMETRY]
        self._count("telemetry", len(batch.facts) - len(kept))
        self._count("readings", len(batch.history))
        self._count("raw_lines", len(batch.raw_lines))
        return Batch(facts=kept, events=batch.events, devices=batch.devices, meta=batch.meta,
                     audit=batch.audit, alarms=batch.alarms)

    def _count(self, kind: str, n: int) -> None:
        if n:
            self.shed[kind] = self.shed.get(kind, 0) + n

    def _bound(self) -> None:
        """Memory is finite too: past HELD_LIMIT messages (and log rows), the oldest events go first, alarms last."""
        pending = self._pending
        pending.facts = self._trim(pending.facts, lambda f: f.priority, "messages")
        pending.events = self._trim(pending.events, lambda e: e.priority, "log_rows")

    def _trim(self, items: list[T], priority: Callable[[T], Priority], kind: str) -> list[T]:
        excess = len(items) - HELD_LIMIT
        for level in (Priority.EVENT, Priority.ALARM):
            if excess <= 0:
                break
            gone = set([i for i, item in enumerate(items) if priority(item) is level][:excess])
            items = [item for i, item in enumerate(items) if i not in gone]
            self._count(f"{kind}_{level.label}", len(gone))
            excess -= len(gone)
        return items

    def held(self) -> list[Fact]:
        """Alarms and events that could not be written yet: the uplink publishes them from here."""
        return [f for f in self._pending.facts if f.priority is not Priority.TELEMETRY] if self.disk_full else []

    async def _recovered(self) -> None:
        if self.headroom is not None:
            await self.store.run(self.headroom.hold)
        self.disk_full = False
        shed, self.shed = self.shed, {}
        log.warning("disk space back: writing everything again", shed=shed)
        self.bus.event(Event("store.disk_recovered", "store", Priority.ALARM,
                             {"shed": shed, "clears": "store.disk_full"}, ts=self.clock.time()))

    async def check_cap(self) -> None:
        low = self.headroom is not None and await self.store.run(self.headroom.low)
        if self.disk_full and not self._pending.facts and self.headroom is not None \
                and await self.store.run(self.headroom.roomy):
            await self._recovered()
        elif not self.disk_full and self.headroom is not None and self.headroom.reserve_bytes \
                and not await self.store.run(self.headroom.hold):
            self._enter_full("the reserve is gone and there is no room to make it again", released=False)
        try:
            dropped = await self.store.run(functools.partial(self.store.store.enforce_cap, low_disk=low))
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            return  # deleting needs a little room too: the next check tries again
        if dropped:
            log.warning("telemetry dropped for disk cap", dropped=dropped)
            self.bus.event(Event("store.telemetry_dropped", "store", Priority.EVENT, {"dropped": dropped},
                                 ts=self.clock.time()))
        with contextlib.suppress(Exception):  # pruning is housekeeping: a full disk can wait for it
            await self.store.run(self.store.store.prune)

    async def close(self) -> None:
        await self.flush()
