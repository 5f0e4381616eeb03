"""Awkward Modbus TCP devices: the plant-room meters a driver has to survive, served by pymodbus.

Each ``AwkwardDevice`` is a register bank whose faults are switched on one by one and combined:
gaps in its map (exception 2), a read-size limit (exception 3), busy spells (exception 6 or 5),
lost requests, slow answers, connections closed under the client, and a 32-bit energy counter
that wraps. Every fault is counted in ``stats``, so a test checks the wire, not a guess.

pymodbus's TCP server accepts connections and frames MBAP; each request then goes through a hook
(``Link`` -> ``Responder.respond``) that decides, as the device would, whether and what to answer.
Normal registers hold ``pattern(table, address)`` until a test sets them.

"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import struct
from collections import Counter
from collections.abc import Sequence
from typing import Any, Self

from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock
from pymodbus.pdu import DecodePDU, ModbusPDU
from pymodbus.pdu.register_message import ReadWriteMultipleRegistersRequest

from drivers.modbus.codec import BIT_TABLES, DataType, Order, Table
from simulators.awkward.config import AwkwardConfig
from simulators.awkward.hooked import HookedEndpoints, Link, NoReply
from simulators.endpoints import port_range, quiet_pymodbus, sequential_block

log = logging.getLogger(__name__)

SUPPORTED = frozenset({1, 2, 3, 4, 5, 6, 15, 16, 22, 23})
"""Function codes the device implements; any other answers exception 1 (ILLEGAL FUNCTION)."""
_STRUCT = {DataType.INT16: "h", DataType.UINT16: "H", DataType.INT32: "i", DataType.UINT32: "I",
           DataType.INT64: "q", DataType.UINT64: "Q", DataType.FLOAT32: "f", DataType.FLOAT64: "d"}


def pattern(table: Table, address: int) -> int | bool:
    """What a normal address holds until set: holding = address, input = 0xFFFF - address,
    coil = odd address, discrete = address divisible by 3 (so a read from the wrong table shows)."""
    table = Table(table)
    if table is Table.HOLDING:
        return address & 0xFFFF
    if table is Table.INPUT:
        return 0xFFFF - (address & 0xFFFF)
    return address % 2 == 1 if table is Table.COIL else address % 3 == 0


def to_words(value: float, dtype: DataType | str, word_order: Order = Order.BIG,
             byte_order: Order = Order.BIG) -> list[int]:
    """A number as the registers a device in that layout holds, big-endian words first.

    Written apart from ``drivers.modbus.codec.encode`` on purpose: a test that encodes with the
    gateway's own codec cannot catch its bugs.
    """
    dtype = DataType(dtype)
    if dtype not in _STRUCT:
        raise ValueError(f"{dtype.value} is not a register type")
    try:
        raw = struct.pack(">" + _STRUCT[dtype], value)
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{value!r} does not fit {dtype.value}") from exc
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if Order(word_order) is Order.LITTLE:
        words.reverse()
    if Order(byte_order) is Order.LITTLE:
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words


def _exception(function_code: int, code: int) -> bytes:
    return bytes([(function_code | 0x80) & 0xFF, code])


@dataclasses.dataclass(slots=True)
class AwkwardStats:
    """What the device saw and did, as a test reads it off the wire."""

    requests: int = 0
    """Every request frame heard, whatever became of it."""
    answered: int = 0
    """Replies sent (exception replies included)."""
    exceptions: Counter[int] = dataclasses.field(default_factory=Counter)
    """Exception replies by code: 1, 2, 3, 4, 5, 6."""
    dropped: int = 0
    """Requests lost on purpose (``lossy``): never answered, the connection kept."""
    hang_ups: int = 0
    """Connections the device closed (``drop_every``, ``drop_connections()``)."""
    abandoned: int = 0
    """Replies prepared for a connection that was gone by then (the client or the device hung up)."""
    other_unit: int = 0
    """Requests for another unit id: ignored, as pymodbus's ``ignore_missing_devices`` does."""
    connections: int = 0
    """Connections accepted."""
    by_function: Counter[int] = dataclasses.field(default_factory=Counter)
    by_count: Counter[int] = dataclasses.field(default_factory=Counter)
    """Histogram of read sizes (registers or bits asked per read request, FC 1-4 and 23)."""

    def as_dict(self) -> dict[str, Any]:
        return {f.name: (dict(v) if isinstance(v := getattr(self, f.name), Counter) else v)
                for f in dataclasses.fields(self)}


