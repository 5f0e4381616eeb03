"""The supervisor keeps tasks and poll loops alive; pollers turn field failures into state.

Everything here is real (Store, Recorder, Supervisor, the Modbus driver against the meter
simulator); the only double is ``BuggyDriver``, a stand-in for a *device* whose driver has a bug.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from conftest import Broker, free_ports, until, write_config
from wiring import outbox as sent
from wiring import wire

from drivers.base import BusConfig, DeviceConfig, Driver
from gateway.config import load_config
from gateway.core.data import Quality, Reading, Value
from gateway.core.errors import WriteRefused
from gateway.core.timing import SYSTEM_CLOCK, Clock, ManualClock
from gateway.daemon import build_drivers
from gateway.live import LiveValues
from gateway.poller import DevicePoller
from gateway.recorder import AsyncStore, Recorder
from gateway.store import Store
from gateway.supervisor import Supervisor
from simulators.meter import METER_POINTS, serve_meters

POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS]


@pytest.fixture
async def recorder(tmp_path: Path) -> AsyncIterator[Recorder]:
    store = AsyncStore(Store(tmp_path / "gateway.db", synchronous="normal"))
    _, rec = wire(store)
    writer = asyncio.create_task(rec.run())
    yield rec
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    await rec.close()
    store.close()


async def stored_events(rec: Recorder) -> list[dict[str, Any]]:
    await rec.flush()
    return [ev for _, ev in await rec.store.run(rec.store.store.events_after, 0)]


async def outbox(rec: Recorder) -> list[tuple[str, dict[str, Any]]]:
    await rec.flush()
    return await rec.store.run(sent, rec.store.store)


def meter_config(tmp: Path, ports: list[int], mqtt_port: int | None, *, interval: str = "100ms") -> Path:
    buses = [dict(id=f"bus-{i}", driver="modbus_tcp", host="127.0.0.1", port=p, timeout="300ms")
             for i, p in enumerate(ports)]
    devices = [dict(id=f"meter-{i}", bus=f"bus-{i}", interval=interval, points=POINTS) for i in range(len(ports))]
    return write_config(tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=mqtt_port, buses=buses,
                        devices=devices)


def meter_poller(config: Path, rec: Recorder, device: str = "meter-0", *,
                 clock: Clock = SYSTEM_CLOCK) -> DevicePoller:
    cfg = load_config(config)
    return DevicePoller(build_drivers(cfg)[device], cfg.device(device), rec.bus, clock=clock)


class BuggyDriver(Driver):
    """A device whose driver has a bug: its first ``bugs`` reads raise RuntimeError, then it reads."""

    def __init__(self, bus: BusConfig, devices: Sequence[DeviceConfig], bugs: int) -> None:
        super().__init__(bus, devices)
        self.bugs = bugs
        self.reads = 0

    async def close(self) -> None:
        pass

    async def read(self, device: str) -> list[Reading]:
        self.reads += 1
        if self.reads <= self.bugs:
            raise RuntimeError(f"decoder bug #{self.reads}")
        return [Reading(device, "level", 42.0, "%", Quality.GOOD, time.time())]

    async def write(self, device: str, point: str, value: Value) -> None:
        raise WriteRefused("read-only")


# -- the supervisor ------------------------------------------------------------------------------


async def test_a_crashing_task_restarts_with_growing_backoff_and_each_crash_is_an_event(
        recorder: Recorder) -> None:
    clock = ManualClock()
    supervisor = Supervisor(recorder.bus, min_backoff=0.05, max_backoff=0.2, clock=clock)
    starts: list[float] = []
    ticks = 0

    async def flaky() -> None:
        starts.append(clock.monotonic())
        raise RuntimeError(f"boom {len(starts)}")

    async def steady() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await clock.sleep(0.01)

    supervisor.spawn("flaky", flaky)
    supervisor.spawn("steady", steady)
    try:
        while len(starts) < 6:
            await clock.advance(0.01)
    finally:
        await supervisor.stop()
    crashes = len(starts)

    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Nominal 0.05, 0.1, 0.2, then capped at 0.2; each ±20 % jitter, to the clock's 10 ms step.
    assert 0.04 <= gaps[0] <= 0.07 and 0.08 <= gaps[1] <= 0.13 and 0.16 <= gaps[2] <= 0.25, gaps
    assert all(0.16 <= gap <= 0.25 for gap in gaps[3:]), gaps  # capped (uncapped it would be >= 0.32)
    assert supervisor.restarts == {"flaky": crashes}
    assert ticks >= round(starts[-1] / 0.01)  # the sibling task ran every tick, untouched

    events = await stored_events(recorder)
    assert [(e["kind"], e["source"], e["priority"]) for e in events] == [
        ("gateway.task_crashed", "flaky", "event")] * crashes
    assert [e["data"]["restarts"] for e in events] == list(range(1, crashes + 1))
    assert [e["data"]["restart_in"] for e in events][:5] == [0.05, 0.1, 0.2, 0.2, 0.2]
    for n, e in enumerate(events, 1):
        assert e["data"]["error"] == f"RuntimeError('boom {n}')"
        assert f"RuntimeError: boom {n}" in e["data"]["trace"]
    sent = await outbox(recorder)
    assert [t for t, _ in sent] == ["event/gateway.task_crashed"] * crashes
    assert [m["id"] for _, m in sent] == [e["id"] for e in events]  # what the platform gets is the log


async def test_a_task_that_was_healthy_for_long_restarts_quickly_again(recorder: Recorder) -> None:
    clock = ManualClock()
    supervisor = Supervisor(recorder.bus, min_backoff=0.01, max_backoff=0.05, clock=clock)
    runs = 0

    async def sometimes_long() -> None:
        nonlocal runs
        runs += 1
        if runs == 5:
            await clock.sleep(0.6)  # healthy for longer than 10 x max_backoff
        raise RuntimeError(f"run {runs}")

    supervisor.spawn("worker", sometimes_long)
    try:
        while runs < 7:
            await clock.advance(0.005)
    finally:
        await supervisor.stop()
    delays = [e["data"]["restart_in"] for e in await stored_events(recorder)]
    assert delays[:6] == [0.01, 0.02, 0.04, 0.05, 0.01, 0.02], delays


async def test_a_poll_loop_whose_driver_raises_is_restarted_and_other_devices_keep_polling(
        tmp_path: Path, recorder: Recorder) -> None:
    """Time is stepped one poll slot at a time: the meter must be polled in every slot, through its
    neighbour's four crashes and restarts."""
    clock = ManualClock()
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    try:
        meter = meter_poller(meter_config(tmp_path, server.ports, None), recorder, clock=clock)
        device = DeviceConfig(id="tank-1", bus="bus-x", interval=0.1)
        buggy = DevicePoller(BuggyDriver(BusConfig(id="bus-x", driver="test"), [device], bugs=4), device,
                             recorder.bus, clock=clock)
        meter_polls_at_crash: list[int] = []
        recorder.bus.on_event(lambda ev: meter_polls_at_crash.append(meter.state.polls)
                              if ev.kind == "gateway.task_crashed" else None)
        supervisor = Supervisor(recorder.bus, min_backoff=0.05, max_backoff=0.2, clock=clock)
        supervisor.spawn("device:meter-0", meter.run)
        slots = 0

        async def slot() -> None:  # one poll period; the meter's poll in it completes over real TCP
            nonlocal slots
            before = meter.state.polls
            await clock.advance(0.1)
            slots += 1
            await until(lambda: meter.state.polls > before, within=10)

        try:
            for _ in range(2):
                await slot()
            supervisor.spawn("device:tank-1", buggy.run)
            while not (buggy.state.state == "online" and buggy.state.polls >= 3):
                assert slots < 200, "the buggy device never came back"
                await slot()
            meter_polls_before = meter.state.polls
            for _ in range(5):
                await slot()
        finally:
            await supervisor.stop()
    finally:
        await server.close()

    assert supervisor.restarts == {"device:tank-1": 4}  # the meter's loop never crashed
    assert meter.state.state == "online"
    # The meter polled on through its neighbour's crashes and after them, in every slot.
    assert len(meter_polls_at_crash) == 4 and meter_polls_at_crash[-1] > meter_polls_at_crash[0] >= 2
    assert meter.state.polls == meter_polls_before + 5
    assert meter.state.polls == slots, (meter.state.polls, slots)
    events = await stored_events(recorder)
    crashed = [e for e in events if e["kind"] == "gateway.task_crashed"]
    assert [e["source"] for e in crashed] == ["device:tank-1"] * 4
    assert [e["data"]["error"] for e in crashed] == [f"RuntimeError('decoder bug #{n}')" for n in range(1, 5)]
    assert not [e for e in events if e["kind"].startswith("device.")]  # a bug is not a field failure
    latest = {p["level"]["v"] for _, m in await outbox(recorder) if m["type"] == "telemetry" and m["device"] == "tank-1"
              for p in [m["points"]] if p["level"]["q"] == "good"}
    assert latest == {42.0}


