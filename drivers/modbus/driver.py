"""Modbus on pymodbus (TCP, RTU on a serial port, RTU tunnelled over TCP), one driver per bus.

Every transaction asks the bus scheduler for the wire, so a write or a life-safety poll never
waits behind a queue of ordinary polls, and one device's retries cannot monopolise a shared
line. pymodbus's own retry and reconnect loops are off: the poller, which knows the deadline and
runs the breaker, decides what a failure means.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from drivers.base import Driver
from drivers.modbus.codec import (
    Block,
    DataType,
    Order,
    Span,
    Table,
    decode,
    encode,
    plan_reads,
    register_count,
    slice_for,
)
from drivers.modbus.config import ModbusDevice, ModbusPoint, ModbusRtuBus, ModbusRtuOverTcpBus, ModbusTcpBus
from drivers.scheduler import BusScheduler, Urgency
from gateway.core.data import Quality, Reading, Value
from gateway.core.errors import (
    BadResponse,
    DeviceTimeout,
    DeviceUnreachable,
    DriverError,
    ExceptionResponse,
    WriteRefused,
)
from gateway.core.numbers import float32_shortest

# pymodbus logs through the stdlib logger "pymodbus"; we report failures ourselves, with context,
# so its own messages would only be noise on stdout (and on the CLI's --json output).
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
logging.getLogger("pymodbus").propagate = False

AnyModbusBus = ModbusTcpBus | ModbusRtuOverTcpBus | ModbusRtuBus
_FAST = {
    DataType.INT16: ">h", DataType.UINT16: ">H", DataType.INT32: ">i", DataType.UINT32: ">I",
    DataType.INT64: ">q", DataType.UINT64: ">Q", DataType.FLOAT32: ">f", DataType.FLOAT64: ">d",
}
_FUNCTION = {
    "read_coils": 1, "read_discrete_inputs": 2, "read_holding_registers": 3, "read_input_registers": 4,
    "write_coil": 5, "write_registers": 16,
}
_READ = {
    Table.HOLDING: "read_holding_registers",
    Table.INPUT: "read_input_registers",
    Table.COIL: "read_coils",
    Table.DISCRETE: "read_discrete_inputs",
}


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
    if isinstance(raw, bool):
        return raw
    if point.type is DataType.FLOAT32 and isinstance(raw, float):
        raw = float32_shortest(raw)  # before scaling, which would smear the noise into more digits
    if point.scale == 1.0 and point.offset == 0.0:
        return raw
    return raw * point.scale + point.offset



def named(value: Value, point: ModbusPoint) -> Value:
    """Enumerated points read as their state names; an undocumented code stays visible as such."""
    if point.states is None or isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return point.states.get(int(value), f"unknown_{int(value)}")


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
        # Big-endian points (most meters) decode with one struct.unpack_from on the packed reply;
        # other orders go through codec.decode, which is the reference for both.
        self._fast: dict[int, struct.Struct] = {
            i: struct.Struct(_FAST[p.type]) for i, p in enumerate(device.points)
            if p.type in _FAST and p.word_order is Order.BIG and p.byte_order is Order.BIG
        }

    def decode_block(self, block: Block, data: Sequence[Any], ts: float) -> list[Reading]:
        """Pure: a block's raw registers or bits -> readings. A point that does not decode is ``bad``."""
        readings = []
        packed: bytes | None = None
        if block.table not in (Table.COIL, Table.DISCRETE) and len(data) >= block.count:
            try:
                packed = struct.pack(f">{block.count}H", *data[: block.count])
            except (struct.error, TypeError):
                packed = None  # a register out of 0..65535: let the checked path say which point is bad
        for span in block.spans:
            point = self.points[span.key]
            try:
                fast = self._fast.get(span.key) if packed is not None else None
                if fast is not None and packed is not None:
                    value: Value = scaled(fast.unpack_from(packed, (span.address - block.start) * 2)[0], point)
                elif block.table in (Table.COIL, Table.DISCRETE):
                    value = bool(slice_for(block, span, data)[0])
                else:
                    part = slice_for(block, span, data)
                    value = scaled(decode(part, point.type, point.word_order, point.byte_order, point.bit), point)
                quality = Quality.GOOD
                if isinstance(value, float) and not math.isfinite(value):
                    value, quality = None, Quality.BAD
                else:
                    value = named(value, point)
            except (ValueError, struct.error):  # struct.error: a reply shorter than the block
                value, quality = None, Quality.BAD
            readings.append(Reading(self.device.id, point.id, value, point.unit, quality, ts))
        return readings

    def bad_block(self, block: Block, ts: float) -> list[Reading]:
        return [
            Reading(self.device.id, self.points[s.key].id, None, self.points[s.key].unit, Quality.BAD, ts)
            for s in block.spans
        ]


