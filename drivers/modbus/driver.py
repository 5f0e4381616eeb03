"""Modbus on pymodbus (TCP, RTU on a serial port, RTU tunnelled over TCP), one driver per bus.

Every transaction asks the bus scheduler for the wire, so a write or a life-safety poll never
waits behind a queue of ordinary polls, and one device's retries cannot monopolise a shared
line. pymodbus's own retry and reconnect loops are off; this driver retries what deserves it:

* exception 5/6 (acknowledge, busy): the device is alive and asks for patience: up to three more
  tries after 0.1, 0.2 and 0.4 s, never counted as a failure;
* a lost reply: ``retries`` immediate tries (default 1), while the device answered its last poll
  (a dead unit gets no retries, so it costs the wire one timeout per request and no more);
* exception 2/3 on a coalesced read: the read plan learns (``plan.py``) and asks again, in the same
  poll; exception 10/11 from a gateway means the unit behind it is silent: a timeout.

Every retry and every exception is counted per device by kind (``counters``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from drivers.base import Driver
from drivers.modbus.codec import Block, DataType, Table, encode
from drivers.modbus.config import ModbusDevice, ModbusRtuBus, ModbusRtuOverTcpBus, ModbusTcpBus
from drivers.modbus.counters import Counter
from drivers.modbus.plan import DevicePlan, point_span
from drivers.modbus.values import decimals
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

# pymodbus logs through the stdlib logger "pymodbus"; we report failures ourselves, with context,
# so its own messages would only be noise on stdout (and on the CLI's --json output).
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
logging.getLogger("pymodbus").propagate = False

__all__ = ["DevicePlan", "ModbusDriver"]

AnyModbusBus = ModbusTcpBus | ModbusRtuOverTcpBus | ModbusRtuBus
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
BUSY = frozenset({5, 6})
"""Acknowledge and server busy: the device is alive and wants a moment."""
SILENT = frozenset({10, 11})
"""Gateway path unavailable, gateway target failed to respond: the unit behind a converter is silent."""
BUSY_DELAYS = (0.1, 0.2, 0.4)
MAX_SPLITS = 64
"""Reads one poll may add by splitting refused reads, beyond four per configured point (a map with a hole
every few registers is learnt in one poll, at the cost of one request per split)."""


def _reraise_cancellation() -> None:
    """Give shutdown back a cancel that pymodbus 3.11 ate.

    It turns a CancelledError into ModbusIOException; and when the reply has arrived but the task has
    not yet resumed as the cancel comes, its ``asyncio.wait_for`` (Python 3.11) returns the reply and
    drops the cancel. Our own asyncio.timeout has already uncancelled the task by the time we get
    here, so a task still marked as cancelling was cancelled from outside (shutdown, supervisor).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _Line:
    """One pymodbus client and what it heard during the current transaction.

    A device that closes the connection mid-request is noticed at once (EOF), not after the
    timeout: pymodbus leaves the pending request waiting, so the disconnect callback fails it.
    """

    def __init__(self, make: Callable[[Callable[[bool, bytes], bytes]], Any]) -> None:
        self.heard = 0
        self.asking = False
        self.client = make(self._trace)
        ctx = self.client.ctx
        on_disconnect = ctx.callback_disconnected

        def disconnected(exc: Exception | None) -> None:
            future = getattr(ctx, "response_future", None)
            if self.asking and future is not None and not future.done():
                closed = ConnectionException(f"connection closed by the device ({exc or 'EOF'})")  # type: ignore[no-untyped-call]
                future.set_exception(closed)
            on_disconnect(exc)

        ctx.callback_disconnected = disconnected

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self.heard += len(data)
        return data

    def set_timeout(self, seconds: float) -> None:
        """The reply wait of the next transaction: the device's own timeout, not the bus's."""
        self.client.ctx.comm_params.timeout_connect = seconds


