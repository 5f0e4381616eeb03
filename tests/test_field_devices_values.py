"""Issue 11: what the values of awkward meters read as: scaled integers exactly, counters as running totals
across a wrap, a reset and a restart, and ``stale`` for what a failing device no longer refreshes.
Pollers on the real driver have their time stepped by the test (``ManualClock``); the daemon runs for real
where the store matters (a restart)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import until
from test_field_devices import HOST, assert_arrived, daemon_on, holding, inline, poller_on, polls, tcp_config

from gateway.core.data import Quality
from gateway.core.timing import ManualClock
from simulators.awkward import AwkwardDevice, serve_awkward

# -- scaled integers ------------------------------------------------------------------------------------------

SCALED = [("int16", 0.1, 0.0, [319, -319, 1, -1, 3, 7, 29, 99, 101, 1003, 32767, -32768, 4095, 333, 777, 2049]),
          ("uint16", 0.01, 0.0, [12345, 1, 3, 7, 10, 99, 65535, 30001]),
          ("uint16", 0.1, -40.0, [619, 0, 1, 399, 401, 403, 65535]),
          ("int32", 0.001, 0.0, [1, -1, 1234567, -2147483648, 2147483647, 70001])]


async def test_scaled_integers_read_as_the_decimal_they_are() -> None:
    """int16 319 at scale 0.1 is 31.9, not 31.900000000000002: each value is the float nearest the exact
    decimal raw * scale + offset (computed here with Decimal, not with the driver's arithmetic)."""
    device = AwkwardDevice()
    points, expected, address = [], {}, 0
    for dtype, scale, offset, raws in SCALED:
        for raw in raws:
            device.put(address, raw, dtype)
            point = f"p{address}"
            points.append({"id": point, "address": address, "type": dtype, "scale": scale, "offset": offset})
            expected[point] = float(Decimal(raw) * Decimal(str(scale)) + Decimal(str(offset)))
            address += 2 if dtype == "int32" else 1
    async with poller_on(device, points, ManualClock()) as (poller, tape):
        await poller.poll_once()
    assert_arrived(tape, "meter", expected, within=1)
    assert tape.first_good("meter")["p0"] == (1, 31.9) and repr(tape.first_good("meter")["p0"][1]) == "31.9"


# -- stale values -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stale_after", [None, 1.5], ids=["three-intervals", "configured"])
async def test_a_value_not_refreshed_within_stale_after_is_published_stale_once(stale_after: float | None) -> None:
    """Polls every second; after a good poll the device stops answering. Before the device is declared
    offline (three failed polls), what the gateway last read turns ``stale`` once it is older than
    ``stale_after`` (default three intervals), and only once; a good poll brings it back."""
    clock = ManualClock()
    device = AwkwardDevice()
    points = holding(0, 1, 2)
    limit = stale_after or 3.0
    async with poller_on(device, points, clock, interval=1.0, stale_after=stale_after) as (poller, tape):
        await poller.poll_once()
        device.configure(lossy=1.0)
        await clock.advance(limit - 0.5)
        await poller.poll_once()  # failed, but what it holds is still recent
        assert not [r for _, r in tape.readings if r.quality is Quality.STALE]
        await clock.advance(1.0)
        await poller.poll_once()  # failed, and the values are now older than stale_after
        stale = [(r.point, r.value) for _, r in tape.readings if r.quality is Quality.STALE]
        assert sorted(stale) == [("h0", 0), ("h1", 1), ("h2", 2)]
        assert poller.state.state == "online" and poller.state.failures == 2
        device.configure(lossy=0.0)
        await clock.advance(1.0)
        await poller.poll_once()
        await clock.advance(limit + 1.0)
        device.configure(lossy=1.0)
        await poller.poll_once()  # stale again, once: the good poll had refreshed them
    qualities = [(n, r.quality) for n, r in tape.of("meter", "h0")]
    assert qualities == [(1, Quality.GOOD), (2, Quality.STALE), (4, Quality.GOOD), (4, Quality.STALE)], qualities
    assert not tape.kinds("device.offline")


# -- a wrapping 32-bit counter, and a reset -----------------------------------------------------------------

COUNTER_POINTS: list[dict[str, Any]] = [{"id": "energy", "address": 10, "type": "uint32", "counter": {"bits": 32}},
                  {"id": "energy_kwh", "address": 10, "type": "uint32", "scale": 0.1, "counter": {"bits": 32}}]
START = 2**32 - 5


def kwh(counts: int) -> float:
    return float(Decimal(counts) / 10)


async def test_a_counter_total_goes_on_up_across_a_wrap_and_a_reset() -> None:
    clock = ManualClock()
    device = AwkwardDevice(counter=10, counter_start=START)
    steps: list[tuple[str, Callable[[], None], int]] = [
        ("start", lambda: None, START),
        ("wrap", lambda: device.tick(6), 2**32 + 1),  # the register goes 4294967291 -> 1
        ("count", lambda: device.tick(1000), 2**32 + 1001),
        ("reset", lambda: device.reset_counter(7), 2**32 + 1001 + 7),  # meter replaced: starts again at 7
        ("count", lambda: device.tick(3), 2**32 + 1001 + 10),
    ]
    async with poller_on(device, COUNTER_POINTS, clock, interval=1.0) as (poller, tape):
        for _, step, _ in steps:
            step()
            await poller.poll_once()
            await clock.advance(1.0)
    assert tape.good_values("meter", "energy") == [total for *_, total in steps]
    assert tape.good_values("meter", "energy_kwh") == [kwh(total) for *_, total in steps]
    said = [(e.kind, e.payload) for e in tape.events if e.kind.startswith("point.counter_")]
    assert said == [
        ("point.counter_wrap", {"point": "energy", "register": 1, "total": 2**32 + 1}),
        ("point.counter_wrap", {"point": "energy_kwh", "register": 0.1, "total": kwh(2**32 + 1)}),
        ("point.counter_reset", {"point": "energy", "register": 7, "total": 2**32 + 1008}),
        ("point.counter_reset", {"point": "energy_kwh", "register": 0.7, "total": kwh(2**32 + 1008)}),
    ]


async def test_a_counter_total_survives_a_restart(tmp_path: Path) -> None:
    device = AwkwardDevice(counter=10, counter_start=START)
    points = [{**p, "counter": inline(p["counter"])} for p in COUNTER_POINTS]
    async with await serve_awkward(HOST, 0, device) as server:
        path = tcp_config(tmp_path, server.ports[0], points)
        async with daemon_on(path) as (daemon, tape):
            await until(lambda: polls(daemon) >= 1)
            device.tick(6)  # wraps to 1
            await until(lambda: 2**32 + 1 in tape.good_values("meter", "energy"))
        assert len(tape.kinds("point.counter_wrap")) == 2
        device.tick(2)  # counts on while the gateway is down
        async with daemon_on(path) as (daemon, tape):
            await until(lambda: polls(daemon) >= 2)
        assert set(tape.good_values("meter", "energy")) == {2**32 + 3}
        assert set(tape.good_values("meter", "energy_kwh")) == {kwh(2**32 + 3)}
        assert not [e for e in tape.events if e.kind.startswith("point.counter_")]