class AwkwardDevice:
    """One device: its datastore, its faults (``config``), its counter and what it counted.

    ``AwkwardDevice(read_limit=32, busy=0.1)`` is ``AwkwardDevice(AwkwardConfig(read_limit=32, busy=0.1))``.
    Requests are served one at a time in arrival order (one CPU), across all connections.
    """

    def __init__(self, config: AwkwardConfig | None = None, **options: Any) -> None:
        self.config = dataclasses.replace(config or AwkwardConfig(), **options)
        c = self.config
        self.stats = AwkwardStats()
        self._masks: dict[Table, bytearray] = {}
        self._blocks: dict[Table, ModbusSequentialDataBlock] = {}
        for table in Table:
            table_runs = c.table_runs(table)
            mask = bytearray(max((r.stop for r in table_runs), default=1))
            for run in table_runs:
                mask[run.start : run.stop] = b"\x01" * len(run)
            self._masks[table] = mask
            self._blocks[table] = sequential_block([pattern(table, a) if mask[a] else 0 for a in range(len(mask))])
            if table in BIT_TABLES:
                self._blocks[table].values = [bool(v) for v in self._blocks[table].values]
        self.context = ModbusDeviceContext(hr=self._blocks[Table.HOLDING], ir=self._blocks[Table.INPUT],
                                           co=self._blocks[Table.COIL], di=self._blocks[Table.DISCRETE])
        if c.counter is not None and (c.counter_table in BIT_TABLES or not self.mapped(c.counter_table, c.counter, 2)):
            raise ValueError(f"counter at {c.counter_table.value} {c.counter}+2 is not on mapped registers")
        self._counter = c.counter_start
        self._write_counter()
        self._busy = random.Random(f"busy-{c.seed}")
        self._lossy = random.Random(f"lossy-{c.seed}")
        self._jitter = random.Random(f"jitter-{c.seed}")
        self._decoder = DecodePDU(True)
        self._lock = asyncio.Lock()
        self._links: set[Link] = set()

    # ---------------------------------------------------------------- the device's state

    def configure(self, **changes: Any) -> None:
        """Switch faults on or off while serving (busy, lossy, delay, limits...), not the register map."""
        fixed = {"unit_id", "size", "mapped", "counter", "counter_table", "counter_start", "seed"}
        if fixed & changes.keys():
            raise ValueError(f"{sorted(fixed & changes.keys())} cannot change while the device exists")
        self.config = dataclasses.replace(self.config, **changes)
        self._write_counter()  # in its new word order

    def mapped(self, table: Table, address: int, count: int = 1) -> bool:
        """Whether every address of ``address .. address + count - 1`` exists on this device."""
        mask = self._masks[Table(table)]
        return count >= 1 and address >= 0 and address + count <= len(mask) and mask.find(0, address,
                                                                                            address + count) < 0

    def set(self, table: Table, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        """Store raw words (0..65535) or bits at mapped addresses, exactly as given."""
        table = Table(table)
        if not self.mapped(table, address, len(values)):
            raise ValueError(f"{table.value} {address}+{len(values)} touches an unmapped address")
        if table in BIT_TABLES:
            stored: list[int] | list[bool] = [bool(v) for v in values]
        elif any(isinstance(v, bool) or not 0 <= v <= 0xFFFF for v in values):
            raise ValueError(f"{table.value} values must be 16-bit words, got {list(values)!r}")
        else:
            stored = [int(v) for v in values]
        self._blocks[table].values[address : address + len(stored)] = stored

    def get(self, table: Table, address: int, count: int = 1) -> list[int] | list[bool]:
        table = Table(table)
        if not self.mapped(table, address, count):
            raise ValueError(f"{table.value} {address}+{count} touches an unmapped address")
        return list(self._blocks[table].values[address : address + count])

    def put(self, address: int, value: float, dtype: DataType | str, *, table: Table = Table.HOLDING,
            word_order: Order = Order.BIG, byte_order: Order = Order.BIG) -> list[int]:
        """Put a typed value (float32, int32, uint32, ...) at ``address``; returns the words stored."""
        words = to_words(value, dtype, word_order, byte_order)
        self.set(table, address, words)
        return words

    @property
    def counter_value(self) -> int:
        return self._counter

    def tick(self, steps: int = 1) -> None:
        """The energy counter counts ``counter_step`` per tick and wraps at 2**32, as a 32-bit meter does."""
        self._counter = (self._counter + steps * self.config.counter_step) % 2**32
        self._write_counter()

    def reset_counter(self, value: int = 0) -> None:
        """A meter reset or replacement: the counter jumps to ``value``."""
        if not 0 <= value < 2**32:
            raise ValueError(f"counter value {value} is outside 0..2**32-1")
        self._counter = value
        self._write_counter()

    def _write_counter(self) -> None:
        c = self.config
        if c.counter is not None:
            self.set(c.counter_table, c.counter, to_words(self._counter, DataType.UINT32, c.counter_word_order))

    # ---------------------------------------------------------------- the wire

    def connected(self, link: Link) -> None:
        self.stats.connections += 1
        self._links.add(link)

    def disconnected(self, link: Link) -> None:
        self._links.discard(link)

    def drop_connections(self) -> int:
        """Close every client connection now, pending requests unanswered; returns how many."""
        links = list(self._links)
        for link in links:
            link.hang_up()
        self.stats.hang_ups += len(links)
        return len(links)

    async def respond(self, unit_id: int, pdu: bytes, link: Link | None = None) -> bytes | NoReply:
        """The device's answer to one request PDU (function code first), or why there is none."""
        c, stats = self.config, self.stats
        stats.requests += 1
        heard = stats.requests
        if unit_id != c.unit_id:
            stats.other_unit += 1
            return NoReply.LOST
        if c.drop_every and heard % c.drop_every == 0:
            stats.hang_ups += 1
            return NoReply.HANG_UP
        if c.lossy and self._lossy.random() < c.lossy:
            stats.dropped += 1
            return NoReply.LOST
        busy = bool(c.busy_every and heard % c.busy_every == 0) or bool(c.busy and self._busy.random() < c.busy)
        delay = c.delay + (self._jitter.uniform(0.0, c.jitter) if c.jitter else 0.0)
        async with self._lock:
            reply = _exception(pdu[0], c.busy_code) if busy else await self._execute(pdu)
            if delay:
                await asyncio.sleep(delay)
        if link is not None and not link.is_active():
            stats.abandoned += 1
            return NoReply.LOST
        stats.answered += 1
        if reply[0] & 0x80:
            stats.exceptions[reply[1]] += 1
        return reply

    async def _execute(self, pdu: bytes) -> bytes:
        fc = pdu[0]
        self.stats.by_function[fc] += 1
        if fc not in SUPPORTED:
            return _exception(fc, 1)
        try:
            request = self._decoder.decode(pdu)
        except Exception:  # struct.error on a short body escapes pymodbus's decoder
            request = None
        if request is None:
            return _exception(fc, 3)
        if isinstance(request, ReadWriteMultipleRegistersRequest):
            self.stats.by_count[request.read_count] += 1
        elif fc in (1, 2, 3, 4):
            self.stats.by_count[request.count] += 1
        if code := self._check(request):
            return _exception(fc, code)
        try:
            response = await request.update_datastore(self.context)
        except Exception:
            log.exception("awkward device: datastore failed on %r", request)
            return _exception(fc, 4)
        return bytes([response.function_code]) + response.encode()

    def _check(self, request: ModbusPDU) -> int:
        """Exception 3 for a quantity out of limits, then 2 for an address not mapped, as the spec orders them."""
        c, a = self.config, request.address
        spans: list[tuple[Table, int, int, int]]
        if isinstance(request, ReadWriteMultipleRegistersRequest):
            spans = [(Table.HOLDING, request.read_address, request.read_count, c.read_limit),
                     (Table.HOLDING, request.write_address, request.write_count, 121)]
        else:
            spans = {
                1: [(Table.COIL, a, request.count, c.bit_limit)],
                2: [(Table.DISCRETE, a, request.count, c.bit_limit)],
                3: [(Table.HOLDING, a, request.count, c.read_limit)],
                4: [(Table.INPUT, a, request.count, c.read_limit)],
                5: [(Table.COIL, a, 1, 1)],
                6: [(Table.HOLDING, a, 1, 1)],
                15: [(Table.COIL, a, len(request.bits), 1968)],
                16: [(Table.HOLDING, a, len(request.registers), 123)],
                22: [(Table.HOLDING, a, 1, 1)],
            }[request.function_code]
        if any(not 1 <= count <= limit for _, _, count, limit in spans):
            return 3
        if any(not self.mapped(table, address, count) for table, address, count, _ in spans):
            return 2
        return 0


class AwkwardServer(HookedEndpoints):
    """Awkward devices, each on its own port (``.ports``), ticking their counters if asked to."""

    def __init__(self, host: str, ports: list[int], devices: Sequence[AwkwardDevice]) -> None:
        super().__init__(host, ports, devices)
        self.devices = list(devices)

    def tick_all(self) -> None:
        for device in self.devices:
            device.tick()

    async def __aenter__(self) -> Self:
        await self.start_all()
        return self


async def serve_awkward(host: str, port: int, *devices: AwkwardDevice | AwkwardConfig,
                        tick_interval: float | None = None) -> AwkwardServer:
    """Serve each device on ``port``, ``port + 1``, ...; port 0 picks free ports (see ``.ports``).

    With ``tick_interval``, every device's counter steps once per interval; without, only ``tick()`` moves it.
    No device at all serves one ``AwkwardDevice()``.
    """
    if tick_interval is not None and tick_interval <= 0:
        raise ValueError("tick_interval must be > 0")
    quiet_pymodbus()
    built = [d if isinstance(d, AwkwardDevice) else AwkwardDevice(d) for d in devices] or [AwkwardDevice()]
    server = AwkwardServer(host, port_range(port, len(built)), built)
    await server.start_all()
    if tick_interval is not None:
        server.tick_every(tick_interval, server.tick_all, "awkward-simulator-tick")
    return server