class ModbusDriver(Driver):
    def __init__(self, bus: AnyModbusBus, devices: Sequence[ModbusDevice]) -> None:
        super().__init__(bus, devices)
        self.bus: AnyModbusBus = bus
        self.plans = {d.id: DevicePlan(d) for d in devices}
        self.counts: dict[str, collections.Counter[str]] = {d.id: collections.Counter() for d in devices}
        self.totals: dict[str, dict[str, Counter]] = {
            d.id: {p.id: Counter(p.counter.bits, p.scale) for p in d.points if p.counter is not None} for d in devices
        }
        self._findings: dict[str, list[tuple[str, dict[str, Any]]]] = {d.id: [] for d in devices}
        self._wraps: dict[str, int] = {d.id: 0 for d in devices}
        self._heard: set[str] = set()
        """Devices that have answered since start: one never heard gets no retries (dead units cost little)."""
        self._silent: dict[str, int] = {d.id: 1 for d in devices}
        """Polls in a row the device answered nothing (1 until first heard). A lost reply is tried again until
        the device would be declared offline: a lossy device is retried, a dead one stops costing retries."""
        tcp = type(bus) is ModbusTcpBus
        concurrency = bus.max_in_flight if isinstance(bus, ModbusTcpBus) and tcp else 1
        gap = bus.frame_gap if isinstance(bus, ModbusRtuBus) else bus.gap
        self.scheduler: BusScheduler = BusScheduler(concurrency=concurrency, gap=gap)
        self._idle = [_Line(self._client_factory()) for _ in range(concurrency)]
        for line in self._idle:  # pymodbus hangs up after 4 silent requests: a dead unit must not cut off the rest
            line.client.set_max_no_responses(1_000_000)
        # Raw RTU tunnelled over TCP has no transaction id: a late reply could pass for the next
        # request's, so a timeout there costs a fresh connection. Modbus TCP matches transaction
        # ids, and a converter's silent unit must cost its timeout and nothing more.
        self._reconnect_after_timeout = isinstance(bus, ModbusRtuOverTcpBus)
        self._mbap = tcp

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

    def counters(self, device: str) -> dict[str, int]:
        """Per kind: timeouts, retries, exceptions by code, garbage, splits and limits learnt."""
        return dict(self.counts[device])

    def findings(self, device: str) -> list[tuple[str, dict[str, Any]]]:
        plan = self.plans[device]
        found, self._findings[device] = self._findings[device], []
        for point, why in plan.take_unreadable().items():
            found.append(("device.point_unreadable", {"point": point, "address": why.split(":")[0],
                                                      "answer": why.partition(": ")[2]}))
        return found

    def learning(self, device: str) -> int:
        return self.plans[device].version + len(self._findings[device]) + self._wraps[device]

    def learned(self, device: str) -> dict[str, Any]:
        return {"plan": self.plans[device].learned(),
                "counters": {p: c.state() for p, c in self.totals[device].items()}}

    def restore_learned(self, device: str, data: Any) -> bool:
        if not isinstance(data, dict):
            return False
        for point, state in dict(data.get("counters") or {}).items():
            if point in self.totals[device]:
                self.totals[device][point].restore(state)
        return self.plans[device].restore(data.get("plan"))

    def relearn(self, device: str) -> None:
        self.plans[device].relearn()

    def unreadable(self, device: str) -> dict[str, str]:
        return dict(self.plans[device].unreadable)

    def _totals(self, device: str, readings: list[Reading]) -> list[Reading]:
        """Counter points as running totals; a register that went back is a wrap or a reset, said once."""
        totals = self.totals[device]
        out = []
        for r in readings:
            counter = totals.get(r.point)
            if counter is None or r.quality is not Quality.GOOD or not isinstance(r.value, int | float):
                out.append(r)
                continue
            total, happened = counter.total(float(r.value))
            if happened is not None:
                self._wraps[device] += 1
                self._findings[device].append((f"point.counter_{happened}", {
                    "point": r.point, "register": r.value, "total": round(total, 6)}))
            value: float | int = round(total, decimals(counter.scale))
            if counter.scale == 1.0 and isinstance(r.value, int):
                value = int(value)
            out.append(replace(r, value=value))
        return out

    # -- one transaction ------------------------------------------------------------------------------

    async def _call(self, device: ModbusDevice, urgency: Urgency, method: str, *args: Any, **kwargs: Any) -> Any:
        limit = device.timeout or self.bus.timeout
        async with self.scheduler.slot(urgency):
            line = self._idle.pop()
            try:
                await self._connect(line)
                line.heard = 0
                line.set_timeout(limit)
                line.asking = True
                try:
                    async with asyncio.timeout(limit + 1.0):  # a guard: pymodbus itself waits `limit`
                        response = await getattr(line.client, method)(*args, device_id=device.unit, **kwargs)
                except (TimeoutError, ModbusIOException) as exc:
                    _reraise_cancellation()
                    if self._reconnect_after_timeout or not line.client.connected:
                        line.client.close()
                    if "transaction id" in str(exc):  # a reply to an earlier request, come late: not garbage
                        self.counts[device.id]["late_reply"] += 1
                        raise DeviceTimeout(f"unit {device.unit}: only a late reply to an earlier request") from None
                    if line.heard and self._mbap:  # TCP delivers what was sent: a reply that fits no request
                        self.counts[device.id]["late_reply"] += 1  # is one that came too late, not garbage
                        raise DeviceTimeout(f"unit {device.unit}: no reply within {limit:g}s "
                                            "(a late reply to an earlier request arrived)") from None
                    if line.heard:
                        raise BadResponse(f"unit {device.unit}: {line.heard} bytes but no valid reply "
                                          "(bad CRC, wrong unit id or transaction, or truncated)") from exc
                    raise DeviceTimeout(f"unit {device.unit}: no reply within {limit:g}s") from None
                except ConnectionException as exc:
                    line.client.close()
                    raise DeviceUnreachable(f"unit {device.unit}: {exc}") from exc
                except ModbusException as exc:
                    raise BadResponse(f"unit {device.unit}: {exc}") from exc
                # A reply that came as we were cancelled: the caller (a probe, then a backoff of up to
                # probe_max) must not carry on as if nothing had happened, or shutdown waits for it.
                _reraise_cancellation()
            finally:
                line.asking = False
                self._idle.append(line)
        if getattr(response, "function_code", 0) & 0x7F != _FUNCTION[method]:
            # On RTU a late reply to an earlier request can arrive during this one (pymodbus only
            # checks the unit id): never let it pass for the answer to a different question.
            raise BadResponse(f"unit {device.unit}: reply to function {response.function_code}, "
                              f"asked {_FUNCTION[method]}")
        if response.isError():
            code = getattr(response, "exception_code", 0)
            if code in SILENT:
                raise DeviceTimeout(f"unit {device.unit}: the gateway says it does not answer (exception {code})")
            raise ExceptionResponse(code, f"unit {device.unit}: exception code {code}")
        return response

    async def read_block(self, device: ModbusDevice, block: Block, urgency: Urgency) -> list[Any]:
        """One read, its reply checked as strictly as pymodbus lets us: function, unit, CRC, length."""
        response = await self._call(device, urgency, _READ[block.table], block.start, count=block.count)
        bits = block.table in (Table.COIL, Table.DISCRETE)
        data = response.bits if bits else response.registers
        # Bits come padded to a whole byte; registers must match exactly (a longer reply answers
        # another request).
        if len(data) < block.count or (not bits and len(data) != block.count) or len(data) >= block.count + 8:
            raise BadResponse(f"unit {device.unit}: asked {block.count}, got {len(data)}")
        return list(data)

    async def _read_patiently(self, device: ModbusDevice, block: Block, urgency: Urgency, *,
                              retries: int) -> list[Any]:
        """A read with the retries its failure deserves (module docstring); what is left is raised."""
        counts = self.counts[device.id]
        busy = lost = 0
        while True:
            try:
                return await self.read_block(device, block, urgency)
            except ExceptionResponse as exc:
                counts[f"exception_{exc.code}"] += 1
                if exc.code in BUSY and busy < len(BUSY_DELAYS):
                    counts["retry_busy"] += 1
                    await asyncio.sleep(BUSY_DELAYS[busy])  # holding no slot: the wire serves others meanwhile
                    busy += 1
                    continue
                raise
            except DeviceTimeout:
                counts["timeout"] += 1
                if lost < retries:
                    counts["retry_lost"] += 1
                    lost += 1
                    continue
                raise
            except DeviceUnreachable:
                counts["unreachable"] += 1
                if lost < retries:  # the device hung up: ask again on a fresh connection
                    counts["retry_reconnect"] += 1
                    lost += 1
                    continue
                raise
            except BadResponse:
                counts["garbage"] += 1
                if lost < retries:  # a neighbour's stray bytes on a shared line: a heard device is asked again
                    counts["retry_garbage"] += 1
                    lost += 1
                    continue
                raise

    # -- a poll -----------------------------------------------------------------------------------------

    async def read(self, device: str) -> list[Reading]:
        """One poll: every planned read, learning from refusals as it goes.

        A read that still fails after its retries only makes its own points ``bad`` when the device
        answered something else in this poll: one lost reply is not an outage. Only a device that
        answered nothing at all fails the poll (the poller's breaker counts those).
        """
        plan = self.plans[device]
        config = plan.device
        urgency = self.urgency(config)
        readings: list[Reading] = []
        answered = got_data = False
        gone: DriverError | None = None  # a timeout or a lost connection, while nothing has answered yet
        last_error: DriverError | None = None
        queue = list(plan.blocks)
        budget = MAX_SPLITS + 4 * len(plan.points)
        version = plan.version
        while queue:
            block = queue.pop(0)
            heard = device in self._heard
            retries = config.retries if answered or (heard and self._silent[device] < config.offline_after) else 0
            try:
                data = await self._read_patiently(config, block, urgency, retries=retries)
            except (DeviceTimeout, DeviceUnreachable) as exc:
                if not answered:
                    self._silent[device] += 1
                    raise  # silent from the first read: the device is gone, no point asking for the rest
                gone = last_error = exc
                readings += plan.bad_block(block, time.time())
                continue
            except ExceptionResponse as exc:
                answered = True
                if exc.code in (2, 3) and budget > 0:
                    parts = plan.refused_address(block) if exc.code == 2 else plan.refused_length(block)
                    self.counts[device]["learnt"] += 1
                    budget -= max(1, len(parts))
                    queue[:0] = parts  # asked again in this same poll
                    if not parts:  # a point unreadable on its own: bad this once, then left out and reported
                        readings += plan.bad_block(block, time.time())
                    continue
                last_error = exc
                readings += plan.bad_block(block, time.time())
                continue
            except BadResponse as exc:
                last_error = exc
                readings += plan.bad_block(block, time.time())
                continue
            answered = got_data = True
            plan.accepted(block)
            readings += plan.decode_block(block, data, time.time())
        self._silent[device] = 0 if answered or not plan.blocks else self._silent[device] + 1
        if answered:
            self._heard.add(device)
        if plan.version != version or plan.searching:
            plan.settle()  # reads learnt this poll that proved contiguous and readable go back together
        if not got_data and last_error is not None:
            # Nothing but exceptions, garbage or lost replies: the device is there but serves none of its
            # map. That is a failed poll, reported and counted, never "online" with no error.
            raise gone if gone is not None and last_error is gone else last_error
        return self._totals(device, readings) if self.totals[device] else readings

    async def probe(self, device: str) -> bool:
        """The first read of the plan, at the lowest urgency, checked exactly as a poll checks it.

        A unit that answers garbage stays isolated like a dead one; one that answers with an
        exception is alive (its next poll finds out what it objects to).
        """
        plan = self.plans[device]
        if not plan.blocks:
            return True
        counts = self.counts[device]
        counts["probe"] += 1
        try:
            await self.read_block(plan.device, plan.blocks[0], Urgency.PROBE)
        except ExceptionResponse as exc:
            counts[f"exception_{exc.code}"] += 1
            return True  # it answered, if only to complain
        except DriverError as exc:
            counts[{DeviceTimeout: "timeout", BadResponse: "garbage"}.get(type(exc), "unreachable")] += 1
            return False
        return True

    async def read_point(self, device: str, point: str) -> Reading:
        plan = self.plans[device]
        target = plan.by_id[point]
        span = point_span(plan.points.index(target), target)
        block = Block(target.table, target.address, span.count, (span,))
        urgency = self.urgency(plan.device, write=True)
        data = await self.read_block(plan.device, block, urgency)
        return plan.decode_block(block, data, time.time())[0]

    async def write(self, device: str, point: str, value: Value) -> None:
        plan = self.plans[device]
        target = plan.by_id.get(point)
        if target is None:
            raise WriteRefused(f"{device} has no point {point!r}")
        urgency = self.urgency(plan.device, write=True)
        if target.table is Table.COIL:
            await self._call(plan.device, urgency, "write_coil", target.address, bool(value))
            return
        if target.table is not Table.HOLDING or target.type is DataType.BOOL or not isinstance(value, int | float):
            raise WriteRefused(f"{device}.{point}: cannot write {value!r} to a {target.table.value} "
                               f"{target.type.value}")
        raw: float = (float(value) - target.offset) / target.scale
        if target.type not in (DataType.FLOAT32, DataType.FLOAT64):
            raw = round(raw)
        try:
            registers = encode(raw, target.type, target.word_order, target.byte_order)
        except ValueError as exc:
            raise WriteRefused(f"{device}.{point}: {exc}") from exc
        await self._call(plan.device, urgency, "write_registers", target.address, registers)
