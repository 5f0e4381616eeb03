"""Health upstream and the clock watch (gateway.health): a live daemon's health reaches a real Mosquitto with the
essentials, on its interval, valid against contract v2; the clock synchronising is said once, with the step."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
from conftest import Broker, Collector, free_ports, running, until, write_config

from gateway.clocksync import clock_synced
from gateway.config import load_config
from gateway.core.timing import ManualClock, SystemClock
from gateway.daemon import Daemon
from gateway.health import ClockWatch
from gateway.metrics import exposition
from gateway.northbound.contract import parse, upstream_schema
from simulators.meter import METER_POINTS, serve_black_holes, serve_meters

POINTS = [{k: v for k, v in p.items() if v is not None} for p in METER_POINTS[:4]]
VALIDATOR = jsonschema.Draft202012Validator(upstream_schema())
ROOT = "community/test-site"


class SteppedClock(SystemClock):
    """The real clock, whose wall time a test steps as NTP would (the monotonic clock does not move with it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset


def valid(message: dict[str, Any]) -> None:
    assert [e.message for e in VALIDATOR.iter_errors(message)] == []
    parse(message)


async def test_the_clock_watch_says_when_readings_were_stamped_unsynchronised() -> None:
    clock = ManualClock(start=100.0)
    synced: list[bool | None] = [False]
    started = clock.time() - 2.0  # the daemon started a moment before the first probe
    watch = ClockWatch(clock, lambda: synced[0], started)
    assert watch.check() is None and watch.synced is False
    await clock.advance(30)
    assert watch.check() is None
    clock.epoch += 86_400.25  # NTP steps the wall clock a day and a quarter second forward
    await clock.advance(5)
    synced[0] = True
    data = watch.check()
    assert data == {"since": started, "until": clock.time() - 86_400.25, "step_s": 86_400.25,
                    "unsynced_for_s": 37.0}
    assert watch.check() is None  # said once
    synced[0] = None  # nobody can tell any more: not "unsynchronised"
    await clock.advance(5)
    assert watch.check() is None and watch.synced is None
    synced[0] = True
    assert watch.check() is None


async def test_a_pi_whose_clock_state_nobody_can_tell_until_it_syncs_says_since_the_start() -> None:
    """ProtectClock refuses adjtimex and timesyncd has not written anything yet: "cannot tell" until the first sync
    counts as unsynchronised since the start."""
    clock = ManualClock(start=100.0)
    synced: list[bool | None] = [None]
    watch = ClockWatch(clock, lambda: synced[0], clock.time() - 1.0)
    assert watch.check() is None and watch.synced is None
    await clock.advance(20)
    clock.epoch += 3 * 86_400  # the network time arrives: three days forward
    synced[0] = True
    data = watch.check()
    assert data is not None and data["step_s"] == 3 * 86_400 and data["since"] == watch.started
    assert data["unsynced_for_s"] == 21.0
    synced[0] = None  # after a sync, "cannot tell" is not "unsynchronised"
    await clock.advance(5)
    assert watch.check() is None
    synced[0] = True
    assert watch.check() is None


async def test_a_right_clock_confirmed_soon_is_no_event_but_a_long_spell_is() -> None:
    clock = ManualClock(start=100.0)
    synced: list[bool | None] = [False]
    watch = ClockWatch(clock, lambda: synced[0], clock.time())
    watch.check()
    await clock.advance(30)
    synced[0] = True
    assert watch.check() is None  # a step of 0.0 after 30 s: a machine with a good clock, confirmed
    assert watch.quiet is not None and watch.quiet["step_s"] == 0.0
    synced[0] = False  # unsynchronised again, for longer than QUIET_SPELL: its timestamps were unverified
    watch.check()
    await clock.advance(ClockWatch.QUIET_SPELL + 5)
    synced[0] = True
    data = watch.check()
    assert data is not None and data["step_s"] == 0.0 and data["unsynced_for_s"] >= ClockWatch.QUIET_SPELL


def test_timesyncd_running_without_its_flag_means_unsynchronised(tmp_path: Path) -> None:
    """Under ProtectClock the kernel cannot be asked (None): timesyncd's directory without the flag is False, the
    flag True, neither None; the kernel's own answer wins when it has one."""
    run = tmp_path / "timesync"
    flag = run / "synchronized"
    assert clock_synced(flag, kernel=lambda: None) is None
    assert clock_synced(flag, kernel=lambda: False) is False
    run.mkdir()
    assert clock_synced(flag, kernel=lambda: None) is False
    assert clock_synced(flag, kernel=lambda: True) is True
    flag.touch()
    assert clock_synced(flag, kernel=lambda: None) is True and clock_synced(flag, kernel=lambda: False) is True
    assert clock_synced() in (True, False, None)  # this machine's, whatever it is


def test_the_clock_metric_is_0_when_known_unsynchronised_and_nan_only_when_nobody_can_tell() -> None:
    def metric(synced: bool | None) -> float:
        text = exposition({"clock_synced": synced}).decode()
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("gateway_clock_synced ")))

    assert metric(False) == 0 and metric(True) == 1 and math.isnan(metric(None))


