"""The simulated meter, read over real Modbus TCP and decoded with the driver's codec."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from drivers.modbus.codec import BIT_TABLES, DataType, Table, decode
from simulators.meter import (
    FIRMWARE,
    METER_POINTS,
    STATUS_RUNNING,
    MeterServer,
    MeterSimulator,
    serve_black_holes,
    serve_meters,
)

HOST = "127.0.0.1"
POINTS = {p["id"]: p for p in METER_POINTS}


@pytest.fixture
async def meters() -> AsyncIterator[MeterServer]:
    server = await serve_meters(HOST, 0, count=2, tick_interval=0.05)
    try:
        yield server
    finally:
        await server.close()


def client(port: int, timeout: float = 1.0) -> AsyncModbusTcpClient:
    return AsyncModbusTcpClient(HOST, port=port, timeout=timeout, retries=0, reconnect_delay=0)


async def read_with(c: AsyncModbusTcpClient, table: Table, address: int, count: int, unit: int = 1) -> Any:
    if table is Table.HOLDING:
        return await c.read_holding_registers(address, count=count, device_id=unit)
    if table is Table.INPUT:
        return await c.read_input_registers(address, count=count, device_id=unit)
    if table is Table.COIL:
        return await c.read_coils(address, count=count, device_id=unit)
    return await c.read_discrete_inputs(address, count=count, device_id=unit)


async def read_raw(port: int, table: Table, address: int, count: int, unit: int = 1) -> Any:
    async with client(port) as c:
        assert c.connected, f"cannot connect to {HOST}:{port}"
        return await read_with(c, table, address, count, unit)


async def read_points(port: int) -> dict[str, Any]:
    """Every point of the map, one read per table, decoded as the driver would."""
    values: dict[str, Any] = {}
    # one connection: pymodbus's connect() sleeps 0.1 s every time
    async with client(port) as c:
        assert c.connected, f"cannot connect to {HOST}:{port}"
        for table in Table:
            points = [p for p in METER_POINTS if p["table"] == table.value]
            width = max(p["address"] + (1 if table in BIT_TABLES else _width(p)) for p in points)
            reply = await read_with(c, table, 0, width)
            assert not reply.isError(), reply
            data = reply.bits if table in BIT_TABLES else reply.registers
            for p in points:
                n = 1 if table in BIT_TABLES else _width(p)
                values[p["id"]] = decode(data[p["address"] : p["address"] + n], DataType(p["type"]))
    return values


def _width(point: dict[str, Any]) -> int:
    return {"float64": 4, "uint32": 2, "float32": 2}.get(point["type"], 1)


def as_float32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


async def test_values_are_plausible(meters: MeterServer) -> None:
    v = await read_points(meters.ports[0])
    tol = 1e-5  # float32 rounding at the edges of the ranges
    for phase in "abc":
        assert 220 - tol <= v[f"voltage_{phase}"] <= 235 + tol
        assert 0 <= v[f"current_{phase}"] < 100
    assert 0.85 - tol <= v["power_factor"] <= 0.99 + tol
    assert 49.95 - tol <= v["frequency"] <= 50.05 + tol
    expected_kw = sum(v[f"voltage_{p}"] * v[f"current_{p}"] for p in "abc") * v["power_factor"] / 1000
    assert v["power_total"] == pytest.approx(expected_kw, rel=1e-4)
    assert v["power_total"] > 0
    assert v["energy_import"] > 0
    assert v["status"] & STATUS_RUNNING
    assert v["firmware"] == FIRMWARE
    assert v["relay_closed"] is True
    assert v["tamper"] is False


async def test_meters_differ(meters: MeterServer) -> None:
    a, b = await read_points(meters.ports[0]), await read_points(meters.ports[1])
    assert a["serial_number"] != b["serial_number"]
    assert a["voltage_a"] != b["voltage_a"]
    assert meters.ports[0] != meters.ports[1]


async def test_energy_is_monotonic_over_the_wire(meters: MeterServer) -> None:
    readings = []
    for _ in range(5):
        readings.append((await read_points(meters.ports[0]))["energy_import"])
        await asyncio.sleep(0.06)
    assert readings == sorted(readings)
    assert readings[-1] > readings[0]


def test_energy_integrates_power() -> None:
    start = 1_700_000_000.0
    meter = MeterSimulator(seed=7, now=start)
    energy = [meter.get_point("energy_import")]
    for minute in range(1, 61):
        meter.tick(start + 60 * minute)
        energy.append(meter.get_point("energy_import"))
    assert energy == sorted(energy)
    # an hour at a few kW: a few kWh, not zero and not absurd
    assert 0.1 < energy[-1] - energy[0] < 50

    meter.tick(start)  # the clock going back must not run the counter backwards
    assert meter.get_point("energy_import") == energy[-1]


def test_seeds_repeat() -> None:
    a, b = MeterSimulator(seed=3, now=0.0), MeterSimulator(seed=3, now=0.0)
    assert [a.get_point(p["id"]) for p in METER_POINTS] == [b.get_point(p["id"]) for p in METER_POINTS]


def test_freeze_stops_changes() -> None:
    meter = MeterSimulator(seed=1, now=0.0)
    meter.freeze()
    before = {p: meter.get_point(p) for p in POINTS}
    meter.tick(3600.0)
    assert {p: meter.get_point(p) for p in POINTS} == before
    meter.unfreeze()
    meter.tick(7200.0)
    assert meter.get_point("voltage_a") != before["voltage_a"]
    # the hour spent frozen is not billed on unfreeze
    assert meter.get_point("energy_import") == before["energy_import"]


EXACT_VALUES: dict[str, Any] = {
    "voltage_a": 231.5,
    "voltage_b": as_float32(123.456),
    "voltage_c": -0.0,
    "current_a": as_float32(1e-3),
    "current_b": 0.0,
    "current_c": as_float32(3.4e38),
    "power_total": as_float32(-12.75),
    "power_factor": as_float32(0.9),
    "frequency": 49.96875,
    "energy_import": 123456789.123456789,
    "status": STATUS_RUNNING | 0b10,
    "serial_number": 4_000_000_001,
    "firmware": 0xBEEF,
    "relay_closed": False,
    "tamper": True,
}


def test_map_is_a_valid_device_config() -> None:
    from drivers.modbus.config import ModbusDevice

    device = ModbusDevice(id="meter_1", bus="bus_1", points=METER_POINTS)
    assert device.point_ids() == [p["id"] for p in METER_POINTS]


def test_exact_values_cover_the_map() -> None:
    assert set(EXACT_VALUES) == set(POINTS)


async def test_set_point_reads_back_exactly(meters: MeterServer) -> None:
    meter = meters.meters[0]
    meter.freeze()
    for point_id, value in EXACT_VALUES.items():
        meter.set_point(point_id, value)
    await asyncio.sleep(0.12)  # a couple of ticks: frozen, so nothing moves
    got = await read_points(meters.ports[0])
    for point_id, value in EXACT_VALUES.items():
        assert type(got[point_id]) is type(value), point_id
        if isinstance(value, float):
            assert struct.pack(">d", got[point_id]) == struct.pack(">d", value), point_id
        else:
            assert got[point_id] == value, point_id
        assert meter.get_point(point_id) == got[point_id]


def test_set_point_refuses_bad_values() -> None:
    meter = MeterSimulator(now=0.0)
    with pytest.raises(KeyError, match="voltage_a"):
        meter.set_point("voltage_z", 1.0)
    with pytest.raises(ValueError):
        meter.set_point("firmware", 70_000)
    with pytest.raises(ValueError):
        meter.set_point("tamper", 2)


async def test_relay_open_drops_the_load(meters: MeterServer) -> None:
    async with client(meters.ports[0]) as c:
        reply = await c.write_coil(0, False, device_id=1)
        assert not reply.isError()
    await asyncio.sleep(0.12)
    v = await read_points(meters.ports[0])
    assert v["relay_closed"] is False
    assert v["power_total"] == 0.0
    assert all(v[f"current_{p}"] == 0.0 for p in "abc")


async def test_protocol_errors_look_like_a_real_meter(meters: MeterServer, capsys: Any) -> None:
    past_end = await read_raw(meters.ports[0], Table.HOLDING, 20, 4)
    assert past_end.isError() and past_end.exception_code == 2  # ILLEGAL DATA ADDRESS
    wrong_unit = await read_raw(meters.ports[0], Table.HOLDING, 0, 2, unit=9)
    assert wrong_unit.isError() and wrong_unit.exception_code == 11  # GATEWAY TARGET FAILED TO RESPOND
    out, err = capsys.readouterr()
    assert (out, err) == ("", ""), "pymodbus must stay quiet"


async def test_unit_ids_and_unit_zero() -> None:
    async with await serve_meters(HOST, 0, count=2, unit_ids=[0, 17]) as server:
        assert (server.meters[0].unit_id, server.meters[1].unit_id) == (0, 17)
        assert not (await read_raw(server.ports[0], Table.INPUT, 0, 3, unit=0)).isError()
        assert not (await read_raw(server.ports[1], Table.INPUT, 0, 3, unit=17)).isError()
        assert (await read_raw(server.ports[1], Table.INPUT, 0, 3, unit=1)).isError()
    with pytest.raises(ValueError):
        await serve_meters(HOST, 0, count=2, unit_ids=[1])


async def test_stop_one_refuses_connects_and_start_one_restores(meters: MeterServer) -> None:
    port = meters.ports[0]
    async with client(port, timeout=0.3) as held:
        assert held.connected
        await meters.stop_one(0)
        # the open connection is dropped too (pymodbus only notices at the timeout)
        with pytest.raises(ModbusIOException):
            await held.read_holding_registers(0, count=2, device_id=1)

    async with client(port, timeout=0.5) as c:
        assert not c.connected
    assert not (await read_raw(meters.ports[1], Table.HOLDING, 0, 2)).isError()  # the other meter lives

    await meters.start_one(0)
    assert meters.ports[0] == port
    assert not (await read_raw(port, Table.HOLDING, 0, 2)).isError()
    await meters.start_one(0)  # already up: a no-op
    await meters.stop_one(1)
    await meters.stop_one(1)  # already down: a no-op


async def test_explicit_port_in_use_is_an_os_error() -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=str(port)):
            await serve_meters(HOST, port)


async def test_black_hole_accepts_and_never_answers() -> None:
    async with await serve_black_holes(HOST, 0, count=2) as holes:
        assert len(set(holes.ports)) == 2
        started = time.monotonic()
        async with client(holes.ports[0], timeout=0.2) as c:
            assert c.connected
            with pytest.raises(ModbusIOException):
                await c.read_holding_registers(0, count=2, device_id=1)
        assert 0.15 < time.monotonic() - started < 2

        port = holes.ports[1]
        await holes.stop_one(1)
        async with client(port, timeout=0.5) as c:
            assert not c.connected
        await holes.start_one(1)
        async with client(port, timeout=0.5) as c:
            assert c.connected
