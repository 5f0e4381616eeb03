"""Modbus TCP on pymodbus: coalesced reads, typed failures, no retries hidden inside the library.

Retries and reconnection belong to the supervisor, which knows the poll deadline; pymodbus's own
retry and reconnect loops are switched off so a dead device costs one timeout, not several.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.base import (
    BadResponse,
    DeviceTimeout,
    DeviceUnreachable,
    Driver,
    DriverError,
    ExceptionResponse,
    WriteRefused,
)
from drivers.modbus.codec import (
    Block,
    DataType,
    Span,
    Table,
    decode,
    encode,
    plan_reads,
    register_count,
    slice_for,
)
from drivers.modbus.config import ModbusDevice, ModbusPoint, ModbusTcpBus
from gateway.model import Quality, Reading, Value

# pymodbus logs through the stdlib logger "pymodbus"; we report failures ourselves, with context,
# so its own messages would only be noise on stdout (and on the CLI's --json output).
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
logging.getLogger("pymodbus").propagate = False


def _reraise_cancellation() -> None:
    """pymodbus 3.11 turns a CancelledError into ModbusIOException; give shutdown its cancel back.

    Our own asyncio.timeout has already uncancelled the task by the time we get here, so a task
    still marked as cancelling was cancelled from outside (shutdown, supervisor).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _span(index: int, point: ModbusPoint) -> Span:
    width = 1 if point.table in (Table.COIL, Table.DISCRETE) else register_count(point.type)
    return Span(index, point.table, point.address, width)


def scaled(raw: int | float | bool, point: ModbusPoint) -> Value:
    if isinstance(raw, bool) or (point.scale == 1.0 and point.offset == 0.0):
        return raw
    return raw * point.scale + point.offset


class DevicePlan:
    """A device's register map turned into the fewest reads the protocol allows."""

    def __init__(self, device: ModbusDevice) -> None:
        self.device = device
        self.points = device.points
        self.blocks: list[Block] = plan_reads(
            (_span(i, p) for i, p in enumerate(device.points)),
            max_registers=device.max_registers,
            max_bits=device.max_bits,
            max_gap=device.max_gap,
        )
        self.by_id = {p.id: p for p in device.points}

    def decode_block(self, block: Block, data: Sequence[Any], ts: float) -> list[Reading]:
        """Pure: a block's raw registers or bits -> readings. A point that does not decode is ``bad``."""
        readings = []
        for span in block.spans:
            point = self.points[span.key]
            try:
                part = slice_for(block, span, data)
                if block.table in (Table.COIL, Table.DISCRETE):
                    value: Value = bool(part[0])
                else:
                    value = scaled(decode(part, point.type, point.word_order, point.byte_order, point.bit), point)
                quality = Quality.GOOD
                if isinstance(value, float) and not math.isfinite(value):
                    value, quality = None, Quality.BAD
            except ValueError:
                value, quality = None, Quality.BAD
            readings.append(Reading(self.device.id, point.id, value, point.unit, quality, ts))
        return readings

    def bad_block(self, block: Block, ts: float) -> list[Reading]:
        return [
            Reading(self.device.id, self.points[s.key].id, None, self.points[s.key].unit, Quality.BAD, ts)
            for s in block.spans
        ]


