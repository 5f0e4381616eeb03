"""Issue 11, "Real meters are awkward": the real daemon (or a poller on the real driver) against the awkward
devices, each fault on its own. This file: busy answers, lost requests, a slow device, dropped connections,
and the helpers the other test_field_devices_* files share (read plans: _plans, values: _values, shared
lines: _lines).

For every device the checks are the same: every readable point arrives ``good`` with the exact value the
simulator holds within two polls of start (polls are counted, never timed), and a device that is merely
awkward never goes offline. What happened on the wire is read off the simulator's stats and the driver's
counters, so a test asserts what was said, not how fast.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import running, until, write_config

from drivers.modbus.config import ModbusDevice, ModbusTcpBus
from drivers.modbus.driver import ModbusDriver
from gateway.bus import LocalBus
from gateway.config import load_config
from gateway.core.data import Event, Quality, Reading, Value
from gateway.core.timing import ManualClock
from gateway.daemon import Daemon
from gateway.poller import DevicePoller
from simulators.awkward import AwkwardDevice, serve_awkward

HOST = "127.0.0.1"
Expected = dict[str, Value]


class Tape:
    """Everything the bus carried: each reading with the number of polls its device had done when it was
    published (a successful poll's readings carry that poll's number), and every event."""

    def __init__(self, bus: LocalBus, pollers: Mapping[str, DevicePoller]) -> None:
        self.pollers = pollers
        self.readings: list[tuple[int, Reading]] = []
        self.events: list[Event] = []
        bus.on_readings(self._heard)
        bus.on_event(self.events.append)

    def _heard(self, device: str, readings: list[Reading], ts: float) -> None:
        polls = self.pollers[device].state.polls if device in self.pollers else -1
        self.readings += [(polls, r) for r in readings]

    def of(self, device: str, point: str) -> list[tuple[int, Reading]]:
        return [(n, r) for n, r in self.readings if r.device == device and r.point == point]

    def first_good(self, device: str) -> dict[str, tuple[int, Value]]:
        """Point -> (the poll that first brought it ``good``, its value then)."""
        first: dict[str, tuple[int, Value]] = {}
        for n, r in self.readings:
            if r.device == device and r.quality is Quality.GOOD:
                first.setdefault(r.point, (n, r.value))
        return first

    def kinds(self, kind: str, source: str | None = None) -> list[Event]:
        return [e for e in self.events if e.kind == kind and source in (None, e.source)]

    def good_values(self, device: str, point: str) -> list[Value]:
        return [r.value for _, r in self.of(device, point) if r.quality is Quality.GOOD]


def assert_arrived(tape: Tape, device: str, expected: Mapping[str, Value], *, within: int = 2) -> None:
    """Every readable point came ``good``, with exactly its value, by the ``within``-th poll."""
    first = tape.first_good(device)
    missing = sorted(set(expected) - set(first))
    assert not missing, f"{device}: never good: {missing}"
    late = {p: n for p, (n, _) in first.items() if p in expected and n > within}
    assert not late, f"{device}: first good only at poll {late}"
    wrong = {p: (v, expected[p]) for p, (_, v) in first.items() if p in expected and v != expected[p]}
    assert not wrong, f"{device}: (read, held) {wrong}"
    for point, value in expected.items():  # and never anything else afterwards
        assert all(v == value for v in tape.good_values(device, point)), (point, tape.good_values(device, point))


def assert_never_offline(tape: Tape, device: str) -> None:
    offline = tape.kinds("device.offline", device)
    assert not offline, f"{device} flapped: {[e.payload for e in offline]}"


def inline(table: Mapping[str, int]) -> str:
    """A TOML inline table for a point key (``counter = { bits = 32 }``); see ``config``."""
    return "@inline{" + ", ".join(f"{k} = {v}" for k, v in table.items()) + "}"


def config(tmp: Path, buses: list[dict[str, Any]], devices: list[dict[str, Any]]) -> Path:
    """A config file as an engineer writes it; ``inline(...)`` values become TOML inline tables."""
    path = write_config(tmp / "gateway.toml", data_dir=tmp / "data", mqtt_port=None, buses=buses, devices=devices)
    text = path.read_text(encoding="utf-8")
    while '"@inline{' in text:
        start = text.index('"@inline{')
        end = text.index('}"', start)
        text = text[:start] + "{ " + text[start + len('"@inline{'):end] + " }" + text[end + 2:]
    path.write_text(text, encoding="utf-8")
    return path


def tcp_config(tmp: Path, port: int, points: list[dict[str, Any]], *, bus: Mapping[str, Any] | None = None,
               **device: Any) -> Path:
    buses = [{"id": "tcp-1", "driver": "modbus_tcp", "host": HOST, "port": port, "timeout": "500ms", **(bus or {})}]
    devices = [{"id": "meter", "bus": "tcp-1", "interval": "200ms", **device, "points": points}]
    return config(tmp, buses, devices)


@asynccontextmanager
async def daemon_on(path: Path) -> AsyncIterator[tuple[Daemon, Tape]]:
    daemon = Daemon(load_config(path))
    tape = Tape(daemon.bus, daemon.pollers)
    async with running(daemon):
        yield daemon, tape


def polls(daemon: Daemon, device: str = "meter") -> int:
    return daemon.pollers[device].state.polls


def wire(daemon: Daemon, device: str = "meter") -> dict[str, int]:
    return daemon.drivers[device].counters(device)


def learnt_plan(daemon: Daemon, device: str = "meter") -> dict[str, Any]:
    learned = daemon.drivers[device].learned(device)
    assert learned is not None
    plan: dict[str, Any] = learned["plan"]
    return plan


async def gateway_status(path: Path) -> dict[str, Any]:
    """`gateway status --json`, in a child process as a technician runs it."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "status", "--json", "-c", str(path),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    report: dict[str, Any] = json.loads(out)
    return report