# -- the device poller ---------------------------------------------------------------------------


async def test_offline_and_back_gives_one_event_each_and_bad_points_meanwhile(
        tmp_path: Path, recorder: Recorder) -> None:
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    poller = meter_poller(meter_config(tmp_path, server.ports, None, interval="100ms"), recorder)
    live = LiveValues(recorder.bus)
    supervisor = Supervisor(recorder.bus, min_backoff=0.05, max_backoff=0.2)
    supervisor.spawn("device:meter-0", poller.run)
    try:
        await until(lambda: poller.state.state == "online" and poller.state.polls >= 3)
        good_polls = poller.state.polls

        await server.stop_one(0)
        await until(lambda: poller.state.state == "offline")
        assert poller.state.error and poller.state.error.startswith("DeviceUnreachable")
        await recorder.flush()
        latest = list(live.latest["meter-0"].values())
        assert sorted(r.point for r in latest) == sorted(p["id"] for p in POINTS)
        assert all(r.quality is Quality.BAD and r.value is None for r in latest), latest
        await asyncio.sleep(1.5)  # stays down through more failed attempts: still one outage
        assert poller.state.state == "offline"

        await server.start_one(0)
        await until(lambda: poller.state.state == "online")
        back = poller.state.polls
        await until(lambda: poller.state.polls >= back + 3)
    finally:
        await supervisor.stop()
        await poller.driver.close()
        await server.close()

    assert not supervisor.restarts  # an outage is state, not a crash
    assert poller.state.error is None and poller.state.failures >= 2
    events = await stored_events(recorder)
    assert [(e["kind"], e["source"]) for e in events] == [("device.offline", "meter-0"), ("device.online", "meter-0")]
    assert events[0]["data"]["error"].startswith("DeviceUnreachable")
    assert events[1]["data"]["offline_for"] >= 1.5
    latest = list(live.latest["meter-0"].values())
    assert all(r.quality is Quality.GOOD for r in latest)

    sent = await outbox(recorder)
    assert [t for t, _ in sent if t.startswith("event/")] == ["event/device.offline", "event/device.online"]
    telemetry = [m for t, m in sent if t == "telemetry/meter-0"]
    all_bad = [i for i, m in enumerate(telemetry) if all(p["q"] == "bad" for p in m["points"].values())]
    assert len(all_bad) == 1 and all_bad[0] >= good_polls, all_bad  # one "bad" snapshot marks the outage
    assert all(p["q"] == "good" for m in telemetry[all_bad[0] + 1:] for p in m["points"].values())
    [state] = await recorder.store.run(recorder.store.store.devices)
    assert (state.state, state.polls, state.failures) == ("online", poller.state.polls, poller.state.failures)


