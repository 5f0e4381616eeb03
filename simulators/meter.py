"""A simulated 3-phase power meter served over real Modbus TCP.

It exists so the Modbus driver, the scheduler and the demo can run against the same wire
protocol a field meter speaks, including meters that vanish and come back, and devices that
accept a connection but never answer (``BlackHoleServer``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymodbus.datastore import ModbusDeviceContext, ModbusServerContext

from drivers.modbus.codec import BIT_TABLES, DataType, Order, Table, decode, encode, register_count
from simulators.endpoints import (
    Endpoints,
    ModbusEndpoints,
    bound_port,
    port_range,
    quiet_pymodbus,
    sequential_block,
)

log = logging.getLogger(__name__)

METER_POINTS: list[dict[str, Any]] = [
    {"id": "voltage_a", "table": "holding", "address": 0, "type": "float32", "unit": "V"},
    {"id": "voltage_b", "table": "holding", "address": 2, "type": "float32", "unit": "V"},
    {"id": "voltage_c", "table": "holding", "address": 4, "type": "float32", "unit": "V"},
    {"id": "current_a", "table": "holding", "address": 6, "type": "float32", "unit": "A"},
    {"id": "current_b", "table": "holding", "address": 8, "type": "float32", "unit": "A"},
    {"id": "current_c", "table": "holding", "address": 10, "type": "float32", "unit": "A"},
    {"id": "power_total", "table": "holding", "address": 12, "type": "float32", "unit": "kW"},
    {"id": "power_factor", "table": "holding", "address": 14, "type": "float32", "unit": None},
    {"id": "frequency", "table": "holding", "address": 16, "type": "float32", "unit": "Hz"},
    {"id": "energy_import", "table": "holding", "address": 18, "type": "float64", "unit": "kWh"},
    {"id": "status", "table": "holding", "address": 22, "type": "uint16", "unit": None},
    {"id": "serial_number", "table": "input", "address": 0, "type": "uint32", "unit": None},
    {"id": "firmware", "table": "input", "address": 2, "type": "uint16", "unit": None},
    {"id": "relay_closed", "table": "coil", "address": 0, "type": "bool", "unit": None},
    {"id": "tamper", "table": "discrete", "address": 0, "type": "bool", "unit": None},
]
"""The meter's register map, in the keys of a ``[[devices.points]]`` table.

