"""A device polled slower than its interval says so: counted, measured, one event, a clear, a status line.

Time is a ManualClock and the device's read takes its time on that clock, so a 0.31 s poll every
0.1 s is exact: no sleeps, no rates compared against the machine's speed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config
from wiring import wire

from drivers.base import BusConfig, DeviceConfig, Driver
from gateway.bus import LocalBus
from gateway.config import load_config
from gateway.core.data import Event, Quality, Reading, Value
from gateway.core.errors import DeviceTimeout, WriteRefused
from gateway.core.timing import ManualClock
from gateway.daemon import open_store
from gateway.poller import OVERRUN_EVERY, OVERRUN_WINDOW, DevicePoller
from gateway.recorder import AsyncStore

pytestmark = pytest.mark.timeout(60)

INTERVAL = 0.1
SLOW = 0.31
"""A read this long at INTERVAL misses 2.1 slots per poll: the device is polled every 0.31 s."""


class SlowDriver(Driver):
    """A device whose read takes ``took`` seconds of the test's clock; ``fail`` makes it time out instead."""

    def __init__(self, device: DeviceConfig, clock: ManualClock) -> None:
        super().__init__(BusConfig(id="bus-x", driver="test"), [device])
        self.clock = clock
        self.took = SLOW
        self.fail = False
        self.once: float | None = None
        """How long the next read alone takes."""
        self.starts: list[float] = []

    async def close(self) -> None:
        pass

    async def read(self, device: str) -> list[Reading]:
        self.starts.append(self.clock.monotonic())
        took, self.once = self.took if self.once is None else self.once, None
        await self.clock.sleep(took)
        if self.fail:
            raise DeviceTimeout("no answer")
        return [Reading(device, "level", 42.0, "%", Quality.GOOD, self.clock.time())]

    async def write(self, device: str, point: str, value: Value) -> None:
        raise WriteRefused("read-only")


class Tape:
    """Events and the device's stored status as the bus carries them, in order."""

    def __init__(self, bus: LocalBus) -> None:
        self.log: list[tuple[str, Any]] = []
        bus.on_event(lambda ev: self.log.append(("event", ev)))
        bus.on_status(lambda key, value: self.log.append(("meta", value)) if key == "device:slow-1" else None)

    def events(self, *kinds: str) -> list[Event]:
        return [ev for what, ev in self.log if what == "event" and ev.kind in kinds]

    def overruns(self) -> list[Event]:
        return self.events("device.overrun", "device.overrun_cleared")

    def status_after(self, event: Event) -> dict[str, Any]:
        """The device status stored right after an event."""
        at = next(i for i, (what, ev) in enumerate(self.log) if ev is event)
        return next(value for what, value in self.log[at:] if what == "meta")

    def last_status(self) -> dict[str, Any]:
        return next(value for what, value in reversed(self.log) if what == "meta")


