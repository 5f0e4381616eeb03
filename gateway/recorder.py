"""The single writer between the field and the disk.

Poll tasks hand their readings and events to the recorder without waiting; the recorder commits
them in batches (one transaction per flush) on the store's own thread, so a slow SD card never
delays a poll and SQLite sees a handful of commits a second instead of thousands. Alarms skip the
batching delay: they are committed and handed to the uplink at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from gateway import upstream
from gateway.core.data import Event, Priority, Reading
from gateway.store import Batch, DeviceState, Store
from rules.report import Reporter

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
    def __init__(self, store: AsyncStore, *, flush_interval: float = 0.05, cap_check_interval: float = 5.0,
                 reporter: Reporter | None = None) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.cap_check_interval = cap_check_interval
        self.reporter = reporter or Reporter()
        self.committed = asyncio.Event()
        """Set after every commit that added outbox messages; the uplink waits on it."""
        self._pending = Batch()
        self._wake = asyncio.Event()
        self._urgent = False
        self._listeners: list[Callable[[Event], None]] = []
        self._snapshot_listeners: list[Callable[[str, list[Reading]], None]] = []

    # -- called by poll tasks (never block) ------------------------------------------------------

    def snapshot(self, device: str, readings: list[Reading], ts: float | None = None) -> None:
        ts = time.time() if ts is None else ts
        self._pending.snapshots.append((device, ts, readings))
        upward = self.reporter.offer(device, readings, ts)
        if upward:
            self._pending.outgoing.append(upstream.telemetry(device, ts, upward))
        for listener in self._snapshot_listeners:
            listener(device, readings)
        self._wake.set()

    def event(self, ev: Event) -> None:
        self._pending.events.append(ev)
        self._pending.outgoing.append(upstream.event(ev))
        if ev.priority is Priority.ALARM:
            self._urgent = True
        for listener in self._listeners:
            listener(ev)
        self._wake.set()

    def device_state(self, state: DeviceState) -> None:
        self._pending.devices[state.id] = state
        self._wake.set()

    def raw(self, device: str, ts: float, data: bytes, parsed: dict[str, Any] | None) -> None:
        self._pending.raw_lines.append((device, ts, data, parsed))
        self._wake.set()

    def audit(self, action: str, data: dict[str, Any]) -> None:
        """Who did what to which device: kept locally for good, and urgent enough to commit now."""
        self._pending.audit.append((time.time(), action, data))
        self._urgent = True
        self._wake.set()

    def meta(self, key: str, value: Any) -> None:
        self._pending.meta[key] = value
        self._wake.set()

    def on_event(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def on_snapshot(self, listener: Callable[[str, list[Reading]], None]) -> None:
        self._snapshot_listeners.append(listener)

    def alarm_state(self, key: str, record: dict[str, Any]) -> None:
        """An alarm's whole state, persisted with the transition that changed it (same transaction)."""
        self._pending.alarms[key] = record
        self._urgent = True
        self._wake.set()

    # -- the writer task -------------------------------------------------------------------------

    async def run(self) -> None:
        last_cap_check = 0.0
        while True:
            await self._wake.wait()
            if not self._urgent:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval):
                        while not self._urgent:  # an alarm arriving mid-wait cuts the wait short
                            self._wake.clear()
                            await self._wake.wait()
            await self.flush()
            for summary in self.reporter.due(time.time()):
                self._pending.outgoing.append(upstream.summary(summary))
            now = time.monotonic()
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
            self.event(Event("store.telemetry_dropped", "store", Priority.EVENT, {"dropped": dropped}))
        await self.store.run(self.store.store.prune)

    async def close(self) -> None:
        await self.flush()
