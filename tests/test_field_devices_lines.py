"""Issue 11 on shared lines: a garbage unit on an RS-485 line, a dead unit behind a TCP-to-RS-485 converter.

The healthy neighbours must keep at least 90 % of their polls. Measured as a count, not a rate: the same
daemon polls two lines at once, the faulty one and a healthy twin (the same units, the faulty one left
out), on the same event loop over the same stretch of time; when the twin's unit 1 has done WINDOW polls,
each neighbour on the faulty line must have done at least 90 % as many as its twin. A slow machine slows
both lines alike.

The window starts at the daemon's start, so it includes what finding the fault costs (``offline_after``
failed polls) and the breaker's first probes. Each of those costs the line one reply timeout; the
timeout is shorter than the poll interval, as in the field (1 s against 10 s by default), so that one
such transaction delays a neighbour's poll without costing it a slot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import until
from pymodbus.datastore import ModbusDeviceContext
from test_field_devices import HOST, Expected, assert_arrived, assert_never_offline, config, daemon_on

from drivers.modbus.codec import Table
from gateway.core.data import Quality
from simulators.awkward import AwkwardDevice
from simulators.converter import serve_converter
from simulators.endpoints import sequential_block
from simulators.rtu import Behaviour, RtuLine, Unit

WINDOW = 32
"""Polls of the twin's unit 1 (8 s at 250 ms) over which the neighbours' polls are counted."""
INTERVAL = "250ms"
POINTS = [{"id": f"r{i}", "address": i} for i in range(10)]


def held(unit: int) -> list[int]:
    """What unit ``unit`` holds in registers 0..9: its own numbers, so a reply from the wrong unit shows."""
    return [unit * 100 + i for i in range(10)]


def expected(unit: int) -> Expected:
    return {f"r{i}": value for i, value in enumerate(held(unit))}


def bank(unit: int) -> ModbusDeviceContext:
    return ModbusDeviceContext(hr=sequential_block([*held(unit), *[0] * 10]), ir=sequential_block([0] * 4),
                               co=sequential_block([False] * 4), di=sequential_block([False] * 4))


def devices(line: str, units: list[int]) -> list[dict[str, Any]]:
    return [{"id": f"{line}-{u}", "bus": line, "unit": u, "interval": INTERVAL, "points": POINTS} for u in units]


def assert_neighbours_kept_their_polls(done: dict[str, int], neighbours: list[int]) -> None:
    for u in neighbours:
        kept = done[f"faulty-{u}"] / done[f"twin-{u}"]
        assert kept >= 0.9, f"unit {u} did {done[f'faulty-{u}']} polls beside the fault, its twin {done[f'twin-{u}']}"


async def test_a_garbage_unit_on_an_rtu_line_costs_its_neighbours_no_polls(tmp_path: Path) -> None:
    """Unit 2 answers garbage in turn: bad CRC, a frame from the wrong unit id, a reply to another function,
    a truncated frame, noise. None of it is taken for data; units 1 and 3 go on as if it were not there."""
    faulty = {1: Unit(bank(1)), 2: Unit(bank(2), Behaviour.GARBAGE), 3: Unit(bank(3))}
    async with RtuLine(faulty) as line, RtuLine({1: Unit(bank(1)), 3: Unit(bank(3))}) as twin:
        buses = [{"id": name, "driver": "modbus_rtu", "port": rtu.port, "baudrate": 9600, "timeout": "150ms"}
                 for name, rtu in (("faulty", line), ("twin", twin))]
        path = config(tmp_path, buses, devices("faulty", [1, 2, 3]) + devices("twin", [1, 3]))
        async with daemon_on(path) as (daemon, tape):
            pollers = daemon.pollers
            await until(lambda: pollers["twin-1"].state.polls >= WINDOW, within=120)
            done = {d: p.state.polls for d, p in pollers.items()}
            garbage = pollers["faulty-2"]
            assert garbage.breaker_open and garbage.state.state == "offline"
            assert all(pollers[f"faulty-{u}"].state.failures == 0 for u in (1, 3))
    assert set(line.stats.garbled) >= {"crc", "unit", "function", "truncate"}, line.stats.garbled
    for u in (1, 3):
        assert_arrived(tape, f"faulty-{u}", expected(u))
        assert_never_offline(tape, f"faulty-{u}")
    assert not [r for _, r in tape.readings if r.device == "faulty-2" and r.quality is Quality.GOOD]
    (offline,) = tape.kinds("device.offline", "faulty-2")
    assert offline.payload["kind"] == "garbage"
    assert_neighbours_kept_their_polls(done, [1, 3])


async def test_a_dead_unit_behind_a_converter_costs_its_neighbours_no_polls(tmp_path: Path) -> None:
    """The converter runs one transaction at a time; for unit 2 (dead) it waits out its serial timeout and
    answers exception 11. Units 1 and 3 behind it keep their polls."""
    units = {u: AwkwardDevice(unit_id=u) for u in (1, 3)}
    twins = {u: AwkwardDevice(unit_id=u) for u in (1, 3)}
    for u in (1, 3):
        units[u].set(Table.HOLDING, 0, held(u))
        twins[u].set(Table.HOLDING, 0, held(u))
    converter = await serve_converter(HOST, 0, {1: units[1], 2: "dead", 3: units[3]}, serial_timeout=0.15)
    twin = await serve_converter(HOST, 0, twins, serial_timeout=0.15)
    try:
        buses = [{"id": name, "driver": "modbus_tcp", "host": HOST, "port": server.ports[0], "timeout": "1s"}
                 for name, server in (("faulty", converter), ("twin", twin))]
        path = config(tmp_path, buses, devices("faulty", [1, 2, 3]) + devices("twin", [1, 3]))
        async with daemon_on(path) as (daemon, tape):
            pollers = daemon.pollers
            # The daemon starts in this test's event loop: on a loaded machine its start-up can hold the
            # simulated converter past its 150 ms serial timeout once, for any unit (the twin's too). What is
            # under test is the steady state after it.
            await until(lambda: all(pollers[f"faulty-{u}"].state.polls >= 3 for u in (1, 3)), within=60)
            failed_at_start = {u: pollers[f"faulty-{u}"].state.failures for u in (1, 3)}
            await until(lambda: pollers["twin-1"].state.polls >= WINDOW, within=120)
            done = {d: p.state.polls for d, p in pollers.items()}
            dead = pollers["faulty-2"]
            assert dead.breaker_open and dead.state.state == "offline"
            assert {u: pollers[f"faulty-{u}"].state.failures for u in (1, 3)} == failed_at_start
            asked = converter.converter.stats.unit(2)
            await until(lambda: asked.timeouts == asked.requests)  # (no probe of it on the line)
            answers = dict(asked.exceptions), asked.requests
            counted = daemon.drivers["faulty-2"].counters("faulty-2")
    finally:
        await converter.close()
        await twin.close()
    assert answers == ({11: answers[1]}, answers[1])  # each waited out, then answered exception 11
    # Exception 11 is a silent unit, a timeout, not a fault of the converter (probes: test_field_devices_failing.py)
    assert counted["timeout"] >= 3 and "exception_11" not in counted
    for u in (1, 3):
        assert_arrived(tape, f"faulty-{u}", expected(u))
        assert_never_offline(tape, f"faulty-{u}")
    (offline,) = tape.kinds("device.offline", "faulty-2")
    assert offline.payload["kind"] == "timeout"
    assert_neighbours_kept_their_polls(done, [1, 3])