@asynccontextmanager
async def poller_on(device: AwkwardDevice, points: list[dict[str, Any]], clock: ManualClock, *,
                    bus_timeout: float = 0.3, **options: Any) -> AsyncIterator[tuple[DevicePoller, Tape]]:
    """A poller on the real driver, its time stepped by the test; readings and events on a tape."""
    async with await serve_awkward(HOST, 0, device) as server:
        bus = ModbusTcpBus(id="tcp-1", driver="modbus_tcp", host=HOST, port=server.ports[0], timeout=bus_timeout)
        meter = ModbusDevice.model_validate({"id": "meter", "bus": "tcp-1", "points": points, **options})
        driver = ModbusDriver(bus, [meter])
        sink = LocalBus(clock)
        poller = DevicePoller(driver, meter, sink, clock=clock)
        try:
            yield poller, Tape(sink, {"meter": poller})
        finally:
            await driver.close()


def holding(*addresses: int) -> list[dict[str, Any]]:
    return [{"id": f"h{a}", "address": a} for a in addresses]


# -- busy answers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [{"busy": 0.1}, {"busy_every": 2, "busy_code": 5}], ids=["busy-6", "acknowledge-5"])
async def test_a_busy_device_is_asked_again_and_never_fails_a_poll(tmp_path: Path, fault: dict[str, Any]) -> None:
    device = AwkwardDevice(**fault)
    code = device.config.busy_code
    points = holding(*range(10))
    async with await serve_awkward(HOST, 0, device) as server:
        async with daemon_on(tcp_config(tmp_path, server.ports[0], points, interval="100ms")) as (daemon, tape):
            busy = device.stats.exceptions
            # (until no busy answer is on its way: then the device and the driver have counted the same)
            await until(lambda: polls(daemon) >= 10 and busy[code] >= 3
                        and wire(daemon).get(f"exception_{code}") == busy[code], within=60)
            poller = daemon.pollers["meter"]
            counted = wire(daemon)
            assert poller.state.failures == 0 and poller.state.state == "online"
        assert_arrived(tape, "meter", {p["id"]: p["address"] for p in points})
        assert_never_offline(tape, "meter")
        assert counted[f"exception_{code}"] == counted["retry_busy"]  # each asked again, none failed the poll
        assert "timeout" not in counted and "garbage" not in counted


# -- request loss (one in five) ------------------------------------------------------------------------------