async def test_a_clock_synchronised_from_the_start_is_never_news() -> None:
    clock = ManualClock()
    watch = ClockWatch(clock, lambda: True, clock.time())
    for _ in range(3):
        assert watch.check() is None
        await clock.advance(5)
    unknown = ClockWatch(clock, lambda: None, clock.time())
    assert unknown.check() is None and unknown.synced is None


def health(collector: Collector) -> list[dict[str, Any]]:
    return [m for t, m in collector.messages if t == f"{ROOT}/health"]


def births(collector: Collector) -> list[dict[str, Any]]:
    return [m for t, m in collector.messages if t == f"{ROOT}/status" and m.get("state") == "online"]


async def test_health_reaches_the_broker_on_its_interval_and_the_clock_sync_is_said(
        tmp_path: Path, broker: Broker, collector: Collector) -> None:
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    hole = await serve_black_holes("127.0.0.1", free_ports(1), count=1)
    buses = [dict(id="bus-0", driver="modbus_tcp", host="127.0.0.1", port=server.ports[0], timeout="300ms"),
             dict(id="bus-1", driver="modbus_tcp", host="127.0.0.1", port=hole.ports[0], timeout="300ms")]
    devices = [dict(id="meter-0", bus="bus-0", interval="200ms", points=POINTS),
               dict(id="dead-1", bus="bus-1", interval="200ms", points=POINTS)]
    path = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=broker.port, buses=buses,
                        devices=devices, extra='\n[web]\nenabled = false\n\n[health]\ninterval = "1s"\n')
    synced: list[bool | None] = [False]
    clock = SteppedClock()
    daemon = Daemon(load_config(path), clock=clock)
    daemon.observer.clock_probe = lambda: synced[0]  # a Pi without RTC, before the network time arrives
    try:
        async with running(daemon):
            # the first health comes at the connect (the dead device may not be offline yet), the next an interval
            # later
            await until(lambda: len(health(collector)) >= 2 and health(collector)[-1]["devices"]["offline"] == 1,
                        within=25)
            first, later = health(collector)[0], health(collector)[-1]
            for message in health(collector):
                valid(message)
            assert later["ts"] - first["ts"] >= 1 - 0.5  # not before its interval (a tick is 50 ms)
            assert later["interval_s"] == 1.0 and later["clock_synced"] is False
            assert later["devices"] == {"total": 2, "online": 1, "offline": 1, "unknown": 0,
                                        "offline_ids": ["dead-1"]}
            assert set(later["outbox"]) == {"alarm", "event", "telemetry"}
            assert later["uplinks"]["mqtt"]["state"] == "connected" and later["uplinks"]["mqtt"]["connects"] == 1
            assert later["alarms"] == {"active": 0, "unacknowledged": 0}
            process = later["process"]
            assert process["rss_bytes"] > 10 * 2**20 and process["store_bytes"] > 0
            assert process["disk_free_bytes"] > 0 and "cpu_percent" in process and "cpu_percent" not in first["process"]
            assert later["bdseq"] == births(collector)[-1]["bdseq"]
            assert births(collector)[-1]["clock_synced"] is False

            # retained: a platform that connects late finds the latest one at once
            late = Collector(broker.port, f"{ROOT}/health")
            await late.start()
            try:
                await late.wait_for(lambda: late.messages)
                assert late.messages[0][1]["type"] == "health"
            finally:
                await late.stop()

            # the network time arrives and steps the clock an hour forward: one event says since when readings
            # were stamped on the unsynced clock, the birth is said again with the new state, and so is the next
            # health
            clock.offset += 3600
            synced[0] = True
            await until(lambda: [m for t, m in collector.messages if t == f"{ROOT}/event/clock.synchronized"])
            event = next(m for t, m in collector.messages if t == f"{ROOT}/event/clock.synchronized")
            valid(event)
            assert event["data"]["since"] == round(daemon.started, 3)
            assert abs(event["data"]["step_s"] - 3600) < 1
            assert event["data"]["until"] <= event["ts"] + 1 and event["data"]["unsynced_for_s"] >= 1
            await until(lambda: births(collector)[-1]["clock_synced"] is True)
            await until(lambda: health(collector)[-1]["clock_synced"] is True, within=20)
            assert len([m for t, m in collector.messages if t == f"{ROOT}/event/clock.synchronized"]) == 1
            assert all(m.get("type") != "health" for t, m in collector.messages if t != f"{ROOT}/health")

            # the broker restarts (its retained messages gone): the reconnected gateway says its health again
            broker.stop()
            uplink = daemon.uplinks["mqtt"]
            await until(lambda: uplink.status.state == "disconnected")
            broker.start()
            await until(lambda: health(collector)[-1]["uplinks"]["mqtt"]["connects"] == 2, within=20)
            valid(health(collector)[-1])
        # a clean stop clears the retained health before the goodbye: no picture of a running gateway stays
        await until(lambda: health(collector)[-1] == {})
        assert await retained_health(broker) == []
    finally:
        await server.close()
        await hole.close()