# -- the daemon process --------------------------------------------------------------------------


def _db_row(db: Path, query: str) -> Any:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute(query).fetchone()
    except sqlite3.OperationalError:
        return None  # not created yet


async def test_sigterm_exits_0_leaves_a_retained_offline_and_a_stopped_event(tmp_path: Path,
                                                                            broker: Broker) -> None:
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    config = meter_config(tmp_path, server.ports, broker.port, interval="200ms")
    db = tmp_path / "data" / "gateway.db"
    log = (tmp_path / "gateway.log").open("wb")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(config),
                                                stdout=log, stderr=log)
    try:
        def up() -> bool:
            daemon = _db_row(db, "SELECT value FROM meta WHERE key = 'daemon'")
            uplink = _db_row(db, "SELECT value FROM meta WHERE key = 'uplink'")
            delivered = _db_row(db, "SELECT value FROM counters WHERE name = 'uplink.delivered'")
            return bool(daemon and json.loads(daemon[0])["pid"] == proc.pid and uplink
                        and json.loads(uplink[0])["state"] == "connected" and delivered and delivered[0] > 0)

        await until(up, within=30)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0, (tmp_path / "gateway.log").read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
        await server.close()

    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="late-subscriber") as client:
        await client.subscribe("community/test-site/status", qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(client.messages))
    assert message.retain
    assert isinstance(message.payload, bytes)
    assert json.loads(message.payload)["state"] == "offline"

    with sqlite3.connect(db) as conn:
        kinds = [k for (k,) in conn.execute("SELECT kind FROM events ORDER BY seq")]
        daemon = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'daemon'").fetchone()[0])
        left = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    assert kinds[0] == "gateway.started" and kinds[-1] == "gateway.stopped"
    assert daemon["state"] == "stopped" and daemon["pid"] == proc.pid
    assert left == 0  # with the broker up, a clean stop delivers what was queued before saying goodbye