class _Line:
    """One pymodbus client and what it heard during the current transaction."""

    def __init__(self, make: Callable[[Callable[[bool, bytes], bytes]], Any]) -> None:
        self.heard = 0
        self.client = make(self._trace)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self.heard += len(data)
        return data


class ModbusDriver(Driver):
    bus_type = ModbusTcpBus
    device_type = ModbusDevice

    def __init__(self, bus: AnyModbusBus, devices: Sequence[ModbusDevice]) -> None:
        super().__init__(bus, devices)
        self.bus: AnyModbusBus = bus
        self.plans = {d.id: DevicePlan(d) for d in devices}
        tcp = type(bus) is ModbusTcpBus
        concurrency = bus.max_in_flight if isinstance(bus, ModbusTcpBus) and tcp else 1
        gap = bus.frame_gap if isinstance(bus, ModbusRtuBus) else bus.gap
        self.scheduler = BusScheduler(concurrency=concurrency, gap=gap)
        self._idle = [_Line(self._client_factory()) for _ in range(concurrency)]
        # A late TCP reply could be taken for the next request's; a fresh connection rules that
        # out. On RTU, pymodbus drops what arrived between transactions and the gap lets it land.
        self._reconnect_after_timeout = tcp

    def _client_factory(self) -> Callable[[Callable[[bool, bytes], bytes]], Any]:
        bus = self.bus
        common: dict[str, Any] = {"timeout": bus.timeout, "retries": 0, "reconnect_delay": 0, "name": bus.id}
        if isinstance(bus, ModbusRtuBus):
            return lambda trace: AsyncModbusSerialClient(
                bus.port, framer=FramerType.RTU, baudrate=bus.baudrate, bytesize=bus.bytesize,
                parity=bus.parity, stopbits=bus.stopbits, trace_packet=trace, **common,
            )
        framer = FramerType.RTU if isinstance(bus, ModbusRtuOverTcpBus) else FramerType.SOCKET
        return lambda trace: AsyncModbusTcpClient(bus.host, port=bus.port, framer=framer, trace_packet=trace, **common)

    @property
    def endpoint(self) -> str:
        return self.bus.port if isinstance(self.bus, ModbusRtuBus) else f"{self.bus.host}:{self.bus.port}"

    async def connect(self) -> None:
        for line in self._idle:
            await self._connect(line)

    async def _connect(self, line: _Line) -> None:
        if line.client.connected:
            return
        try:
            async with asyncio.timeout(self.bus.timeout + 0.5):
                ok = await line.client.connect()
            _reraise_cancellation()  # pymodbus's connect() can swallow a cancel and return False
        except (TimeoutError, OSError) as exc:
            raise DeviceUnreachable(f"{self.endpoint}: {exc or 'connect timed out'}") from exc
        if not ok:
            raise DeviceUnreachable(f"{self.endpoint}: cannot open (refused, missing or busy)")

    async def close(self) -> None:
        for line in self._idle:
            line.client.close()

    async def _call(self, device: ModbusDevice, urgency: Urgency, method: str, *args: Any, **kwargs: Any) -> Any:
        limit = device.timeout or self.bus.timeout
        async with self.scheduler.slot(urgency):
            line = self._idle.pop()
            try:
                await self._connect(line)
                line.heard = 0
                try:
                    async with asyncio.timeout(limit + 0.25):
                        response = await getattr(line.client, method)(*args, device_id=device.unit, **kwargs)
                except (TimeoutError, ModbusIOException) as exc:
                    _reraise_cancellation()
                    if self._reconnect_after_timeout:
                        line.client.close()
                    if line.heard:
                        raise BadResponse(f"unit {device.unit}: {line.heard} bytes but no valid reply "
                                          "(bad CRC, wrong unit id or truncated)") from exc
                    raise DeviceTimeout(f"unit {device.unit}: no reply within {limit:g}s") from None
                except ConnectionException as exc:
                    line.client.close()
                    raise DeviceUnreachable(f"unit {device.unit}: {exc}") from exc
                except ModbusException as exc:
                    raise BadResponse(f"unit {device.unit}: {exc}") from exc
            finally:
                self._idle.append(line)
        if getattr(response, "function_code", 0) & 0x7F != _FUNCTION[method]:
            # On RTU a late reply to an earlier request can arrive during this one (pymodbus only
            # checks the unit id): never let it pass for the answer to a different question.
            raise BadResponse(f"unit {device.unit}: reply to function {response.function_code}, "
                              f"asked {_FUNCTION[method]}")
        if response.isError():
            code = getattr(response, "exception_code", 0)
            raise ExceptionResponse(code, f"unit {device.unit}: exception code {code}")
        return response

    async def read_block(self, device: ModbusDevice, block: Block, urgency: Urgency) -> Sequence[Any]:
        response = await self._call(device, urgency, _READ[block.table], block.start, count=block.count)
        bits = block.table in (Table.COIL, Table.DISCRETE)
        data = response.bits if bits else response.registers
        # Bits come padded to a whole byte; registers must match exactly (a longer reply answers
        # another request).
        if len(data) < block.count or (not bits and len(data) != block.count) or len(data) >= block.count + 8:
            raise BadResponse(f"unit {device.unit}: asked {block.count}, got {len(data)}")
        return list(data)

    async def read(self, device: str) -> list[Reading]:
        plan = self.plans[device]
        urgency = self.urgency(plan.device)
        readings: list[Reading] = []
        answered = False
        last_error: DriverError | None = None
        for block in plan.blocks:
            try:
                data = await self.read_block(plan.device, block, urgency)
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

    async def probe(self, device: str) -> bool:
        """One register (or bit) of the first block, at the lowest urgency: is anybody home?"""
        plan = self.plans[device]
        if not plan.blocks:
            return True
        first = plan.blocks[0]
        try:
            await self._call(plan.device, Urgency.PROBE, _READ[first.table], first.start, count=1)
        except ExceptionResponse:
            return True  # it answered, if only to complain
        except DriverError:
            return False
        return True

    async def read_point(self, device: str, point: str) -> Reading:
        plan = self.plans[device]
        spec = plan.by_id[point]
        span = _span(plan.points.index(spec), spec)
        block = Block(spec.table, spec.address, span.count, (span,))
        urgency = self.urgency(plan.device, write=True)
        data = await self.read_block(plan.device, block, urgency)
        return plan.decode_block(block, data, time.time())[0]

    async def write(self, device: str, point: str, value: Value) -> None:
        plan = self.plans[device]
        spec = plan.by_id.get(point)
        if spec is None:
            raise WriteRefused(f"{device} has no point {point!r}")
        urgency = self.urgency(plan.device, write=True)
        if spec.table is Table.COIL:
            await self._call(plan.device, urgency, "write_coil", spec.address, bool(value))
            return
        if spec.table is not Table.HOLDING or spec.type is DataType.BOOL or not isinstance(value, int | float):
            raise WriteRefused(f"{device}.{point}: cannot write {value!r} to a {spec.table.value} {spec.type.value}")
        raw: float = (float(value) - spec.offset) / spec.scale
        if spec.type not in (DataType.FLOAT32, DataType.FLOAT64):
            raw = round(raw)
        try:
            registers = encode(raw, spec.type, spec.word_order, spec.byte_order)
        except ValueError as exc:
            raise WriteRefused(f"{device}.{point}: {exc}") from exc
        await self._call(plan.device, urgency, "write_registers", spec.address, registers)