``unit`` is None for unitless points: leave the key out when writing TOML. Word and byte order
are the defaults (big, big), so they are not listed.
"""

STATUS_RUNNING = 1 << 0
STATUS_FAULT = 1 << 1
FIRMWARE = 0x0103
"""Firmware 1.3, as a meter would report it: major in the high byte."""

# Function codes that pymodbus's device context maps to each table.
_FUNCTION_CODE = {Table.HOLDING: 3, Table.INPUT: 4, Table.COIL: 1, Table.DISCRETE: 2}


@dataclass(frozen=True, slots=True)
class _Point:
    id: str
    table: Table
    address: int
    dtype: DataType
    word_order: Order = Order.BIG
    byte_order: Order = Order.BIG

    @property
    def width(self) -> int:
        return 1 if self.table in BIT_TABLES else register_count(self.dtype)


_POINTS: dict[str, _Point] = {
    raw["id"]: _Point(raw["id"], Table(raw["table"]), raw["address"], DataType(raw["type"]))
    for raw in METER_POINTS
}


def _table_sizes() -> dict[Table, int]:
    sizes = dict.fromkeys(Table, 0)
    for p in _POINTS.values():
        sizes[p.table] = max(sizes[p.table], p.address + p.width)
    return sizes


def _load_curve(hour: float) -> float:
    """Fraction of rated load in a residential building: a night base, morning and evening peaks."""
    morning = 0.35 * math.exp(-(((hour - 7.5) / 1.5) ** 2))
    evening = 0.6 * math.exp(-(((hour - 19.5) / 2.5) ** 2))
    return 0.25 + morning + evening


class MeterSimulator:
    """One meter's datastore and the physics that keep its values plausible.

    The datastore is the state: ``tick`` reads the relay and the energy counter back from it, so
    a client write to the relay or a ``set_point`` on the counter carries on from there. The
    holding registers stay writable from the wire, as pymodbus makes them, so write paths can be
    tested; ``freeze()`` first if a written value must stick.
    """

    def __init__(self, seed: int = 1, unit_id: int = 1, *, now: float | None = None) -> None:
        if not 0 <= unit_id <= 247:
            raise ValueError(f"unit id {unit_id} is outside 0..247")
        self.seed = seed
        self.unit_id = unit_id
        self._rng = random.Random(seed)
        self._nominal_v = [self._rng.uniform(225.0, 231.0) for _ in range(3)]
        self._rated_a = self._rng.uniform(15.0, 60.0)
        self._phase_share = [self._rng.uniform(0.8, 1.2) for _ in range(3)]
        self._base_pf = self._rng.uniform(0.90, 0.97)
        self._last: float | None = None
        self._frozen = False

        sizes = _table_sizes()
        # Blocks are sized to the map: reads past it get ILLEGAL ADDRESS, as from a real meter.
        self.context = ModbusDeviceContext(
            hr=sequential_block([0] * sizes[Table.HOLDING]),
            ir=sequential_block([0] * sizes[Table.INPUT]),
            co=sequential_block([False] * sizes[Table.COIL]),
            di=sequential_block([False] * sizes[Table.DISCRETE]),
        )
        self.set_point("serial_number", 24_000_000 + seed % 10_000_000)
        self.set_point("firmware", FIRMWARE)
        self.set_point("status", STATUS_RUNNING)
        self.set_point("relay_closed", True)
        self.set_point("tamper", False)
        self.set_point("energy_import", round(self._rng.uniform(5_000.0, 80_000.0), 1))
        self._update(time.time() if now is None else now)

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        """Stop automatic changes, so values set by a test stay put."""
        self._frozen = True

    def unfreeze(self) -> None:
        self._frozen = False
        self._last = None  # no energy jump for the time spent frozen

    def tick(self, now: float) -> None:
        """Advance to wall-clock time ``now`` (seconds since the epoch, as from time.time())."""
        if not self._frozen:
            self._update(now)

    def set_point(self, point_id: str, value: int | float | bool) -> None:
        """Store an exact value, encoded as the driver will decode it."""
        point = self._point(point_id)
        if point.table in BIT_TABLES:
            values: list[int] | list[bool] = [bool(encode(value, DataType.BOOL)[0])]
        else:
            values = encode(value, point.dtype, point.word_order, point.byte_order)
        self.context.setValues(_FUNCTION_CODE[point.table], point.address, values)

    def get_point(self, point_id: str) -> int | float | bool:
        """The value as it sits in the datastore right now."""
        point = self._point(point_id)
        raw = self.context.getValues(_FUNCTION_CODE[point.table], point.address, point.width)
        if not isinstance(raw, list):
            raise RuntimeError(f"datastore refused to read {point_id}: {raw!r}")
        return decode(raw, point.dtype, point.word_order, point.byte_order)

    def _point(self, point_id: str) -> _Point:
        try:
            return _POINTS[point_id]
        except KeyError:
            raise KeyError(f"meter has no point {point_id!r}; it has {', '.join(_POINTS)}") from None

    def _update(self, now: float) -> None:
        rng = self._rng
        local = time.localtime(now)
        hour = local.tm_hour + local.tm_min / 60 + local.tm_sec / 3600
        load = _load_curve(hour) if self.get_point("relay_closed") else 0.0
        volts = [min(235.0, max(220.0, v + rng.gauss(0.0, 0.8))) for v in self._nominal_v]
        amps = [max(0.0, self._rated_a * share * load * (1 + rng.gauss(0.0, 0.03)))
                for share in self._phase_share]
        pf = min(0.99, max(0.85, self._base_pf + rng.gauss(0.0, 0.01)))
        freq = min(50.05, max(49.95, 50.0 + rng.gauss(0.0, 0.015)))
        power_kw = sum(v * i * pf for v, i in zip(volts, amps, strict=True)) / 1000

        energy = self.get_point("energy_import")
        if not isinstance(energy, float) or not math.isfinite(energy) or energy < 0:
            energy = 0.0
        if self._last is not None and now > self._last:
            energy += power_kw * (now - self._last) / 3600
        self._last = now

        for phase, v, i in zip("abc", volts, amps, strict=True):
            self.set_point(f"voltage_{phase}", v)
            self.set_point(f"current_{phase}", i)
        self.set_point("power_total", power_kw)
        self.set_point("power_factor", pf)
        self.set_point("frequency", freq)
        self.set_point("energy_import", energy)


class MeterServer(ModbusEndpoints):
    """Meters each on their own pymodbus TCP server, as meters with their own IP are wired."""

    def __init__(self, host: str, ports: list[int], meters: list[MeterSimulator],
                 tick_interval: float) -> None:
        contexts = [
            ModbusServerContext(devices={m.unit_id: m.context}, single=False)  # type: ignore[no-untyped-call]
            for m in meters
        ]
        super().__init__(host, ports, contexts)
        self.meters = meters
        self.tick_interval = tick_interval

    def tick_all(self) -> None:
        now = time.time()
        for meter in self.meters:
            try:
                meter.tick(now)
            except Exception:  # one bad meter must not stop the others from changing
                log.exception("meter simulator tick failed (seed %s)", meter.seed)


async def serve_meters(
    host: str,
    port: int,
    count: int = 1,
    unit_ids: Sequence[int] | None = None,
    *,
    seed: int = 1,
    tick_interval: float = 1.0,
) -> MeterServer:
    """Start ``count`` meters on ``port``, ``port + 1``, ...; port 0 picks free ports (see ``.ports``).

    Meter ``i`` gets seed ``seed + i`` so their readings differ but repeat from run to run.
    """
    ports = port_range(port, count)
    units = list(unit_ids) if unit_ids is not None else [1] * count
    if len(units) != count:
        raise ValueError(f"{len(units)} unit ids for {count} meters")
    if tick_interval <= 0:
        raise ValueError("tick_interval must be > 0")
    quiet_pymodbus()
    meters = [MeterSimulator(seed + i, unit) for i, unit in enumerate(units)]
    server = MeterServer(host, ports, meters, tick_interval)
    await server.start_all()
    server.tick_every(tick_interval, server.tick_all, "meter-simulator-tick")
    return server


class _Sink(asyncio.Protocol):
    def __init__(self, owner: BlackHoleServer, index: int) -> None:
        self._owner = owner
        self._index = index
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._owner._connections[self._index].add(transport)

    def data_received(self, data: bytes) -> None:
        pass  # swallowed: the device is "alive" at TCP level and silent at Modbus level

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._owner._connections[self._index].discard(self._transport)


class BlackHoleServer(Endpoints):
    """Endpoints that accept connections and never answer: a hung device or a dead RS-485 leg
    behind a converter, where only the request timeout can tell."""

    def __init__(self, host: str, ports: list[int]) -> None:
        super().__init__(host, ports)
        self._servers: list[asyncio.Server | None] = [None] * len(ports)
        self._connections: list[set[asyncio.Transport]] = [set() for _ in ports]

    def is_running(self, index: int) -> bool:
        return self._servers[index] is not None

    async def _start(self, index: int) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Sink(self, index), self.host, self.ports[index], reuse_address=True
        )
        self._servers[index] = server
        try:
            return bound_port(server, self.host, self.ports[index])
        except OSError:
            await self._stop(index)
            raise

    async def _stop(self, index: int) -> None:
        server, self._servers[index] = self._servers[index], None
        for transport in list(self._connections[index]):
            transport.abort()
        self._connections[index].clear()
        if server is not None:
            server.close()
            await server.wait_closed()


async def serve_black_holes(host: str, port: int, count: int = 1) -> BlackHoleServer:
    """Start ``count`` silent endpoints on ``port``, ``port + 1``, ... (0 picks free ports)."""
    server = BlackHoleServer(host, port_range(port, count))
    await server.start_all()
    return server


async def run_meters(host: str, port: int, count: int) -> None:
    """Serve meters until cancelled; the body of ``gateway simulate meter``."""
    server = await serve_meters(host, port, count)
    log.info("serving %d simulated meter(s) on %s ports %s", count, host, server.ports)
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        await server.close()