async def test_a_lossy_device_is_retried_and_never_goes_offline(tmp_path: Path) -> None:
    device = AwkwardDevice(lossy=0.2)
    points = holding(*range(10))
    async with await serve_awkward(HOST, 0, device) as server:
        path = tcp_config(tmp_path, server.ports[0], points, bus={"timeout": "300ms"})
        async with daemon_on(path) as (daemon, tape):
            await until(lambda: polls(daemon) >= 30, within=60)
            counted = wire(daemon)
            lost = device.stats.dropped
        assert_arrived(tape, "meter", {p["id"]: p["address"] for p in points})
        assert_never_offline(tape, "meter")
        assert lost >= 3
        # Every lost request was noticed as a timeout (and nothing else), and the retries were spent on them.
        assert lost - 1 <= counted["timeout"] <= lost  # (the last one may still be waiting out its timeout)
        assert counted["retry_lost"] >= 1 and "garbage" not in counted


# -- a slow device -------------------------------------------------------------------------------------------


async def test_a_slow_device_is_given_its_own_timeout(tmp_path: Path) -> None:
    """It answers in 1.5 s, on a bus whose timeout is 1 s: the device's `timeout = "3s"` must be honoured."""
    device = AwkwardDevice(delay=1.5)
    points = holding(*range(10))
    async with await serve_awkward(HOST, 0, device) as server:
        path = tcp_config(tmp_path, server.ports[0], points, bus={"timeout": "1s"}, timeout="3s", interval="1s")
        async with daemon_on(path) as (daemon, tape):
            await until(lambda: polls(daemon) >= 2, within=30)
            counted = wire(daemon)
        assert_arrived(tape, "meter", {p["id"]: p["address"] for p in points})
        assert_never_offline(tape, "meter")
        assert counted == {}, f"a patient device cost {counted}"
        stats = device.stats  # one request per poll, each answered in time (or cut short by the shutdown,
        # which the simulator hears a moment after the daemon has gone)
        await until(lambda: stats.requests == stats.answered + stats.abandoned, within=5)
        assert stats.dropped == 0


async def test_a_device_timeout_shorter_than_the_answer_is_not_stretched(tmp_path: Path) -> None:
    """The converse: `timeout = "200ms"` on a 1 s bus must not accept a reply that takes 300 ms."""
    device = AwkwardDevice(delay=0.3)
    points = holding(*range(10))
    async with await serve_awkward(HOST, 0, device) as server:
        path = tcp_config(tmp_path, server.ports[0], points, bus={"timeout": "1s"}, timeout="200ms")
        async with daemon_on(path) as (daemon, tape):
            await until(lambda: daemon.pollers["meter"].state.failures >= 3 and device.stats.answered >= 3, within=30)
            counted = wire(daemon)
        good = [(n, r.point, r.value) for n, r in tape.readings if r.quality is Quality.GOOD]
        assert not good, f"a 300 ms answer was taken under a 200 ms timeout: {good[:3]}"
        assert counted["timeout"] >= 1  # (what a late reply then counts as: test_field_devices_failing.py)
        assert counted["timeout"] + counted.get("garbage", 0) >= 3


# -- a dropped connection ----------------------------------------------------------------------------------


async def test_a_dropped_connection_is_noticed_at_eof_not_after_a_timeout(tmp_path: Path) -> None:
    """Every third request the device hangs up instead of answering. The bus timeout is long (5 s) so
    that a missed EOF would show as a timeout in the counters: each hang-up must count as the device
    closing the connection, and none as a timeout."""
    device = AwkwardDevice(drop_every=3)
    points = holding(*range(10))
    async with await serve_awkward(HOST, 0, device) as server:
        path = tcp_config(tmp_path, server.ports[0], points, bus={"timeout": "5s"})
        async with daemon_on(path) as (daemon, tape):
            stats = device.stats
            # (until the driver has heard the last hang-up: then each one is counted, and as what)
            await until(lambda: stats.hang_ups >= 3 and polls(daemon) >= 10
                        and wire(daemon).get("unreachable", 0) == stats.hang_ups, within=60)
            counted, connections = wire(daemon), stats.connections
            hang_ups, errors = stats.hang_ups, dict(daemon.pollers["meter"].errors)
        assert_arrived(tape, "meter", {p["id"]: p["address"] for p in points})
        assert_never_offline(tape, "meter")
        # the device closed it: no timeout; each read it cut was asked again on a fresh connection
        assert counted == {"unreachable": hang_ups, "retry_reconnect": hang_ups}, counted
        assert set(errors) <= {"unreachable"}  # and so no poll failed (or only as the device hung up)
        assert hang_ups <= connections <= hang_ups + 1  # a fresh connection for the next poll after each
