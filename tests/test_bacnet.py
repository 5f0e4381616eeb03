"""BACnet/IP end to end: the simulator (bacpypes3's server side) <-> the driver, the daemon and the tools.

Every application gets its own UDP port on 127.0.0.1 and is addressed by unicast: bacpypes3 takes
any 127.x address on its own port for itself, and broadcasts do not cross ports on loopback. The
broadcast Who-Is is tested between two network namespaces (root only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import running, until, write_config

from drivers.bacnet.config import BacnetBus, BacnetDevice
from drivers.bacnet.driver import BacnetDriver
from gateway.commands import CommandError, WriteCommand
from gateway.config import load_config
from gateway.core.data import Event, Quality, Reading
from gateway.core.errors import BadResponse, DeviceTimeout, DeviceUnreachable, ExceptionResponse
from gateway.daemon import Daemon
from simulators.bacnet import SimulatedDevice, serve_bacnet

MODES = {1: "off", 2: "auto", 3: "manual"}
POINTS: list[dict[str, Any]] = [
    {"id": "temperature", "object": "analog-input:1"},
    {"id": "co2", "object": "ai:2"},
    {"id": "pressure", "object": "analog-input:3", "unit": "bar(g)"},
    {"id": "pump", "object": "binary-input:1", "on_change": "event"},
    {"id": "damper", "object": "bi:2"},
    {"id": "mode", "object": "multi-state-value:1", "states": MODES, "writable": True},
    {"id": "valve", "object": "analog-output:1", "writable": True, "min": 0, "max": 100, "write_priority": 9},
]


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def plant(port: int | None = None, instance: int = 1001, **kwargs: Any) -> AsyncIterator[SimulatedDevice]:
    sim = await serve_bacnet(f"127.0.0.1:{port or udp_port()}", instance, tick=0, **kwargs)
    try:
        yield sim
    finally:
        await sim.close()


def make_driver(sim: SimulatedDevice, points: list[dict[str, Any]] | None = None, **device: Any) -> BacnetDriver:
    bus = BacnetBus(id="bacnet", driver="bacnet_ip", bind=f"127.0.0.1:{udp_port()}", instance=999,
                    timeout=0.3, retries=0)
    dev = BacnetDevice.model_validate({"id": "plant", "bus": "bacnet", "address": f"127.0.0.1:{sim.port}",
                                       "device_instance": 1001, "points": POINTS if points is None else points,
                                       **device})
    return BacnetDriver(bus, [dev])


@contextlib.asynccontextmanager
async def driving(driver: BacnetDriver) -> AsyncIterator[BacnetDriver]:
    try:
        yield driver
    finally:
        await driver.close()


class Sink:
    def __init__(self) -> None:
        self.pushed: list[Reading] = []

    def readings(self, device: str, readings: list[Reading]) -> None:
        self.pushed += readings

    def event(self, event: Event) -> None:
        pass

    def raw(self, device: str, ts: float, data: bytes, parsed: dict[str, Any] | None) -> None:
        pass

    def last(self, point: str) -> Reading | None:
        return next((r for r in reversed(self.pushed) if r.point == point), None)


@contextlib.asynccontextmanager
async def streaming(driver: BacnetDriver, sink: Sink) -> AsyncIterator[None]:
    task = asyncio.create_task(driver.stream(sink))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def covered(driver: BacnetDriver) -> set[str]:
    """Points the driver leaves out of polls because a live subscription feeds them."""
    return {p.id for p in driver.devices["plant"].points if driver.cov.covers("plant", p)}


def values(readings: list[Reading]) -> dict[str, tuple[Any, str | None, str]]:
    return {r.point: (r.value, r.unit, r.quality.value) for r in readings}


# -- reads ---------------------------------------------------------------------------------------


async def test_reads_are_batched_with_read_property_multiple() -> None:
    async with plant() as sim, driving(make_driver(sim)) as driver:
        first = values(await driver.read("plant"))
        assert first == {
            "temperature": (21.5, "°C", "good"), "co2": (620.0, "ppm", "good"), "pressure": (3.2, "bar(g)", "good"),
            "pump": (True, None, "good"), "damper": (False, None, "good"), "mode": ("auto", None, "good"),
            "valve": (0.0, "%", "good"),
        }
        # identify (one ReadProperty of the device object) + units, then one request per poll
        assert sim.app.requests == {"ReadPropertyRequest": 1, "ReadPropertyMultipleRequest": 2}
        sim.flags("analog-input:2", fault=True)
        sim.flags("analog-input:1", in_alarm=True)
        sim.flags("binary-input:2", out_of_service=True)
        second = values(await driver.read("plant"))
        assert sim.app.requests["ReadPropertyMultipleRequest"] == 3
    assert second["co2"] == (620.0, "ppm", "bad")  # fault: value kept for people, bad for rules
    assert second["damper"] == (False, None, "bad")
    assert second["temperature"] == (21.5, "°C", "good")  # in alarm, but a true value


async def test_falls_back_to_read_property() -> None:
    async with plant() as sim, driving(make_driver(sim)) as driver:
        sim.app.read_multiple = False  # and says so in protocol-services-supported
        assert values(await driver.read("plant"))["mode"] == ("auto", None, "good")
        assert sim.app.requests["ReadPropertyMultipleRequest"] == 0
    async with plant() as sim, driving(make_driver(sim, read_multiple=True)) as driver:
        sim.app.read_multiple = False  # claimed by the config, rejected by the device: fall back for good
        for _ in range(2):
            assert values(await driver.read("plant"))["temperature"] == (21.5, "°C", "good")
        assert sim.app.requests["ReadPropertyMultipleRequest"] == 1
        assert sim.app.requests["ReadPropertyRequest"] > 2 * 2 * len(POINTS)  # value + status flags, twice


async def test_too_big_replies_are_asked_for_in_smaller_batches() -> None:
    async with plant(analog_inputs=20) as sim:
        points = [{"id": f"s{i}", "object": f"analog-input:{100 + i}"} for i in range(20)]
        async with driving(make_driver(sim, points, read_multiple_objects=16)) as driver:
            sim.app.max_read_multiple_objects = 5
            readings = await driver.read("plant")
            assert [r.value for r in readings] == [float(i) for i in range(20)]
            assert driver.contacts["plant"].batch == 4
            asked = sim.app.requests["ReadPropertyMultipleRequest"]
            await driver.read("plant")
            assert sim.app.requests["ReadPropertyMultipleRequest"] - asked == 5  # 20 objects, 4 at a time


async def test_hostile_and_odd_answers_are_bad_readings_or_typed_errors() -> None:
    odd = [
        {"id": "name", "object": "ai:1", "property": "object-name"},
        {"id": "flags", "object": "ai:1", "property": "status-flags"},
        {"id": "array", "object": "ao:1", "property": "priority-array"},  # constructed: not a reading
        {"id": "missing", "object": "ai:77"},
        {"id": "vendor", "object": "130:1"},
        {"id": "units", "object": "ai:1", "property": "units"},
    ]
    async with plant() as sim, driving(make_driver(sim, odd)) as driver:
        got = values(await driver.read("plant"))
        assert got == {"name": ("Room Temperature", None, "good"), "flags": ("0000", None, "good"),
                       "array": (None, None, "bad"), "missing": (None, None, "bad"),
                       "vendor": (None, None, "bad"), "units": (62, None, "good")}
    async with plant() as sim, driving(make_driver(sim, POINTS[:3], read_multiple=False)) as driver:
        sim.app.garble = {"analog-input:2"}  # a reply of the wrong kind for one object
        assert [r.quality.value for r in await driver.read("plant")] == ["good", "bad", "good"]
        sim.app.garble = {"analog-input:1", "analog-input:2", "analog-input:3"}
        with pytest.raises(BadResponse, match="SimpleAckPDU in reply to ReadProperty"):
            await driver.read("plant")  # nothing it says makes sense: a failed poll
    async with plant() as sim, driving(make_driver(sim)) as driver:
        await driver.read("plant")
        sim.app.garble_read_multiple = True
        with pytest.raises(BadResponse, match="in reply to ReadPropertyMultiple"):
            await driver.read("plant")
    async with plant() as sim, driving(make_driver(sim, device_instance=4242)) as driver:
        with pytest.raises(ExceptionResponse, match="is not device 4242"):
            await driver.read("plant")
    async with plant() as sim:
        driver = make_driver(sim, [{"id": "ghost", "object": "ao:9", "writable": True}])
        async with driving(driver):
            with pytest.raises(ExceptionResponse, match="unknown-object"):
                await driver.write("plant", "ghost", 1.0)
        await sim.close()
        async with driving(make_driver(sim)) as silent:
            started = time.monotonic()
            with pytest.raises(DeviceTimeout):
                await silent.read("plant")
            assert time.monotonic() - started < 1.5
            assert not await silent.probe("plant")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blocker:  # another program holds our port
            blocker.bind(("127.0.0.1", 0))
            taken = make_driver(sim)
            taken.bus = taken.bus.model_copy(update={"bind": f"127.0.0.1:{blocker.getsockname()[1]}"})
            with pytest.raises(DeviceUnreachable, match=r"cannot bind .* [Aa]ddress already in use"):
                await taken.read("plant")


# -- change of value ----------------------------------------------------------------------------


async def test_cov_updates_arrive_without_polling(tmp_path: Path) -> None:
    async with plant() as sim:
        daemon = Daemon(load_config(bacnet_config(tmp_path, sim, interval="60s", cov=True)))
        changes: list[Event] = []
        daemon.bus.on_event(lambda e: changes.append(e) if e.kind == "point.changed" else None)
        async with running(daemon):
            poller = daemon.pollers["plant"]
            driver = daemon.drivers["plant"]
            assert isinstance(driver, BacnetDriver)
            await until(lambda: poller.state.polls >= 1 and len(covered(driver)) == len(POINTS))
            asked = dict(sim.app.requests)
            sim.set("binary-input:1", "inactive")
            sim.set("analog-input:1", 24.0)
            started = time.monotonic()
            await until(lambda: any(e.payload.get("point") == "pump" for e in changes), within=2.0)
            latency = time.monotonic() - started
            # the temperature's notification may come a moment after the pump's (live values: memory, no flush)
            def temperature() -> object:
                reading = daemon.live.latest.get("plant", {}).get("temperature")
                return None if reading is None else reading.value

            await until(lambda: temperature() == 24.0, within=2.0)
            latest = daemon.live.latest["plant"]
            assert latest["temperature"].quality is Quality.GOOD and latest["temperature"].unit == "°C"
            assert {k: v for k, v in sim.app.requests.items() if v != asked.get(k)} == {}  # nothing was polled
            assert poller.state.polls == 1
    assert changes[-1].payload == {"point": "pump", "value": False, "previous": True}
    assert latency < 1.0


async def test_cov_subscriptions_are_renewed_before_they_expire() -> None:
    async with plant() as sim, driving(make_driver(sim, cov=True, cov_lifetime="2s")) as driver:
        sink = Sink()
        async with streaming(driver, sink):
            await until(lambda: len(covered(driver)) == len(POINTS))
            polled: set[str] = set()
            loop = asyncio.get_running_loop()
            end = loop.time() + 4.5  # more than two lifetimes
            while loop.time() < end:
                polled |= {r.point for r in await driver.poll("plant")}
                await asyncio.sleep(0.2)
            assert polled == set()  # never a gap in which the points had to be polled
            assert sim.subscriptions == len(POINTS)  # renewed in place, not piled up
            assert sim.app.requests["SubscribeCOVRequest"] >= 4 * len(POINTS)
            sim.set("analog-input:3", 3.9)
            await until(lambda: (r := sink.last("pressure")) is not None and r.value == 3.9, within=1.0)


async def test_refused_or_lapsed_subscriptions_fall_back_to_polling() -> None:
    async with plant() as sim, driving(make_driver(sim, cov=True, cov_lifetime="2s")) as driver:
        sim.app.refuse_cov = {"analog-input:2"}
        async with streaming(driver, Sink()):
            await until(lambda: len(covered(driver)) == len(POINTS) - 1)
            assert sim.subscriptions == len(POINTS) - 1
            assert [r.point for r in await driver.poll("plant")] == ["co2"]
            sim.app.cov = False  # renewals are refused from now on: the subscriptions lapse
            await until(lambda: not covered(driver), within=3.0)
            assert {r.point for r in await driver.poll("plant")} == {p["id"] for p in POINTS}
    async with plant() as sim, driving(make_driver(sim, cov=True)) as driver:
        sim.app.cov = False  # not even offered: everything polled, nothing asked
        async with streaming(driver, Sink()):
            assert len(await driver.poll("plant")) == len(POINTS)
            await asyncio.sleep(0.3)
            assert sim.app.requests["SubscribeCOVRequest"] == 0


# -- writes ----------------------------------------------------------------------------------------


async def test_writes_at_priority_and_relinquish(tmp_path: Path) -> None:
    async with plant() as sim:
        config = bacnet_config(tmp_path, sim, interval="1s")
        daemon = Daemon(load_config(config))
        valve = sim["analog-output:1"]
        async with running(daemon):
            run = daemon.commands.execute
            ok = await run(WriteCommand(cmd="write", device="plant", point="valve", value=42.5, actor="t"))
            assert ok["result"] == "verified" and ok["read_back"] == 42.5
            assert valve.priorityArray[8].real == 42.5 and valve.presentValue == 42.5  # slot 9
            assert (await run(WriteCommand(cmd="write", device="plant", point="mode", value="manual")))[
                "read_back"] == "manual"
            assert sim["multi-state-value:1"].presentValue == 3
            for value, message in ((150, "above its maximum 100"), ("warm", "takes a number")):
                with pytest.raises(CommandError, match=message):
                    await run(WriteCommand(cmd="write", device="plant", point="valve", value=value))
            with pytest.raises(CommandError, match="read-only"):
                await run(WriteCommand(cmd="write", device="plant", point="pump", value="null"))
            code, out, err = await cli("write", "plant", "valve", "null", "-c", str(config))
            assert code == 0 and "written, read back 0" in out, err
            assert valve.priorityArray[8].null is not None and valve.presentValue == 0.0  # back to its default
            await daemon.recorder.flush()
            audit = await daemon.store.run(daemon.store.store.audit_entries, 100)
    assert [(e["point"], e["value"], e["result"]) for e in audit] == [
        ("valve", 42.5, "verified"), ("mode", "manual", "verified"), ("valve", 150, "refused"),
        ("valve", "warm", "refused"), ("pump", "null", "refused"), ("valve", "null", "written")]


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# -- a device that goes away ------------------------------------------------------------------------


async def test_a_device_that_disappears_goes_offline_and_returns(tmp_path: Path) -> None:
    port = udp_port()
    async with plant(port) as sim:
        daemon = Daemon(load_config(bacnet_config(tmp_path, sim, interval="200ms", cov=True, cov_lifetime="4s",
                                                  offline_after=2, probe_max="1s")))
        events: list[str] = []
        daemon.bus.on_event(lambda e: events.append(e.kind))
        async with running(daemon):
            poller = daemon.pollers["plant"]
            await until(lambda: poller.state.state == "online" and sim.subscriptions == len(POINTS))
            await sim.close()
            await until(lambda: poller.state.state == "offline")
            driver = daemon.drivers["plant"]
            assert isinstance(driver, BacnetDriver) and not covered(driver)
            async with plant(port) as back:
                await until(lambda: poller.state.state == "online", within=5.0)
                await until(lambda: back.subscriptions == len(POINTS), within=5.0)  # subscribed again
    assert events.count("device.offline") == 1 and events.count("device.online") == 1


# -- config, tools ------------------------------------------------------------------------------------


def bacnet_config(tmp: Path, sim: SimulatedDevice, *, interval: str, **device: Any) -> Path:
    buses = [dict(id="bacnet", driver="bacnet_ip", bind=f"127.0.0.1:{udp_port()}", instance=999,
                  timeout="300ms", retries=0)]
    devices = [dict(id="plant", bus="bacnet", address=f"127.0.0.1:{sim.port}", device_instance=1001,
                    interval=interval, **device)]
    path = write_config(tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=None, buses=buses, devices=devices)
    points = "".join("\n[[devices.points]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in p.items()) for p in POINTS)
    path.write_text(path.read_text(encoding="utf-8") + points, encoding="utf-8")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)