@asynccontextmanager
async def polling(bus: LocalBus | None = None, clock: ManualClock | None = None,
                  ) -> AsyncIterator[tuple[DevicePoller, SlowDriver, Tape, ManualClock]]:
    clock = clock or ManualClock()
    bus = bus or LocalBus(clock)
    device = DeviceConfig(id="slow-1", bus="bus-x", interval=INTERVAL)
    driver = SlowDriver(device, clock)
    poller = DevicePoller(driver, device, bus, clock=clock)
    tape = Tape(bus)
    task = asyncio.create_task(poller.run())
    try:
        yield poller, driver, tape, clock
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def gaps(starts: Sequence[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(starts)]


# -- the pace ------------------------------------------------------------------------------------


async def test_a_poll_longer_than_the_interval_is_followed_at_once_and_the_slots_it_covered_are_counted() -> None:
    async with polling() as (poller, driver, _, clock):
        await clock.advance(31.0)
        polls = len(driver.starts)
        # Evenly stretched: every poll starts the moment the one before ends, no catch-up burst, no idle gap.
        assert set(gaps(driver.starts)) == {SLOW}
        assert 99 <= polls <= 101
        assert poller.overruns == int(2.1 * (polls - 1) + 1e-6)  # the last poll has not ended yet
        assert poller.actual == pytest.approx(SLOW)
        assert poller.overrunning


async def test_a_device_that_keeps_up_stays_on_its_grid_and_says_nothing() -> None:
    async with polling() as (poller, driver, tape, clock):
        driver.took = 0.09
        await clock.advance(60.0)
        assert set(gaps(driver.starts)) == {INTERVAL}  # on the grid, not interval + poll time
        assert poller.overruns == 0 and poller.actual == INTERVAL and not poller.overrunning
        assert tape.overruns() == []
        assert tape.last_status()["poll"] == {"interval": INTERVAL, "actual": INTERVAL, "overruns": 0,
                                              "overrunning": False}


async def test_one_long_poll_is_counted_but_is_not_an_overrun() -> None:
    async with polling() as (poller, driver, tape, clock):
        driver.took = 0.05
        await clock.advance(5.0)
        driver.once = 0.35  # one hiccup: 2.5 slots missed
        await clock.advance(20.0)
        assert poller.overruns == 2 and not poller.overrunning
        assert poller.actual == INTERVAL  # the hiccup has left the window
        assert tape.overruns() == []
        assert sorted(set(gaps(driver.starts))) == [INTERVAL, 0.35]


# -- the events ----------------------------------------------------------------------------------


async def test_an_overrun_is_one_event_however_long_it_lasts_and_its_clear_follows_when_it_keeps_up() -> None:
    async with polling() as (poller, driver, tape, clock):
        await clock.advance(10 * 60.0)  # ten minutes behind: one event, not ten
        [raised] = tape.overruns()
        assert (raised.kind, raised.source, raised.priority.label) == ("device.overrun", "slow-1", "event")
        # It is said after OVERRUN_WINDOW polls, each of which missed 2.1 slots.
        assert raised.payload == {"interval": INTERVAL, "actual": SLOW, "missed": int(2.1 * OVERRUN_WINDOW + 1e-6)}
        assert raised.ts - clock.epoch < OVERRUN_WINDOW * SLOW + INTERVAL
        assert tape.status_after(raised)["poll"] == {"interval": INTERVAL, "actual": SLOW, "overruns": 21,
                                                     "overrunning": True}
        assert tape.last_status()["poll"]["overruns"] > 4000  # the counter goes on (stored every 10 s)

        driver.took = 0.02
        await clock.advance(5.0)
        raised, cleared = tape.overruns()
        assert cleared.kind == "device.overrun_cleared" and cleared.source == "slow-1"
        assert cleared.payload["clears"] == "device.overrun"
        assert cleared.payload["missed"] == poller.overruns - 21  # since the overrun event
        assert cleared.payload["interval"] == INTERVAL and cleared.payload["actual"] <= INTERVAL * 1.05
        assert cleared.ts - raised.ts > 590
        status = tape.status_after(cleared)["poll"]
        assert status["overrunning"] is False and status["overruns"] == poller.overruns
        assert not poller.overrunning


async def test_an_overrun_that_comes_back_within_the_minute_is_said_once_the_minute_is_over() -> None:
    async with polling() as (poller, driver, tape, clock):
        await clock.advance(5.0)
        [first] = tape.overruns()
        driver.took = 0.02
        await clock.advance(2.0)
        assert [e.kind for e in tape.overruns()] == ["device.overrun", "device.overrun_cleared"]
        missed_by_then = poller.overruns

        driver.took = SLOW  # behind again, well within the minute of the first event
        first_at = first.ts - clock.epoch
        await clock.advance(first_at + OVERRUN_EVERY - 1.0 - clock.monotonic())
        assert poller.overrunning
        assert len(tape.overruns()) == 2  # rate-limited: not yet
        assert tape.last_status()["poll"]["overrunning"] is True  # but `gateway status` knows it
        await clock.advance(2.0)
        again = tape.overruns()[2]
        assert again.kind == "device.overrun"
        assert first_at + OVERRUN_EVERY <= again.ts - clock.epoch < first_at + OVERRUN_EVERY + SLOW
        # Missed since the last device.overrun: the first episode's tail and all of this one.
        then = tape.status_after(again)["poll"]["overruns"]
        assert again.payload["missed"] == then - tape.status_after(first)["poll"]["overruns"]
        assert again.payload["missed"] > then - missed_by_then > 0


async def test_polls_that_time_out_until_the_device_is_offline_are_not_an_overrun() -> None:
    async with polling() as (poller, driver, tape, clock):
        driver.took, driver.fail = 0.3, True  # each failed poll outlasts the interval
        await clock.advance(3.0)
        assert poller.state.state == "offline"
        driver.took, driver.fail = 0.02, False
        await clock.advance(30.0)  # probed, back, polled on time
        assert poller.state.state == "online"
        assert tape.overruns() == [] and not poller.overrunning
        assert poller.overruns == 6  # three polls, each 2 slots late: counted all the same


# -- `gateway status` ------------------------------------------------------------------------------


async def gateway(*args: str | Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *map(str, args),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode in (0, 1) and out, err.decode()  # 1: no daemon runs, which is so here
    return proc.returncode, out.decode()


async def test_status_names_the_overrunning_device_with_its_figures(tmp_path: Path) -> None:
    config = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=None, buses=[],
                          devices=[])
    store = AsyncStore(open_store(load_config(config)))
    clock = ManualClock()
    bus, recorder = wire(store, clock)
    try:
        async with polling(bus, clock) as (_, driver, tape, clock):
            await clock.advance(200.0)
            await recorder.flush()
            stored = tape.last_status()["poll"]
            assert stored["overrunning"] and stored["overruns"] >= 1000

            _, text = await gateway("status", "-c", config)
            line = f"overrun: slow-1 polls every 0.31 s (configured 0.10 s), {stored['overruns']:,} slots missed"
            assert re.search(rf"^{re.escape(line)}$", text, re.M), text
            assert "," in line  # thousands are grouped
            _, out = await gateway("status", "--json", "-c", config)
            [device] = json.loads(out)["devices"]
            assert device["id"] == "slow-1" and device["overrun"] == stored

            driver.took = 0.02
            await clock.advance(5.0)
            await recorder.flush()
            _, text = await gateway("status", "-c", config)
            assert "overrun:" not in text  # keeping up again: no line, the figures stay in --json
            _, out = await gateway("status", "--json", "-c", config)
            assert json.loads(out)["devices"][0]["overrun"]["overrunning"] is False
    finally:
        await recorder.close()
        store.close()