class ModbusDriver(Driver):
    bus_type = ModbusTcpBus
    device_type = ModbusDevice

    def __init__(self, bus: ModbusTcpBus, devices: Sequence[ModbusDevice]) -> None:
        super().__init__(bus, devices)
        self.bus: ModbusTcpBus = bus
        self.plans = {d.id: DevicePlan(d) for d in devices}
        self._client = AsyncModbusTcpClient(
            bus.host, port=bus.port, timeout=bus.timeout, retries=0, reconnect_delay=0, name=bus.id
        )
        self._lock = asyncio.Lock()  # one transaction at a time on the wire; fairness comes with the bus scheduler

    async def connect(self) -> None:
        if self._client.connected:
            return
        try:
            async with asyncio.timeout(self.bus.timeout + 0.5):
                ok = await self._client.connect()
        except (TimeoutError, OSError) as exc:
            raise DeviceUnreachable(f"{self.bus.host}:{self.bus.port}: {exc or 'connect timed out'}") from exc
        if not ok:
            raise DeviceUnreachable(f"{self.bus.host}:{self.bus.port}: connection refused or timed out")

    async def close(self) -> None:
        self._client.close()

    async def _call(self, device: ModbusDevice, method: str, *args: Any, **kwargs: Any) -> Any:
        timeout = device.timeout or self.bus.timeout
        async with self._lock:
            await self.connect()
            try:
                async with asyncio.timeout(timeout + 0.25):
                    response = await getattr(self._client, method)(*args, device_id=device.unit, **kwargs)
            except TimeoutError as exc:
                self._client.close()  # a late reply must not be taken for the next request's
                raise DeviceTimeout(f"unit {device.unit}: no reply within {timeout:g}s") from exc
            except ModbusIOException as exc:
                self._client.close()
                _reraise_cancellation()
                raise DeviceTimeout(f"unit {device.unit}: {exc}") from exc
            except ConnectionException as exc:
                self._client.close()
                raise DeviceUnreachable(f"unit {device.unit}: {exc}") from exc
            except ModbusException as exc:
                raise BadResponse(f"unit {device.unit}: {exc}") from exc
        if response.isError():
            code = getattr(response, "exception_code", 0)
            raise ExceptionResponse(code, f"unit {device.unit}: exception code {code}")
        return response

    async def read_block(self, device: ModbusDevice, block: Block) -> Sequence[Any]:
        method = {
            Table.HOLDING: "read_holding_registers",
            Table.INPUT: "read_input_registers",
            Table.COIL: "read_coils",
            Table.DISCRETE: "read_discrete_inputs",
        }[block.table]
        response = await self._call(device, method, block.start, count=block.count)
        data = response.bits if block.table in (Table.COIL, Table.DISCRETE) else response.registers
        if len(data) < block.count:
            raise BadResponse(f"unit {device.unit}: asked {block.count}, got {len(data)}")
        return list(data)

    async def read(self, device: str) -> list[Reading]:
        plan = self.plans[device]
        readings: list[Reading] = []
        answered = False
        last_error: DriverError | None = None
        for block in plan.blocks:
            try:
                data = await self.read_block(plan.device, block)
            except (DeviceTimeout, DeviceUnreachable):
                raise  # the device is gone: no point asking for the next block
            except (ExceptionResponse, BadResponse) as exc:
                answered = answered or isinstance(exc, ExceptionResponse)
                last_error = exc
                readings += plan.bad_block(block, time.time())
                continue
            answered = True
            readings += plan.decode_block(block, data, time.time())
        if not answered and last_error is not None:
            raise last_error
        return readings

    async def write(self, device: str, point: str, value: Value) -> None:
        plan = self.plans[device]
        spec = plan.by_id.get(point)
        if spec is None:
            raise WriteRefused(f"{device} has no point {point!r}")
        if spec.table in (Table.INPUT, Table.DISCRETE):
            raise WriteRefused(f"{device}.{point} is a read-only {spec.table.value} point")
        if spec.table is Table.COIL:
            await self._call(plan.device, "write_coil", spec.address, bool(value))
            return
        if spec.type is DataType.BOOL or value is None or isinstance(value, str):
            raise WriteRefused(f"{device}.{point}: cannot write {value!r} to a {spec.type.value} register")
        raw = (float(value) - spec.offset) / spec.scale
        if spec.type not in (DataType.FLOAT32, DataType.FLOAT64):
            raw = round(raw)
        try:
            registers = encode(raw, spec.type, spec.word_order, spec.byte_order)
        except ValueError as exc:
            raise WriteRefused(f"{device}.{point}: {exc}") from exc
        await self._call(plan.device, "write_registers", spec.address, registers)