async def retained_health(broker: Broker) -> list[dict[str, Any]]:
    """What a platform connecting now finds retained on the health topic (a marker published after subscribing
    arrives after every retained message, so "nothing" needs no waiting on the clock)."""
    late = Collector(broker.port, f"{ROOT}/health/#")
    await late.start()
    try:
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="marker") as marker:
            await marker.publish(f"{ROOT}/health/~marker", b"{}", qos=1)
        await late.wait_for(lambda: any(t.endswith("/~marker") for t, _ in late.messages))
        return [m for t, m in late.messages if t == f"{ROOT}/health"]
    finally:
        await late.stop()


async def test_health_can_be_turned_off_and_the_clock_is_still_watched(tmp_path: Path, broker: Broker,
                                                                        collector: Collector) -> None:
    server = await serve_meters("127.0.0.1", free_ports(1), count=1)
    buses = [dict(id="bus-0", driver="modbus_tcp", host="127.0.0.1", port=server.ports[0], timeout="300ms")]
    devices = [dict(id="meter-0", bus="bus-0", interval="200ms", points=POINTS)]
    path = write_config(tmp_path / "gateway.toml", data_dir=tmp_path / "data", mqtt_port=broker.port, buses=buses,
                        devices=devices, extra='\n[web]\nenabled = false\n\n[health]\nenabled = false\n'
                                                     'interval = "1s"\n')  # the clock probed every second
    synced: list[bool | None] = [False]
    clock = SteppedClock()
    daemon = Daemon(load_config(path), clock=clock)
    daemon.observer.clock_probe = lambda: synced[0]
    try:
        async with running(daemon):
            await until(lambda: births(collector) and daemon.pollers["meter-0"].state.polls >= 3)
            clock.offset -= 90  # the clock was ahead
            synced[0] = True
            await until(lambda: [m for t, m in collector.messages if t == f"{ROOT}/event/clock.synchronized"])
            assert health(collector) == []
    finally:
        await server.close()
