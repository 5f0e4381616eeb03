"""The single writer between the bus and the disk.

It subscribes to the bus and commits what it hears in batches (one transaction per flush) on the
store's own thread, so a slow SD card never delays a poll and SQLite sees a handful of commits a
second instead of thousands. Alarms, alarm state and audit entries skip the batching delay: they
are committed and handed to the uplink at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from gateway.bus import LocalBus
from gateway.core.data import DeviceState, Event, Priority, Reading
from gateway.core.timing import SYSTEM_CLOCK, Clock
from gateway.store import Batch, Outgoing, Store

log = structlog.get_logger("gateway.recorder")
T = TypeVar("T")


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
                 cap_check_interval: float = 5.0, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.bus = bus
        self.clock = clock
        self.flush_interval = flush_interval
        self.cap_check_interval = cap_check_interval
        self.committed = asyncio.Event()
        """Set after every commit that added outbox messages; the uplink waits on it."""
        self._pending = Batch()
        self._wake = asyncio.Event()
        self._urgent = False
        bus.on_readings(self._readings)
        bus.on_event(self._event)
        bus.on_device_state(self._device_state)
        bus.on_alarm_state(self._alarm_state)
        bus.on_raw(self._raw)
        bus.on_audit(self._audit)
        bus.on_status(self._meta)

    # -- what the bus hands over (never blocks) --------------------------------------------------

    def outgoing(self, message: Outgoing) -> None:
        """A message bound upstream, committed to the outbox with the batch it belongs to."""
        self._pending.outgoing.append(message)
        if message.priority is Priority.ALARM:
            self._urgent = True
        self._wake.set()

    def _readings(self, device: str, readings: list[Reading], ts: float) -> None:
        self._pending.snapshots.append((device, ts, readings))
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
        while True:
            await self._wake.wait()
            if not self._urgent:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval):
                        while not self._urgent:  # an alarm arriving mid-wait cuts the wait short
                            self._wake.clear()
                            await self._wake.wait()
            await self.flush()
            now = self.clock.monotonic()
            if now - last_cap_check >= self.cap_check_interval:
                last_cap_check = now
                await self.check_cap()

    async def flush(self) -> None:
        batch, self._pending, self._urgent = self._pending, Batch(), False
        self._wake.clear()
        if not batch:
            return
        try:
            await self.store.run(self.store.store.commit, batch)
        except BaseException:
            # Disk full, an I/O error, a cancel mid-commit: the transaction rolled back, so the batch
            # goes back in front of whatever arrived since, to be committed by the next flush.
            self._pending = batch.then(self._pending)
            self._urgent = self._urgent or any(o.priority is Priority.ALARM for o in batch.outgoing)
            self._wake.set()
            raise
        if batch.outgoing:
            self.committed.set()

    async def check_cap(self) -> None:
        dropped = await self.store.run(self.store.store.enforce_cap)
        if dropped:
            log.warning("telemetry dropped for disk cap", dropped=dropped)
            self.bus.event(Event("store.telemetry_dropped", "store", Priority.EVENT, {"dropped": dropped},
                                 ts=self.clock.time()))
        await self.store.run(self.store.store.prune)

    async def close(self) -> None:
        await self.flush()
